# Shared by the bench/*.sh scripts (sourced, not run; needs $root).

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

# apt_install_missing PACKAGE...: installs the Debian packages named (apt-get, with sudo when
# not root); the caller lists only those whose command is missing. No-op without arguments.
apt_install_missing() {
    [ "$#" -gt 0 ] || return 0
    echo "== installing $* (apt-get)" >&2
    local sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    # (On a machine without /usr/sbin/policy-rc.d the nginx package also starts the system's
    # nginx on port 80; the benches do not use it: they run their own from a temp dir.)
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "$@" >/dev/null
}
