# Shared by bench/gateway.sh and bench/throughput.sh (sourced, not run; needs $root).

# ensure_venv: bench/.venv with matplotlib (for the charts).
ensure_venv() {
    local venv="$root/bench/.venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        echo "== installing matplotlib into bench/.venv" >&2
        "$venv/bin/pip" install --quiet matplotlib
    fi
}

# ensure_litellm: the LiteLLM proxy (`pip install 'litellm[proxy]'`) in bench/.venv.
ensure_litellm() {
    local venv="$root/bench/.venv"
    ensure_venv || return 1
    if [ ! -x "$venv/bin/litellm" ]; then
        echo "== installing litellm[proxy] into bench/.venv" >&2
        "$venv/bin/pip" install --quiet 'litellm[proxy]'
    fi
}
