#!/usr/bin/env bash
# Tests of the NixOS modules, overlay and flake, where nixpkgs cannot be fetched:
#   1. `nix-instantiate --parse` on every .nix file;
#   2. the modules evaluated with the seed's examples by a stand-in for nixpkgs' lib and
#      module system (lib-stub.nix, nixos-stub.nix): rendered units, TOML, firewall,
#      users (module-tests.nix), flake.nix's outputs with a stand-in nixpkgs input
#      (flake-tests.nix), and configurations that must fail to evaluate (negative.nix:
#      option typos, ports out of range, wrong types, the modules' assertions);
#   3. the rendered TOML accepted by `gate check-config` / `gate-relay check-config`, with
#      the seed's secrets files loaded the way systemd loads an EnvironmentFile, and the
#      seed's variable names reaching the right keys (`gate config get KEY --origin`);
#   4. the rendered unit files scored by `systemd-analyze security --offline=yes` (<= 2.0);
#   5. `deadnix --fail` and `nixpkgs-fmt --check` on every .nix file.
# Installs nix-bin / systemd (apt) and deadnix / nixpkgs-fmt (cargo) when missing.
# GATE_BIN / GATE_RELAY_BIN point at prebuilt binaries; otherwise they are built with cargo.
# Prints one line per check and ends with `N passed, N failed`; exits non-zero on a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() {
    failed=$((failed + 1))
    printf 'FAIL  %s\n' "$1"
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 15 | sed 's/^/      /'; fi
}
# check NAME COMMAND...: passes when the command succeeds.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

# ---------------------------------------------------------------- tools
apt_updated=0
need_apt() { # need_apt COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$apt_updated" = 0 ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq && apt_updated=1
    fi
    printf '==> installing %s (apt-get install)\n' "$2"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$2" >/dev/null
}
need_cargo() { # need_cargo COMMAND CRATE
    command -v "$1" >/dev/null 2>&1 && return 0
    printf '==> installing %s (cargo install --locked, builds from source: a few minutes)\n' "$2"
    cargo install --locked -q "$2"
}
need_apt nix-instantiate nix-bin || { echo "cannot install nix-bin" >&2; exit 1; }
need_apt systemd-analyze systemd || { echo "cannot install systemd" >&2; exit 1; }
need_apt python3 python3 || { echo "cannot install python3" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
need_cargo deadnix deadnix || { echo "cannot install deadnix" >&2; exit 1; }
need_cargo nixpkgs-fmt nixpkgs-fmt || { echo "cannot install nixpkgs-fmt" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1" "${@:2}"; }
# Evaluation writes the rendered TOML files to the store, as nixpkgs would.
nix_eval() { nix-instantiate --eval --strict --json --read-write-mode "$@"; }

mapfile -t nix_files < <(find nix -name '*.nix' | sort; echo flake.nix)

# ---------------------------------------------------------------- 1. parse
for f in "${nix_files[@]}"; do
    check "parse $f" nix-instantiate --parse "$f"
done

# ---------------------------------------------------------------- 2. evaluate
for suite in module-tests flake-tests; do
    if nix_eval "nix/tests/$suite.nix" >"$work/$suite.json" 2>"$work/$suite.err"; then
        while IFS=$'\t' read -r ok name detail; do
            if [ "$ok" = 1 ]; then pass "eval: $name"; else fail "eval: $name" "$detail"; fi
        done < <(json 'print("\n".join(("1" if t["ok"] else "0") + "\t" + t["name"] + "\t" + ("" if t["ok"] else "got  " + json.dumps(t["got"]) + "  want " + json.dumps(t["want"])) for t in d))' <"$work/$suite.json")
        # a test whose expression threw: nix printed why
        if grep -q error "$work/$suite.err"; then cat "$work/$suite.err" >&2; fi
    else
        fail "eval: nix/tests/$suite.nix" "$(cat "$work/$suite.err")"
    fi
done

mapfile -t negatives < <(nix-instantiate --eval --json -E 'builtins.attrNames (import ./nix/tests/negative.nix)' | json 'print("\n".join(d))')
for n in "${negatives[@]}"; do
    want=$(nix-instantiate --eval --json -E "(import ./nix/tests/negative.nix).\"$n\".error" | json 'print(d)')
    if out=$(nix_eval -E "import ./nix/tests/eval.nix { modules = [ ./nix/modules/default.nix ] ++ (import ./nix/tests/negative.nix).\"$n\".modules; }" 2>&1); then
        fail "evaluation error: $n" "evaluated without error; expected: $want"
    elif grep -qF -- "$want" <<<"$out"; then
        pass "evaluation error: $n"
    else
        fail "evaluation error: $n" "expected an error containing: $want
got: $out"
    fi
done

# ---------------------------------------------------------------- 3. the binaries accept the TOML
if [ -z "${GATE_BIN:-}" ] || [ -z "${GATE_RELAY_BIN:-}" ]; then
    cargo build -q -p gate-daemon -p gate-relay || fail "cargo build -p gate-daemon -p gate-relay"
    target=$(cargo metadata --format-version 1 --no-deps | json 'print(d["target_directory"])')
fi
gate=${GATE_BIN:-$target/debug/gate}
relay=${GATE_RELAY_BIN:-$target/debug/gate-relay}

# The seed's secrets files, verbatim.
cat >"$work/gate-daemon.env" <<'EOF'
# /run/secrets/gate-daemon
GATE_AUTH__JWT__SECRET=your-secret-here
GATE_UPSTREAMS__OPENAI__API_KEY=sk-...
GATE_LETSENCRYPT__EMAIL=admin@example.com
EOF
cat >"$work/gate-relay.env" <<'EOF'
# /run/secrets/gate-relay
RELAY__DNS__CLOUDFLARE__API_TOKEN=your-token
RELAY__DNS__CLOUDFLARE__ZONE_ID=your-zone-id
EOF
# A relay closed with tokens, and a daemon holding one of them.
cat >"$work/gate-relay-token.env" <<'EOF'
RELAY__ACCESS__TOKENS=team-a:0123456789abcdef0123,team-b:fedcba9876543210fedc
EOF
cat >"$work/gate-daemon-token.env" <<'EOF'
GATE_RELAY__TOKEN=0123456789abcdef0123
EOF
# Relays sharing name claims: check-config parses the URL (it does not connect).
cat >"$work/gate-relay-store.env" <<'EOF'
RELAY__STORE__URL=postgres://gate_relay:store-secret-0123@db.internal:5432/gate
EOF
# Daemons sharing keys, usage and budgets (PostgreSQL) and rate limits (Redis).
cat >"$work/gate-daemon-store.env" <<'EOF'
GATE_STORE__URL=postgres://gate:store-secret-0123@db.internal:5432/gate
GATE_STORE__REDIS_URL=redis://:redis-secret-0123@cache.internal:6379/0
EOF
secrets_for() { # the test's copy of an EnvironmentFile path
    case "$1" in
        /run/secrets/gate-daemon) echo "$work/gate-daemon.env" ;;
        /run/secrets/gate-relay) echo "$work/gate-relay.env" ;;
        /run/secrets/gate-relay-token) echo "$work/gate-relay-token.env" ;;
        /run/secrets/gate-daemon-token) echo "$work/gate-daemon-token.env" ;;
        /run/secrets/gate-relay-store) echo "$work/gate-relay-store.env" ;;
        /run/secrets/gate-daemon-store) echo "$work/gate-daemon-store.env" ;;
        *) echo /dev/null ;;
    esac
}
# in_unit_env ENVFILE COMMAND...: runs COMMAND with an empty environment plus the
# assignments of ENVFILE, as systemd's EnvironmentFile= reads them (no shell expansion).
in_unit_env() {
    local file=$1 line
    shift
    local assignments=("PATH=/usr/bin:/bin" "HOME=$work/home")
    while IFS= read -r line || [ -n "$line" ]; do
        [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && assignments+=("$line")
    done <"$file"
    env -i "${assignments[@]}" "$@"
}
relay_has_check_config=0
"$relay" check-config --help >/dev/null 2>&1 && relay_has_check_config=1

if nix_eval nix/tests/render.nix >"$work/render.json" 2>"$work/render.err"; then
    mkdir -p "$work/units"
    while IFS=$'\t' read -r example unit config envfile; do
        state="$work/state/$example/$unit"
        mkdir -p "$state"
        secrets=$(secrets_for "$envfile")
        case "$unit" in
            gate-daemon*)
                check "gate check-config accepts $example/$unit.toml" \
                    in_unit_env "$secrets" "$gate" check-config --config "$config" --state-dir "$state"
                ;;
            gate-relay*)
                if [ "$relay_has_check_config" = 1 ]; then
                    check "gate-relay check-config accepts $example/$unit.toml" \
                        in_unit_env "$secrets" "$relay" check-config --config "$config"
                else
                    fail "gate-relay check-config accepts $example/$unit.toml" "$relay has no check-config subcommand"
                fi
                ;;
        esac
    done < <(json 'print("\n".join("\t".join([e, u, v["config"], v["environmentFile"] or ""]) for e in sorted(d) for u, v in sorted(d[e].items())))' <"$work/render.json")
    json '
import os
for e in d:
    for u, v in d[e].items():
        os.makedirs(os.path.join(sys.argv[1], e), exist_ok=True)
        open(os.path.join(sys.argv[1], e, u + ".service"), "w").write(v["unitFile"])
' "$work/units" <"$work/render.json"
else
    fail "render nix/tests/render.nix" "$(cat "$work/render.err")"
fi

# The seed's variable names reach the right keys (and secrets stay redacted).
config_of() { json "print(d['$1']['$2']['config'])" <"$work/render.json"; }
if [ -f "$work/render.json" ]; then
    daemon_toml=$(config_of seed-daemon gate-daemon)
    state="$work/state/env-check"
    mkdir -p "$state"
    get() { in_unit_env "$1" "$gate" config get "$2" --origin --config "$daemon_toml" --state-dir "$state" 2>&1; }
    expect_get() { # NAME ENVFILE KEY PATTERN
        local out
        out=$(get "$2" "$3")
        if grep -qE -- "$4" <<<"$out"; then pass "$1"; else fail "$1" "gate config get $3 --origin: $out (expected /$4/)"; fi
    }
    expect_get "GATE_AUTH__JWT__SECRET sets auth.jwt.secret (redacted)" "$work/gate-daemon.env" auth.jwt.secret '^"\(set\)" +# from env GATE_AUTH__JWT__SECRET$'
    expect_get "GATE_UPSTREAMS__OPENAI__API_KEY sets upstreams.openai.api_key" "$work/gate-daemon.env" upstreams.openai.api_key '# from env GATE_UPSTREAMS__OPENAI__API_KEY$'
    expect_get "GATE_LETSENCRYPT__EMAIL sets letsencrypt.email" "$work/gate-daemon.env" letsencrypt.email '^"admin@example.com" +# from env GATE_LETSENCRYPT__EMAIL$'
    expect_get "without the environment file auth.jwt.secret is unset" /dev/null auth.jwt.secret 'not set'
    expect_get "GATE_STORE__URL sets store.url (redacted)" "$work/gate-daemon-store.env" store.url '^"\(set\)" +# from env GATE_STORE__URL$'
    expect_get "GATE_STORE__REDIS_URL sets store.redis_url (redacted)" "$work/gate-daemon-store.env" store.redis_url '^"\(set\)" +# from env GATE_STORE__REDIS_URL$'
    expect_get "port comes from the Nix layer (the --config file)" /dev/null port "^3000 +# from nix $daemon_toml"
    # Environment > Runtime > Nix: the runtime file lives in the state directory.
    if in_unit_env /dev/null "$gate" config set log_level debug --config "$daemon_toml" --state-dir "$state" >/dev/null 2>&1 &&
        [ -f "$state/config.toml" ]; then
        pass "gate config set writes <state dir>/config.toml"
    else
        fail "gate config set writes <state dir>/config.toml"
    fi
    expect_get "runtime file wins over the Nix layer" /dev/null log_level '^"debug" +# from runtime'
    printf 'GATE_LOG_LEVEL=warn\n' >"$work/log.env"
    expect_get "environment wins over the runtime file" "$work/log.env" log_level '^"warn" +# from env GATE_LOG_LEVEL$'

    # An upstream from initialUpstreams removed at runtime stays removed (the Nix file is
    # read again at every start).
    flake_toml=$(config_of seed-flake gate-daemon)
    state="$work/state/remove-check"
    mkdir -p "$state"
    list() { in_unit_env /dev/null "$gate" upstream list --config "$flake_toml" --state-dir "$state" 2>&1; }
    before=$(list)
    in_unit_env /dev/null "$gate" upstream remove openai --config "$flake_toml" --state-dir "$state" >/dev/null 2>&1
    after=$(list)
    if grep -q '^openai' <<<"$before" && ! grep -q '^openai' <<<"$after"; then
        pass "an upstream from initialUpstreams removed at runtime stays removed"
    else
        fail "an upstream from initialUpstreams removed at runtime stays removed" "before: $before
after: $after"
    fi

    if [ "$relay_has_check_config" = 1 ]; then
        relay_toml=$(config_of seed-relay gate-relay-default)
        state="$work/state/relay-env-check"
        mkdir -p "$state"
        if out=$(in_unit_env /dev/null "$relay" check-config --config "$relay_toml" 2>&1); then
            fail "gate-relay check-config refuses dns.enabled without the Cloudflare token" "$out"
        elif grep -q 'dns.cloudflare.api_token' <<<"$out"; then
            pass "gate-relay check-config refuses dns.enabled without the Cloudflare token"
        else
            fail "gate-relay check-config refuses dns.enabled without the Cloudflare token" "$out"
        fi
        # RELAY__DNS__CLOUDFLARE__{API_TOKEN,ZONE_ID} are what makes the seed's relay valid.
        check "RELAY__DNS__CLOUDFLARE__API_TOKEN and ZONE_ID satisfy dns.enabled" \
            in_unit_env "$work/gate-relay.env" "$relay" check-config --config "$relay_toml"
    fi
fi

# ---------------------------------------------------------------- 4. systemd-analyze security
for unit in "$work"/units/*/*.service; do
    [ -f "$unit" ] || continue
    name="${unit#"$work/units/"}"
    out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>&1)
    score=$(sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p' <<<"$out")
    if [ -n "$score" ] && python3 -c "import sys; sys.exit(0 if float('$score') <= 2.0 else 1)"; then
        pass "systemd-analyze security $name: $score"
    else
        fail "systemd-analyze security $name: ${score:-no score} (want <= 2.0)" "$(grep -E '✗|Overall' <<<"$out")"
    fi
done

# ---------------------------------------------------------------- 5. lint
check "deadnix --fail" deadnix --fail "${nix_files[@]}"
check "nixpkgs-fmt --check" nixpkgs-fmt --check "${nix_files[@]}"

echo
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
