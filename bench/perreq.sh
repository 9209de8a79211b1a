#!/usr/bin/env bash
# Per-request cost of Gate that does not depend on the machine's load (issue 16): instructions,
# cycles, context switches, libc allocations and syscalls per request, under wrk at c=50 against
# the throughput bench's nginx origin, for the plain key and the key with a budget and an rpm
# limit, plain and streamed. See bench/perreq.py.
#
#   bench/perreq.sh [--gate-binary PATH] [--seconds N] [--conc N] [--no-strace] [--label TEXT]
#
# Needs perf (Debian: linux-perf), strace, nginx and wrk (installed here when missing), and
# permission to add uprobes (root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=bench/common.sh
source "$root/bench/common.sh"
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v strace >/dev/null 2>&1 || missing+=(strace)
apt_install_missing "${missing[@]}"
export PATH="$PATH:/usr/sbin"
if ! printf '%s\n' "$@" | grep -q -- '--gate-binary'; then
    cargo build --release --quiet -p gate-daemon --bin gate
fi
cd "$root/bench"
exec python3 "$root/bench/perreq.py" --root "$root" "$@"
