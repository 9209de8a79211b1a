#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Rust stable.
# Installs what the tests need when it is missing, then runs, in order:
#   lint (fmt, clippy), dependency audit, the sans-IO check of gate-core,
#   unit + property + end-to-end tests (cargo nextest), the Python SDK suite,
#   the real coding agents (Claude Code, Codex, Gemini CLI from npm), the web UI,
#   the NixOS module tests, and every fuzz target for a short time.
# Usage: ./test.sh            everything
#        ./test.sh STAGE...   only some stages: lint audit core-io tests e2e agents ui nix fuzz
# FUZZ_SECONDS (default 30) sets the time per fuzz target.
set -euo pipefail
cd "$(dirname "$0")"

stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then stages=(lint audit core-io tests e2e agents ui nix fuzz); fi
want() { local s; for s in "${stages[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
step() { printf '\n==> %s\n' "$*"; }
export CARGO_TERM_COLOR=never
# A fresh clone gains nothing from incremental state, which is the largest part of a debug
# target directory; CI builds without it so that it fits on a small disk.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
# The whole suite needs about 10 GB of disk for its builds (target/, fuzz/target, tools).
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
printf '==> disk: %s GB free here\n' "$((free_kb / 1024 / 1024))"
if [ "$free_kb" -lt $((10 * 1024 * 1024)) ]; then
    printf 'warning: less than 10 GB free; the builds may run out of disk\n' >&2
fi

apt_updated=0
# Every install says what it installs before it starts: some take minutes and are quiet.
need_apt() { # need_apt COMMAND PACKAGE...
    command -v "$1" >/dev/null 2>&1 && return 0
    shift
    apt_install "$@"
}
apt_install() { # apt_install PACKAGE...
    if [ "$apt_updated" = 0 ]; then
        printf '==> apt-get update (package lists)\n'
        apt-get update -qq
        apt_updated=1
    fi
    printf '==> installing %s (apt-get install)\n' "$*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
need_cargo() { # need_cargo SUBCOMMAND CRATE
    cargo "$1" --version >/dev/null 2>&1 && return 0
    printf '==> installing %s (cargo install --locked, builds from source: a few minutes)\n' "$2"
    cargo install --locked -q "$2"
}

if want lint; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy --all-targets -- -D warnings"
    cargo clippy --workspace --all-targets -- -D warnings
fi

if want audit; then
    step "dependency audit (cargo deny: licenses, bans, sources)"
    need_cargo deny cargo-deny
    cargo deny check bans licenses sources
fi

if want core-io; then
    step "gate-core stays sans-IO"
    tree=$(cargo tree -p gate-core -e normal --prefix none)
    bad=$(printf '%s\n' "$tree" | awk '{print $1}' | grep -xE 'tokio|smol|async-io|async-net|mio|hyper|reqwest|quinn' || true)
    if [ -n "$bad" ]; then
        echo "gate-core depends on I/O crates: $bad" >&2
        exit 1
    fi
    echo "ok: none of tokio, smol, async-io, async-net, mio, hyper, reqwest, quinn"
fi

if want tests; then
    step "tools the tests drive: curl, openssl, gnutls-cli, pebble (ACME test server), nft and ip (network namespaces), postgresql and redis-server (shared state)"
    need_apt curl curl
    need_apt openssl openssl
    need_apt gnutls-cli gnutls-bin
    need_apt pebble pebble
    # daemon/tests/relay_udp_blocked.rs drops UDP to the relay inside a network namespace.
    need_apt nft nftables
    need_apt ip iproute2
    # Shared state (tests/support/store_servers.rs): a real PostgreSQL, whose initdb and
    # pg_ctl Debian keeps off the PATH, and Redis.
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_install postgresql
    need_apt redis-server redis-server
    need_cargo nextest cargo-nextest
    step "cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast
fi

if want e2e && [ -x tests/e2e/run.sh ]; then
    step "end-to-end: official OpenAI, Anthropic and google-genai SDKs against the real binaries"
    need_apt python3 python3 python3-venv
    cargo build --workspace --examples --bins -q
    tests/e2e/run.sh
fi

if want agents; then
    step "coding agents: Claude Code, Codex CLI and Gemini CLI (npm, pinned) through gate (both runtimes)"
    need_apt python3 python3 python3-venv
    cargo build -p gate-daemon --bin gate --example mock_upstream -q
    tests/agents/run.sh
fi

if want ui; then
    step "web UI in headless Chromium (both runtimes)"
    tests/ui/run.sh
fi

if want nix; then
    step "NixOS modules, overlay and flake (nix/tests/run.sh)"
    nix/tests/run.sh
fi

if want fuzz; then
    step "fuzz targets, ${FUZZ_SECONDS:-30}s each"
    need_cargo fuzz cargo-fuzz
    targets=$(cd fuzz && cargo fuzz list)
    (cd fuzz && cargo fuzz build -s none -O)
    for t in $targets; do
        corpus="fuzz/corpus/$t"
        mkdir -p "$corpus"
        work=$(mktemp -d)
        cp -r "$corpus"/. "$work"/ 2>/dev/null || true
        log=$(mktemp)
        if (cd fuzz && cargo fuzz run -s none -O "$t" "$work" -- \
                -max_total_time="${FUZZ_SECONDS:-30}" -print_final_stats=1) >"$log" 2>&1; then
            execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
            echo "fuzz $t: ok, $execs executions, no crash"
        else
            echo "fuzz $t: FAILED" >&2
            tail -60 "$log" >&2
            exit 1
        fi
        rm -rf "$work" "$log"
    done
fi

step "all requested stages passed"
