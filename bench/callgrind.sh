#!/usr/bin/env bash
# Instructions per request, by function, of Gate and the hyper floor under callgrind (issue 16):
# counts that do not move with the host's load, for before/after comparisons of request-path
# changes. See bench/callgrind.py.
#
#   bench/callgrind.sh [--gate-binary PATH] [--requests N] [--warmup N] [--conc N] [--top N]
#                      [--only gate|gate-policy|hyper-floor]... [--no-stream] [--label TEXT]
#                      [--stream-framing chunked|length]
#   bench/callgrind.sh --usage-rows N      # the usage log alone (daemon/examples/usage_rows)
#
# Needs valgrind and nginx (installed here when missing). Takes a few minutes: every request
# runs ~50x slower under callgrind.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=bench/common.sh
source "$root/bench/common.sh"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
apt_install_missing "${missing[@]}"
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet -p gate-daemon --example hyper_floor --example loadgen --example usage_rows
if ! printf '%s\n' "$@" | grep -q -- '--gate-binary'; then
    cargo build --release --quiet -p gate-daemon --bin gate
fi
cd "$root/bench"
exec python3 "$root/bench/callgrind.py" --root "$root" "$@"
