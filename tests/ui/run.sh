#!/usr/bin/env bash
# Gate's web UI in headless Chromium (Playwright via playwright-core, Debian's chromium),
# and Chromium reaching a daemon through the relay (relay.test.mjs),
# under both runtimes. Installs what it needs when missing; exits non-zero on failure.
# Screenshots of every page: tests/ui/artifacts/<runtime>-<page>.png
# GATE_BIN: a prebuilt `gate` binary (default: built here with cargo).
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE...
    command -v "$1" >/dev/null 2>&1 && return 0
    shift
    if [ "$apt_updated" = 0 ]; then
        printf '==> apt-get update (package lists)\n'
        apt-get update -qq
        apt_updated=1
    fi
    printf '==> installing %s (apt-get install)\n' "$*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
need_apt chromium chromium
need_apt node nodejs
need_apt npm npm
need_apt curl curl

if [ ! -d node_modules/playwright-core ]; then
    printf '==> installing playwright-core (npm ci, from package-lock.json)\n'
    npm ci --no-audit --no-fund --silent 2>/dev/null || npm install --no-audit --no-fund --silent
fi

if [ -z "${GATE_BIN:-}" ] || [ -z "${GATE_RELAY_BIN:-}" ]; then
    (cd "$root" && cargo build -q -p gate-daemon --bin gate -p gate-relay --bin gate-relay)
    GATE_BIN="${GATE_BIN:-$root/target/debug/gate}"
    GATE_RELAY_BIN="${GATE_RELAY_BIN:-$root/target/debug/gate-relay}"
fi
export GATE_BIN GATE_RELAY_BIN

mkdir -p artifacts
for runtime in tokio smol; do
    node ui.test.mjs --runtime "$runtime"
done
# Chromium through the relay to a daemon: both runtimes, and mixed.
for pair in "tokio tokio" "smol smol" "smol tokio"; do
    set -- $pair
    node relay.test.mjs --relay-runtime "$1" --daemon-runtime "$2"
done
