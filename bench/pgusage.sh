#!/usr/bin/env bash
# What the shared usage log costs PostgreSQL per row (issue 15): a PostgreSQL started as the
# tests start it (tests/support/store_servers.rs), N usage records per batch size written
# through the daemon's real write path (SharedStore::start_usage_log, flushed per batch), the
# server's CPU per row (utime+stime of the postmaster and its children, from /proc) and rows/s.
# See daemon/examples/pgusage.rs.
#
#   bench/pgusage.sh [--rows N] [--batches 50,200,1000] [--repeat K] [--explain]
#
# Needs Debian's postgresql (installed here when missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq postgresql >/dev/null
fi
repeat=1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) repeat="$2"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
cargo build --release --quiet -p gate-daemon --example pgusage
for _ in $(seq "$repeat"); do
    "$root/target/release/examples/pgusage" "${args[@]}"
done
