#!/usr/bin/env bash
# Gateway overhead benchmark (issue 3, "Benchmark"): the mock upstream called directly, through
# Gate, and through the LiteLLM proxy, measured side by side in one run.
#
#   bench/gateway.sh [--quick|--full] [--soak-minutes N] [--skip-litellm]
#
# --quick (default): short scenarios, no soak. --full: longer scenarios, three rounds, and a
# 10-minute soak of Gate. Builds the release binaries, installs LiteLLM and matplotlib into
# bench/.venv when missing, starts and stops every process itself on free loopback ports, writes
# JSON to bench/out/ and the chart to bench/gateway.svg, and prints a table with ratios.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

echo "== building release binaries (gate, mock_upstream, loadgen)" >&2
cargo build --release --quiet -p gate-daemon --bin gate --example mock_upstream --example loadgen

# shellcheck source=bench/common.sh
source "$root/bench/common.sh"
ensure_litellm

venv="$root/bench/.venv"
exec "$venv/bin/python" "$root/bench/gateway.py" --root "$root" "$@"
