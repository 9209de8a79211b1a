#!/usr/bin/env bash
# The real coding agents against the real `gate` binary and the suite's mock upstream, under
# both runtimes: Claude Code (`claude -p`), Codex CLI (`codex exec`) and Gemini CLI (`gemini -p`),
# pinned in package.json / package-lock.json and installed here (tests/agents/node_modules) by
# `npm ci` when missing or when the lock file changed. Telemetry and update checks are off, and
# every agent runs with an unreachable proxy for anything but loopback.
#
# Builds nothing: build first (cargo build -p gate-daemon --bin gate --example mock_upstream) or
# set GATE_BIN / MOCK_BIN. The Python side reuses tests/e2e (its venv and e2e_support.py).
# Extra arguments go to pytest, e.g. tests/agents/run.sh -k "claude and tokio"
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

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
need_apt node nodejs
need_apt npm npm

stamp="$here/node_modules/.lock.sha256"
want="$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    printf '==> installing the coding agents (npm ci in %s: @anthropic-ai/claude-code, @openai/codex, @google/gemini-cli; about 900 MB)\n' "$here"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" > "$stamp"
fi
export AGENTS_BIN="$here/node_modules/.bin"

exec "$repo/tests/e2e/run.sh" -c "$here/pytest.ini" --rootdir "$here" "$here" "$@"
