#!/usr/bin/env bash
# HTTP-layer-limit benchmark (issue 16): nginx as the origin, nginx as a plain reverse proxy,
# Gate, LiteLLM and Portkey's gateway, all in front of the same origin and measured with wrk in
# one run.
#
#   bench/throughput.sh [--quick|--full] [--skip-peers] [--skip-litellm] [--skip-portkey]
#                       [--rounds N] [--soak-minutes N] [--gate-binary PATH] [--gate-extra-config FILE]
#                       [--stream-framing chunked|length]
#
# --quick (default): 1 round of short runs, no soak (~4 min with the peers). --full: 3
# interleaved rounds of longer runs and a 10-minute soak of Gate (~30 min).
# Installs what is missing (apt-get: nginx, wrk; pip into bench/.venv: litellm[proxy] and
# matplotlib; npm ci in bench/: @portkey-ai/gateway as pinned by bench/package.json and its
# lock), builds gate in release, and hands over to bench/throughput.py, which starts and stops
# every process on free loopback ports, writes JSON to bench/out/ and the chart to
# bench/throughput.svg, and prints the tables. A peer that cannot be installed is reported as
# not measured; the rest of the run goes on.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=bench/common.sh
source "$root/bench/common.sh"

skip_peers=0 skip_litellm=0 skip_portkey=0
for a in "$@"; do
    case "$a" in
        --skip-peers) skip_peers=1 ;;
        --skip-litellm) skip_litellm=1 ;;
        --skip-portkey) skip_portkey=1 ;;
    esac
done

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
apt_install_missing "${missing[@]}"
export PATH="$PATH:/usr/sbin"

echo "== building gate and the hyper floor (release)" >&2
cargo build --release --quiet -p gate-daemon --bin gate --example hyper_floor

notes=()
ensure_venv || { echo "bench: matplotlib could not be installed into bench/.venv" >&2; exit 1; }
if [ $skip_peers -eq 0 ] && [ $skip_litellm -eq 0 ]; then
    ensure_litellm || notes+=("litellm=pip install 'litellm[proxy]' into bench/.venv failed (see above)")
fi
if [ $skip_peers -eq 0 ] && [ $skip_portkey -eq 0 ]; then
    if ! command -v npm >/dev/null 2>&1; then
        notes+=("portkey=npm is not installed (Portkey's gateway is an npm package)")
    elif [ ! -x bench/node_modules/.bin/gateway ] || ! (cd bench && npm ls --silent >/dev/null 2>&1); then
        echo "== installing @portkey-ai/gateway into bench/node_modules (npm ci)" >&2
        (cd bench && npm ci --no-audit --no-fund --loglevel=error) \
            || notes+=("portkey=npm ci in bench/ failed (see above)")
    fi
fi

note_arg=""
if [ ${#notes[@]} -gt 0 ]; then
    note_arg="$(IFS=';'; echo "${notes[*]}")"
fi
exec "$root/bench/.venv/bin/python" "$root/bench/throughput.py" --root "$root" --peer-notes "$note_arg" "$@"
