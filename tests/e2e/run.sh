#!/usr/bin/env bash
# Runs the end-to-end suite: the real `gate` binary and the mock upstream on loopback, driven
# by the official openai, anthropic and google-genai SDKs, under both runtimes.
#
# Builds nothing. Build first (from the repo root):
#     cargo build -p gate-daemon --bin gate --example mock_upstream
# or point GATE_BIN / MOCK_BIN at the binaries. Extra arguments go to pytest, e.g.
#     tests/e2e/run.sh -k mock_direct        # only the SDKs against the mock
#     tests/e2e/run.sh -k "tokio and auth"   # one runtime, one area
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Reinstall only when requirements.txt changed since the last successful install.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    printf '==> installing the Python SDKs (pip install -r %s: openai, anthropic, google-genai, PyJWT, httpx, pytest)\n' "$here/requirements.txt"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi

export GATE_BIN="${GATE_BIN:-$repo/target/debug/gate}"
export MOCK_BIN="${MOCK_BIN:-$repo/target/debug/examples/mock_upstream}"
for bin in "$GATE_BIN" "$MOCK_BIN"; do
    if [ ! -x "$bin" ]; then
        echo "e2e: $bin is missing; build it with: cargo build -p gate-daemon --bin gate --example mock_upstream" >&2
        exit 2
    fi
done

cd "$here"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
