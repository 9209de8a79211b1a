#!/usr/bin/env bash
# Peak RSS of the daemon for one authenticated 31 MB request of small JSON values (issue 11),
# before (a parent revision, built in a temporary worktree) and after (this tree), side by
# side in one run.
#
#   bench/big_request.sh [--before REV] [--profile debug|release] [--concurrency N]
#
# Defaults: REV f568909 (the parent of issue 11's work), profile release, concurrency 1 and 4.
# For each build: starts the mock upstream and `gate serve` on free loopback ports, sends a
# warm-up request, then the 31 MB request (N at once), and reads the daemon's peak RSS
# (VmHWM in /proc/PID/status) after each round. The before-worktree and its target directory
# live under ${TMPDIR:-/tmp} (or $BEFORE_TREE and $BEFORE_TARGET) and are reused by later runs. Prints one table; exit 0 when every
# request got an answer.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
before_rev="f568909"
profile="release"
concurrency="1 4"
while [ $# -gt 0 ]; do
    case "$1" in
        --before) before_rev="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --concurrency) concurrency="$2"; shift 2 ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
case "$profile" in
    release) profile_flag="--release"; profile_dir="release" ;;
    debug) profile_flag=""; profile_dir="debug" ;;
    *) echo "--profile must be debug or release" >&2; exit 2 ;;
esac

tmp="${TMPDIR:-/tmp}"
before_tree="${BEFORE_TREE:-$tmp/gate-bench-$before_rev}"
before_target="${BEFORE_TARGET:-$tmp/gate-bench-$before_rev-target}"

echo "== building this tree ($profile): gate, mock_upstream" >&2
(cd "$root" && cargo build $profile_flag --quiet -p gate-daemon --bin gate --example mock_upstream)

echo "== building $before_rev ($profile) in $before_tree" >&2
if [ ! -d "$before_tree" ]; then
    git -C "$root" worktree add --detach "$before_tree" "$before_rev" >/dev/null
fi
(cd "$before_tree" && cargo build $profile_flag --quiet -p gate-daemon --bin gate --target-dir "$before_target")

exec python3 - "$root" "$root/target/$profile_dir/gate" "$before_target/$profile_dir/gate" \
    "$root/target/$profile_dir/examples/mock_upstream" "$before_rev" $concurrency <<'PY'
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request
from pathlib import Path

root, after_bin, before_bin, mock_bin, before_rev = sys.argv[1:6]
rounds = [int(c) for c in sys.argv[6:]]
MODEL = "gpt-4o-mini"
KEY = "sk-bench-upstream-key"
SIZE = 31 * 1000 * 1000

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_http(url, proc, what, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{what} did not come up in {deadline}s")

def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

# 31 MB of small JSON values: the chat request plus an array of 0s (two bytes a value).
head = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})[:-1]
head += ', "metadata": {"pad": ['
tail = "]}}"
count = (SIZE - len(head) - len(tail)) // 2
body = (head + ",".join(["0"] * count) + tail).encode()
print(f"request body: {len(body)} bytes, {count} small values", file=sys.stderr)

def post(url, results, index):
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            results[index] = r.status
    except urllib.error.HTTPError as e:
        results[index] = e.code
    except Exception as e:
        results[index] = repr(e)

def measure(name, binary, work):
    mock_port, gate_port = free_port(), free_port()
    mock = subprocess.Popen([mock_bin, "--port", str(mock_port), "--models", MODEL,
                             "--record-limit", "0"], stdout=subprocess.DEVNULL,
                            stderr=open(work / f"{name}-mock.log", "w"))
    wait_http(f"http://127.0.0.1:{mock_port}/v1/models", mock, "mock_upstream")
    state = work / f"{name}-state"
    state.mkdir()
    config = work / f"{name}.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {gate_port}\n\n[auth]\nallow_loopback = true\n\n'
        f'[upstreams.mock]\nprovider = "custom"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
        f'api_key = "{KEY}"\nmodels = ["{MODEL}"]\n')
    env = dict(os.environ, RUST_LOG="warn")
    gate = subprocess.Popen([binary, "serve", "--config", str(config), "--state-dir", str(state)],
                            stdout=subprocess.DEVNULL, stderr=open(work / f"{name}-gate.log", "w"),
                            env=env)
    try:
        url = f"http://127.0.0.1:{gate_port}"
        wait_http(url + "/health", gate, f"gate ({name})")
        small = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", data=small,
                               headers={"content-type": "application/json"}), timeout=30).read()
        row = {"build": name, "idle_rss_mib": rss_mib(gate.pid)}
        ok = True
        for n in rounds:
            results = [None] * n
            threads = [threading.Thread(target=post, args=(url + "/v1/chat/completions", results, i))
                       for i in range(n)]
            for t in threads: t.start()
            for t in threads: t.join()
            row[f"peak_rss_mib_c{n}"] = peak_rss_mib(gate.pid)
            row[f"status_c{n}"] = sorted(set(map(str, results)))
            ok &= all(r == 200 for r in results)
        return row, ok
    finally:
        gate.kill(); mock.kill(); gate.wait(); mock.wait()

with tempfile.TemporaryDirectory(prefix="gate-big-request-") as tmp:
    work = Path(tmp)
    rows, all_ok = [], True
    for name, binary in ((f"before ({before_rev})", before_bin), ("after (this tree)", after_bin)):
        row, ok = measure(name.split()[0], binary, work)
        row["build"] = name
        rows.append(row)
        all_ok &= ok
    cols = ["idle_rss_mib"] + [f"peak_rss_mib_c{n}" for n in rounds]
    print("| build | " + " | ".join(cols) + " | statuses |")
    print("|---|" + "---:|" * len(cols) + "---|")
    for row in rows:
        statuses = "; ".join(f"c{n}: {','.join(row[f'status_c{n}'])}" for n in rounds)
        print(f"| {row['build']} | " + " | ".join(f"{row[c]:.0f}" for c in cols) + f" | {statuses} |")
    for n in rounds:
        b, a = rows[0][f"peak_rss_mib_c{n}"], rows[1][f"peak_rss_mib_c{n}"]
        print(f"peak RSS at concurrency {n}: after/before = {a / b:.2f} ({b:.0f} -> {a:.0f} MiB)")
    sys.exit(0 if all_ok else 1)
PY
