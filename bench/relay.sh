#!/usr/bin/env bash
# Relay benchmark (issue 4): one command, release build, loopback only, bounded in time.
#
#   bench/relay.sh                 # full run (1 GiB downloads, 200 TTFB samples,
#                                  #   200 idle daemons, 10,000 idle forwarded connections)
#   bench/relay.sh --quick         # a smaller smoke run (not for the numbers)
#
# (Not an environment variable: `gate-relay` reads every `RELAY_*` variable as configuration
# and refuses to start on one that is not a key.)
#
# Steps: build `gate-relay` and the driver `relay/examples/relay_bench.rs` in release; run the
# 1 GiB-each-way checksum tests (relay/tests/relay_big.rs) in release on tokio, smol and mixed,
# over QUIC and over the TCP tunnel (the path when UDP is blocked); then the driver, which
# starts the relay binary as its own process (so its RSS is the relay's alone) and prints the
# results table: one download direct, through the relay over QUIC, and through the relay over
# the TCP tunnel (a second daemon with `relay.transport = "tcp"`), with ratios and CPU per GiB. Needs `ulimit -n` >= ~25,000 for 10,000 connections
# (both ends of each connection live on this machine); the script raises it to 65536.
set -euo pipefail
cd "$(dirname "$0")/.."

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
echo "ulimit -n: $(ulimit -n)"

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p gate-relay --bin gate-relay --example relay_bench

if [[ "${1:-}" == --quick ]]; then
    ARGS=(--download-mib 256 --rounds 1 --ttfb 50 --daemons 20 --connections 1000)
    BIG_MIB=64
else
    ARGS=(--download-mib 1024 --rounds 3 --ttfb 200 --daemons 200 --connections 10000)
    BIG_MIB=1024
fi

echo "== 1 GiB each way through the relay, SHA-256 compared (release) =="
GATE_RELAY_BIG_MIB="$BIG_MIB" timeout 600 \
    cargo test --release -p gate-relay --test relay_big -- --include-ignored --nocapture \
    --test-threads 1 2>&1 | grep -E "echo of|test result|FAILED|panicked"

echo "== relay benchmark =="
timeout 900 "$TARGET_DIR/release/examples/relay_bench" \
    --relay-bin "$TARGET_DIR/release/gate-relay" "${ARGS[@]}"
