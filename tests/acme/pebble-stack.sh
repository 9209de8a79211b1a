#!/usr/bin/env bash
# Starts the ACME test stack on loopback for end-to-end runs of the real binaries:
# pebble-challtestsrv (DNS for Pebble), the fake Cloudflare API (forwarding TXT records to
# challtestsrv) and Pebble (HTTPS certificate signed by a throw-away CA made here).
#
# Usage: tests/acme/pebble-stack.sh DIR [CF_TOKEN] [ZONE_NAME]
# Writes DIR/env with the settings to give gate-relay and gate, then waits; Ctrl-C (or killing
# the script) stops everything. Needs: pebble (Debian package), python3, openssl, curl.
set -euo pipefail

dir=${1:?usage: pebble-stack.sh DIR [CF_TOKEN] [ZONE_NAME]}
token=${2:-test-cloudflare-token}
zone=${3:-localhost}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2; exit 1
}

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

# Pebble's HTTPS: a CA and a leaf for localhost / 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj "/CN=gate test pebble HTTPS CA" -keyout "$dir/ca.key" -out "$dir/pebble-https-ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$dir/key.pem" -out "$dir/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/leaf.ext"
openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/pebble-https-ca.pem" -CAkey "$dir/ca.key" \
  -CAcreateserial -days 30 -extfile "$dir/leaf.ext" -out "$dir/cert.pem" 2>/dev/null

dns_port=$(free_port); mgmt_port=$(free_port)
pebble-challtestsrv -dns01 "127.0.0.1:$dns_port" -management "127.0.0.1:$mgmt_port" \
  -http01 "" -https01 "" -tlsalpn01 "" -defaultIPv6 "" >"$dir/challtestsrv.log" 2>&1 &
pids+=($!)
wait_port "$mgmt_port" challtestsrv

python3 -u "$here/fake_cloudflare.py" --token "$token" --zone-id zone-test --zone-name "$zone" \
  --challtestsrv "http://127.0.0.1:$mgmt_port" >"$dir/fake-cloudflare.out" 2>"$dir/fake-cloudflare.log" &
pids+=($!)
for _ in $(seq 1 100); do grep -q '^listening on' "$dir/fake-cloudflare.out" 2>/dev/null && break; sleep 0.1; done
cf_port=$(sed -n 's/^listening on //p' "$dir/fake-cloudflare.out")

acme_port=$(free_port); acme_mgmt=$(free_port)
cat >"$dir/pebble-config.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$acme_port", "managementListenAddress": "127.0.0.1:$acme_mgmt",
  "certificate": "$dir/cert.pem", "privateKey": "$dir/key.pem", "httpPort": 5002, "tlsPort": 5001,
  "ocspResponderURL": "", "externalAccountBindingRequired": false,
  "certificateValidityPeriod": ${PEBBLE_CERT_SECONDS:-7776000}}}
JSON
PEBBLE_WFE_NONCEREJECT=0 PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 \
  pebble -config "$dir/pebble-config.json" -dnsserver "127.0.0.1:$dns_port" >"$dir/pebble.log" 2>&1 &
pids+=($!)
wait_port "$acme_port" pebble
wait_port "$acme_mgmt" "pebble management"
curl -sS --cacert "$dir/pebble-https-ca.pem" "https://localhost:$acme_mgmt/roots/0" >"$dir/pebble-root.pem"

cat >"$dir/env" <<ENV
RELAY__DNS__ENABLED=true
RELAY__DNS__PROVIDER=cloudflare
RELAY__DNS__CLOUDFLARE__API_TOKEN=$token
RELAY__DNS__CLOUDFLARE__ZONE_ID=zone-test
RELAY__DNS__CLOUDFLARE__API_URL=http://127.0.0.1:$cf_port/client/v4
GATE_LETSENCRYPT__ENABLED=true
GATE_LETSENCRYPT__EMAIL=ops@example.test
GATE_LETSENCRYPT__DIRECTORY_URL=https://localhost:$acme_port/dir
GATE_LETSENCRYPT__CA_FILE=$dir/pebble-https-ca.pem
# Verify served certificates with: curl --cacert $dir/pebble-root.pem ...
PEBBLE_ROOT=$dir/pebble-root.pem
FAKE_CLOUDFLARE_PORT=$cf_port
ENV
echo "ACME test stack ready; settings in $dir/env"
wait
