"""HTTP-layer-limit benchmark driver (issue 16); run it through bench/throughput.sh, which installs
nginx, wrk and the peers and builds Gate.

It owns: nginx as the origin (one worker; a fixed chat completion on /v1/chat/completions and a
fixed SSE stream of 20 chat.completion.chunk events + a usage chunk + [DONE] on
/stream/v1/chat/completions), nginx as a plain reverse proxy in front of it (one worker,
keep-alive upstream, `proxy_buffering off` for the stream), Gate (two `custom` upstreams: plain
and stream), LiteLLM and Portkey's gateway, all on free loopback ports in a temporary directory;
checking one answer of each path before measuring; wrk (one thread, POST with a Lua script,
`--latency`) against each path at concurrency 50 (throughput) and 1 (latency), in interleaved
rounds; VmRSS of each proxy sampled during the load; the soak (--full); the JSON in bench/out/,
the chart bench/throughput.svg and the printed tables. It stops every process it started (also on
Ctrl-C), binds nothing but 127.0.0.1, and asserts nothing: targets are reported as met / missed.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Process handling and /proc sampling are shared with bench/gateway.py (same directory).
from gateway import CHILDREN, RssSampler, cpu_s, free_port, rss_mb, start, stop, stop_all

MODEL = "bench-model"  # routed to the origin's plain location
STREAM_MODEL = "bench-stream"  # routed to the origin's SSE location
UPSTREAM_KEY = "sk-bench-upstream-0123456789"
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789"
PROMPT = "Say hello to the benchmark"
STREAM_EVENTS = 20

# Targets of issue 16.
T_PLAIN_SHARE = 0.80  # Gate >= 80% of nginx-as-proxy, c=50, non-streamed
T_STREAM_SHARE = 0.70  # >= 70% streamed
T_ADDED_P50_MS = 0.1
T_ADDED_P99_MS = 0.5
T_POLICY_SHARE = 0.90  # with accounting, budget and rate limit >= 90% of the plain key
T_ACCOUNTING_SHARE = 0.90  # issue 14: accounting (usage log + budget + rpm) costs <= 10% at c=50
T_ACCOUNTING_C1_MS = 0.05  # ... and nothing visible at c=1: p50 within 0.05 ms of the same Gate without it
T_SHARED_SHARE = 0.85  # issue 15: the shared store (PostgreSQL + Redis) costs <= 15% at c=50
T_RSS_MB = 30.0
# A run of record needs a quiet host: on this VM the hypervisor can take a quarter of the CPU
# in bursts ("steal"), which moves every share. Above this, the run says it is not one.
T_STEAL_PCT = 5.0
# The peers: measured as users install them, not held to the run's quiet-host checks.
PEERS = ("litellm", "portkey")


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return 100.0 * (after[0] - before[0]) / total if total > 0 else 0.0

LABELS = {
    "direct": "origin direct (nginx)",
    "nginx-proxy": "nginx as proxy",
    "hyper-floor": "hyper floor (Gate's HTTP stack, no features)",
    "gate": "Gate",
    "gate-policy": "Gate, key with budget + rpm",
    "gate-noacct": "Gate, usage log off, plain key",
    "gate-shared-policy": "Gate, key with budget + rpm, shared store (PostgreSQL + Redis)",
    "litellm": "LiteLLM",
    "portkey": "Portkey gateway",
}


# ---------------------------------------------------------------- the origin's answers


def completion_body() -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello, benchmark! A fixed answer from nginx."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
        },
        separators=(",", ":"),
    )


def stream_body() -> str:
    """20 chat.completion.chunk events (role, 18 words, finish_reason), a usage chunk, [DONE].

    Compact (no logprobs, a short id): nginx's `return` takes at most one 4 KB config token."""

    def chunk(delta: dict, finish, usage=None, choices=True) -> str:
        c = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1767225600, "model": STREAM_MODEL}
        c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []
        if usage:
            c["usage"] = usage
        return "data: " + json.dumps(c, separators=(",", ":")) + "\n\n"

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": f"word{i} "}, None) for i in range(1, STREAM_EVENTS - 1)]
    events.append(chunk({}, "stop"))
    events.append(chunk({}, None, {"prompt_tokens": 12, "completion_tokens": 18, "total_tokens": 30}, choices=False))
    events.append("data: [DONE]\n\n")
    return "".join(events)


def nginx_string(s: str) -> str:
    """A single-quoted nginx string: nginx's parser turns \\n back into a newline."""
    assert "'" not in s and "$" not in s, "the body must not contain ' or $ (nginx variables)"
    quoted = "'" + s.replace("\\", "\\\\").replace("\n", "\\n") + "'"
    assert len(quoted) < 4000, f"nginx refuses config tokens over 4 KB; this one has {len(quoted)} bytes"
    return quoted


# ---------------------------------------------------------------- nginx


def nginx_conf(prefix: Path, port: int, server_block: str, upstream: str = "") -> str:
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    {upstream}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{server_block}
    }}
}}
"""


def start_nginx(name: str, work: Path, conf_text_for_port) -> tuple[subprocess.Popen, int]:
    prefix = work / name
    prefix.mkdir()
    # The worker runs as nobody when we are root: it must be able to enter its prefix.
    os.chmod(work, 0o755)
    os.chmod(prefix, 0o755)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text_for_port(prefix, port))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    test = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                          capture_output=True, text=True, timeout=30)
    if test.returncode != 0:
        raise SystemExit(f"bench: nginx config for {name} refused ({conf}): {test.stderr.strip()}")
    proc = start([nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], prefix / "stderr.log")
    return proc, port


# How the origin frames its stream. "chunked" (the default) is what providers send: OpenAI,
# Anthropic and Google stream SSE with `Transfer-Encoding: chunked`, since the length is not
# known when the answer starts, so every proxy in front of them re-frames chunks too. nginx's
# `return` always sends a Content-Length; a `sub_filter` that never matches makes nginx drop it
# and chunk the same bytes. "length" is the framing of runs 1-14 (a streamed body with a
# Content-Length, which nginx-as-proxy and the hyper floor pass on as it is, and which no
# provider sends).
STREAM_FRAMINGS = ("chunked", "length")


def start_origin(work: Path, stream_framing: str = "chunked") -> tuple[subprocess.Popen, int]:
    if stream_framing not in STREAM_FRAMINGS:
        raise ValueError(f"stream framing must be one of {STREAM_FRAMINGS}, not {stream_framing!r}")
    chunked = """
            sub_filter_types text/event-stream;
            sub_filter '__never_in_the_body__' '';""" if stream_framing == "chunked" else ""
    block = f"""        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {nginx_string(completion_body())};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            add_header Cache-Control no-cache;{chunked}
            return 200 {nginx_string(stream_body())};
        }}
        location / {{ return 404 '{{"error":{{"message":"no such path on the bench origin"}}}}'; }}"""
    return start_nginx("origin", work, lambda prefix, port: nginx_conf(prefix, port, block))


def start_nginx_proxy(work: Path, origin_port: int) -> tuple[subprocess.Popen, int]:
    upstream = f"upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 128; keepalive_requests 1000000; }}"
    common = """            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
    block = f"""        location /stream/ {{
{common}
            proxy_buffering off;
        }}
        location / {{
{common}
        }}"""
    return start_nginx("nginx-proxy", work, lambda prefix, port: nginx_conf(prefix, port, block, upstream))


# ---------------------------------------------------------------- targets


class Target:
    """One path to the origin: URL and headers for the plain and the streamed request."""

    def __init__(self, name: str, proc: subprocess.Popen | None, base: str, headers: dict,
                 plain_path: str = "/v1/chat/completions", stream_path: str = "/v1/chat/completions",
                 stream_headers: dict | None = None):
        self.name, self.proc, self.base = name, proc, base
        # RSS and CPU over the whole process tree (nginx's master + worker, LiteLLM's workers);
        # Gate is one process, so its own /proc entry is read without walking /proc.
        self.tree = not name.startswith("gate")
        self.plain_url = base + plain_path
        self.stream_url = base + stream_path
        self.headers = headers
        self.stream_headers = stream_headers if stream_headers is not None else headers
        # Other processes whose CPU counts against this path (the shared store's servers):
        # label -> process whose tree is sampled with the proxy's.
        self.servers: dict[str, subprocess.Popen] = {}

    def url(self, stream: bool) -> str:
        return self.stream_url if stream else self.plain_url

    def hdrs(self, stream: bool) -> dict:
        return self.stream_headers if stream else self.headers


def request_body(stream: bool) -> str:
    b = {"model": STREAM_MODEL if stream else MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        b["stream"] = True
    return json.dumps(b, separators=(",", ":"))


def wait_ready(target: Target, deadline_s: float) -> None:
    """Until one plain request is answered 200 (or the deadline, or the process exits)."""
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if target.proc is not None and target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.proc.returncode} before it was ready")
        try:
            status, _, _ = post(target, False, timeout=5)
            if status == 200:
                return
            last = f"HTTP {status}"
        except OSError as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{target.name} not ready at {target.plain_url} after {deadline_s:.0f}s ({last})")


def bench_request(target: Target, stream: bool) -> urllib.request.Request:
    """The bench's plain or streamed request to `target`."""
    return urllib.request.Request(target.url(stream), data=request_body(stream).encode(), method="POST",
                                  headers={"content-type": "application/json", **target.hdrs(stream)})


def post(target: Target, stream: bool, timeout: float = 30) -> tuple[int, str, str]:
    req = bench_request(target, stream)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode(errors="replace")


def stream_framing_of(target: Target) -> str:
    """How `target` frames its streamed answer: "chunked", "length" or what it sent instead."""
    with urllib.request.urlopen(bench_request(target, True), timeout=30) as r:
        r.read()
        if "chunked" in (r.headers.get("transfer-encoding") or "").lower():
            return "chunked"
        return "length" if r.headers.get("content-length") else "neither"


def check_answers(target: Target) -> None:
    """One plain and one streamed request: the answer must be the origin's, carried whole."""
    status, ctype, body = post(target, False)
    if status != 200 or "application/json" not in ctype:
        raise RuntimeError(f"{target.name}: plain request got HTTP {status} {ctype}: {body[:300]}")
    answer = json.loads(body)
    content = answer["choices"][0]["message"]["content"]
    if "fixed answer from nginx" not in content or not answer.get("usage"):
        raise RuntimeError(f"{target.name}: plain answer is not the origin's: {body[:300]}")
    status, ctype, body = post(target, True)
    if status != 200 or "text/event-stream" not in ctype:
        raise RuntimeError(f"{target.name}: streamed request got HTTP {status} {ctype}: {body[:300]}")
    datas = [line[len("data:"):].strip() for line in body.splitlines() if line.startswith("data:")]
    if not datas or datas[-1] != "[DONE]":
        raise RuntimeError(f"{target.name}: stream does not end with data: [DONE]: {body[-300:]}")
    words = sum(1 for d in datas[:-1] if '"content":"word' in d)
    if words != STREAM_EVENTS - 2:
        raise RuntimeError(f"{target.name}: stream carried {words} of {STREAM_EVENTS - 2} content events")


def gate_cli_has(binary: Path, option: str) -> bool:
    out = subprocess.run([str(binary), "token", "create", "--help"], capture_output=True, text=True, timeout=30)
    return option in out.stdout


def start_redis(work: Path) -> tuple[subprocess.Popen, int]:
    """redis-server on a free loopback port, no persistence (the shared store's pair)."""
    port = free_port()
    proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(work)], work / "redis.log")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("bench: redis-server did not answer PING within 10 s")


PG_PASSWORD = "bench-pg-Secr3t"


def pg_bin_dir() -> Path | None:
    """Debian's PostgreSQL server programs (/usr/lib/postgresql/<major>/bin), the newest."""
    base = Path("/usr/lib/postgresql")
    found = sorted((int(d.name), d / "bin") for d in base.iterdir()
                   if d.name.isdigit() and (d / "bin/initdb").exists()) if base.is_dir() else []
    return found[-1][1] if found else None


def start_postgres(work: Path) -> tuple[str, subprocess.Popen]:
    """A PostgreSQL cluster in the work dir on a free loopback port, as
    tests/support/store_servers.rs starts it (initdb, SCRAM over TCP, no fsync: the bench
    measures Gate, not the disk), with a database `gate`; returns its URL. As root, the
    server runs as the `postgres` user (PostgreSQL refuses root)."""
    bin_dir = pg_bin_dir()
    assert bin_dir is not None
    as_postgres = os.geteuid() == 0
    pg_dir = work / "pg"
    data, run = pg_dir / "data", pg_dir / "run"
    for d in (pg_dir, data, run):
        d.mkdir()
    pwfile = run / "pwfile"
    pwfile.write_text(PG_PASSWORD)
    wrap: list[str] = []
    if as_postgres:
        os.chmod(work, 0o755)
        os.chmod(pg_dir, 0o755)
        subprocess.run(["chown", "-R", "postgres:postgres", str(data), str(run)], check=True)
        wrap = ["runuser", "-u", "postgres", "--"]
    out = subprocess.run(wrap + [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                                 "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                                 f"--pwfile={pwfile}"], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"bench: initdb failed: {out.stdout}{out.stderr}")
    port = free_port()
    proc = start(wrap + [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(run),
                  "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
                  "-c", "synchronous_commit=off"], work / "postgres.log")
    env = dict(os.environ, PGPASSWORD=PG_PASSWORD, PGCONNECT_TIMEOUT="5")
    psql = [str(bin_dir / "psql"), "-X", "-q", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    deadline = time.time() + 60
    while True:
        out = subprocess.run(psql + ["-d", "postgres", "-c", "SELECT 1"], capture_output=True, text=True,
                             env=env, timeout=30)
        if out.returncode == 0:
            break
        if time.time() > deadline:
            raise SystemExit(f"bench: PostgreSQL did not answer within 60 s: {out.stderr.strip()}")
        time.sleep(0.1)
    out = subprocess.run(psql + ["-d", "postgres", "-c", "CREATE DATABASE gate"], capture_output=True,
                         text=True, env=env, timeout=30)
    if out.returncode != 0:
        raise SystemExit(f"bench: CREATE DATABASE failed: {out.stderr.strip()}")
    return f"postgres://postgres:{PG_PASSWORD}@127.0.0.1:{port}/gate", proc


def start_hyper_floor(root: Path, work: Path, origin_port: int) -> Target:
    """daemon/examples/hyper_floor.rs: a proxy of only the libraries Gate's request path is built
    on (tokio, hyper's server, hyper-util's pooled client), so the report can tell the stack's
    own distance to nginx-as-proxy from Gate's features'."""
    binary = root / "target/release/examples/hyper_floor"
    if not binary.exists():
        raise RuntimeError(f"{binary} is not built (cargo build --release -p gate-daemon --example hyper_floor)")
    port = free_port()
    proc = start([str(binary), f"127.0.0.1:{port}", f"127.0.0.1:{origin_port}"], work / "hyper-floor.log")
    return Target("hyper-floor", proc, f"http://127.0.0.1:{port}", {"authorization": f"Bearer {UPSTREAM_KEY}"},
                  stream_path="/stream/v1/chat/completions")


def start_gate(root: Path, work: Path, origin_port: int, binary: Path, extra_config: str,
               name: str = "gate", accounting: bool = True) -> tuple[Target, Target, dict]:
    """Gate in front of the origin with a plain key (target `name`) and a key with a budget and
    a rate limit (`name`-policy). `accounting=False`: the usage log off (`[usage] enabled =
    false`), the comparison point of issue 14's "accounting on vs off"."""
    prefix = "" if name == "gate" else f"{name}-"
    state = work / f"{prefix}gate-state"
    state.mkdir()
    port = free_port()
    config = work / f"{prefix}gate.toml"
    # Prices for the bench's models (a budgeted key is refused a model without one): what
    # gpt-4o-mini costs, so that a budget is reserved and settled as for a real model.
    prices = (
        f'\n[upstreams.plain.prices."{MODEL}"]\ninput = 0.15\noutput = 0.6\n'
        f'\n[upstreams.stream.prices."{STREAM_MODEL}"]\ninput = 0.15\noutput = 0.6\n'
    )
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\nlog_level = "warn"\n\n'
        + ("" if accounting else "[usage]\nenabled = false\n\n") +
        f'[upstreams.plain]\nprovider = "custom"\nbase_url = "http://127.0.0.1:{origin_port}/v1"\n'
        f'api_key = "{UPSTREAM_KEY}"\nmodels = ["{MODEL}"]\n\n'
        f'[upstreams.stream]\nprovider = "custom"\nbase_url = "http://127.0.0.1:{origin_port}/stream/v1"\n'
        f'api_key = "{UPSTREAM_KEY}"\nmodels = ["{STREAM_MODEL}"]\n'
        + prices
        + (f"\n{extra_config}\n" if extra_config else "")
    )

    # With `[store] url` the keys live in PostgreSQL: they are created through the running
    # daemon (`gate token create` reaches it over its admin socket), so it starts first.
    keys_in_store = "\nurl = " in extra_config
    proc = None
    if keys_in_store:
        proc = start([str(binary), "serve", "--config", str(config), "--state-dir", str(state)],
                     work / f"{prefix}gate.log")
        # Until its admin socket listens, `gate token create` would write the key to the state
        # directory (the offline path), where a daemon on PostgreSQL does not look.
        deadline = time.time() + 60
        while not (state / "admin.sock").exists():
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"bench: {name} did not open its admin socket (see {work / f'{prefix}gate.log'})")
            time.sleep(0.1)

    def token(*args: str) -> str:
        deadline = time.time() + 60
        while True:
            out = subprocess.run([str(binary), "token", "create", *args, "--state-dir", str(state)],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return out.stdout.strip()
            if not keys_in_store or time.time() > deadline:
                raise SystemExit(f"bench: gate token create {' '.join(args)} failed: {out.stderr.strip()}")
            time.sleep(0.2)  # the daemon is still starting (admin socket, migrations)

    plain_key = token("--name", "bench-plain")
    # The key of the "accounting, budget and rate limit" scenario. --budget arrived with the key
    # policy work (issue 14); an older binary gets a plain key here and the report says so.
    policy = {"budget": gate_cli_has(binary, "--budget"), "rpm": gate_cli_has(binary, "--rpm")}
    args = ["--name", "bench-policy"]
    if policy["budget"]:
        # Each request reserves its most (the model's output cap at these prices) and settles
        # to its usage: $100,000 a month outlasts the 10-minute soak at any rate seen here.
        args += ["--budget", "100000", "--period", "month"]
    if policy["rpm"]:
        # 60,000,000 a minute (a million a second) is above anything wrk can send here, so no
        # request is refused, but every one goes through the limiter; 429s would show as errors.
        args += ["--rpm", "60000000"]
    policy["args"] = args
    policy_key = token(*args)
    if proc is None:
        proc = start([str(binary), "serve", "--config", str(config), "--state-dir", str(state)],
                     work / f"{prefix}gate.log")
    base = f"http://127.0.0.1:{port}"
    plain = Target(name, proc, base, {"authorization": f"Bearer {plain_key}"})
    with_policy = Target(f"{name}-policy", proc, base, {"authorization": f"Bearer {policy_key}"})
    return plain, with_policy, policy


def start_litellm(root: Path, work: Path, origin_port: int, workers: int) -> Target:
    binary = root / "bench/.venv/bin/litellm"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing (bench/throughput.sh installs it; see its output)")
    port = free_port()
    config = work / "litellm.yaml"
    # As in bench/gateway.py: LiteLLM's production advice without a database (master key, no
    # verbose logging, JSON logs, one worker per CPU).
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{origin_port}/v1\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        f"  - model_name: {STREAM_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{STREAM_MODEL}\n"
        f"      api_base: http://127.0.0.1:{origin_port}/stream/v1\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  json_logs: true\n"
        "  request_timeout: 600\n"
    )
    env = dict(os.environ)
    env.update({"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "NO_DOCS": "True"})
    cmd = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", str(workers)]
    if workers > 1:
        # See bench/gateway.py: uvicorn's supervisor otherwise kills busy workers in a loop.
        cmd += ["--timeout_worker_healthcheck", "60"]
    proc = start(cmd, work / "litellm.log", env=env)
    return Target("litellm", proc, f"http://127.0.0.1:{port}", {"authorization": f"Bearer {LITELLM_MASTER_KEY}"})


def start_portkey(root: Path, work: Path, origin_port: int) -> Target:
    # `npx @portkey-ai/gateway` runs this bin of the package (bench/package.json pins it); we run
    # the bin directly so that the process we measure is the gateway, not npm around it.
    binary = root / "bench/node_modules/.bin/gateway"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing (bench/throughput.sh runs `npm ci` in bench/; see its output)")
    port = free_port()
    env = dict(os.environ)
    # The gateway's server listens on every interface and has no option for it: this preload
    # makes its listen() bind 127.0.0.1 (nothing else changes).
    env["NODE_OPTIONS"] = (env.get("NODE_OPTIONS", "") + f" --require {root / 'bench/loopback-listen.cjs'}").strip()
    proc = start([str(binary), f"--port={port}", "--headless"], work / "portkey.log", env=env)
    base = f"http://127.0.0.1:{port}"
    hdr = {"authorization": f"Bearer {UPSTREAM_KEY}", "x-portkey-provider": "openai"}
    return Target("portkey", proc, base,
                  {**hdr, "x-portkey-custom-host": f"http://127.0.0.1:{origin_port}/v1"},
                  stream_headers={**hdr, "x-portkey-custom-host": f"http://127.0.0.1:{origin_port}/stream/v1"})


# ---------------------------------------------------------------- wrk


def lua_script(path: Path, target: Target, stream: bool) -> Path:
    body = request_body(stream)
    assert "]==]" not in body
    headers = {"Content-Type": "application/json", **target.hdrs(stream)}
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    lines += [f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items()]
    # done() prints the numbers as one JSON line, so nothing parses wrk's text output.
    lines.append("""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.2f}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
""")
    path.write_text("\n".join(lines))
    return path


def wrk(work: Path, target: Target, stream: bool, conc: int, duration: float) -> dict:
    script = lua_script(work / f"wrk-{target.name}-{'s' if stream else 'p'}.lua", target, stream)
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{max(1, round(duration))}s", "--timeout", "30s", "--latency",
           "-s", str(script), target.url(stream)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed on {target.name}: {out.stderr.strip() or out.stdout[-500:]}")
    r = json.loads(line[len("WRKJSON "):])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    r["errors_total"] = sum(r["errors"].values())
    r["latency_ms"] = {k: v / 1000.0 for k, v in r.pop("latency_us").items()}
    return r


def measure(work: Path, target: Target, stream: bool, conc: int, duration: float, sample_rss: bool) -> dict:
    pid = target.proc.pid if target.proc else None
    host0 = cpu_times()
    cpu0 = cpu_s(pid, target.tree) if pid else None
    servers0 = {label: cpu_s(proc.pid, True) for label, proc in target.servers.items()}
    if pid and sample_rss:
        with RssSampler(pid, target.tree, 0.2) as sampler:
            r = wrk(work, target, stream, conc, duration)
        r["rss_max_mb"] = sampler.max
        r["rss_end_mb"] = rss_mb(pid, tree=target.tree)
    else:
        r = wrk(work, target, stream, conc, duration)
    if pid:
        r["proxy_cpu_ms_per_request"] = (cpu_s(pid, target.tree) - cpu0) * 1000.0 / max(r["requests"], 1)
    for label, proc in target.servers.items():
        r[f"{label}_cpu_ms_per_request"] = (cpu_s(proc.pid, True) - servers0[label]) * 1000.0 / max(r["requests"], 1)
    r["host_steal_pct"] = steal_pct(host0, cpu_times())
    return r


# ---------------------------------------------------------------- profile


def profile_gate(work: Path, out_dir: Path, gate: Target, duration: float, stamp: str) -> dict:
    """perf record of Gate under c=50 (plain, then streamed), in runs of their own after the
    measured rounds (perf's sampling slows Gate, so these runs' rates are not reported). Writes
    perf's flat report (by symbol, and by shared object: kernel / gate / libc) and the perf.data
    to bench/out/. Flat on purpose: the release build has no frame pointers, and DWARF unwinding
    of a busy run takes minutes to report; record call graphs by hand when they are needed."""
    if not shutil.which("perf"):
        return {"error": "perf is not installed (Debian: apt-get install linux-perf)"}
    out = {}
    for stream in (False, True):
        kind = "stream" if stream else "plain"
        data = out_dir / f"perf-gate-{kind}-{stamp}.data"  # for `perf report -i` by hand
        rec = subprocess.Popen(["perf", "record", "-F", "999", "-p", str(gate.proc.pid),
                                "-o", str(data), "--", "sleep", str(round(duration))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # perf attaches before the load starts
        r = wrk(work, gate, stream, 50, duration)
        _, err = rec.communicate(timeout=duration + 120)
        if rec.returncode != 0 or not data.exists():
            out[kind] = {"error": f"perf record failed: {err.strip()[-300:]}"}
            continue
        reports = {}
        for sort in ("dso", "dso,symbol"):
            rep = subprocess.run(["perf", "report", "-i", str(data), "--sort", sort,
                                  "--percent-limit", "0.5", "--stdio"], capture_output=True, text=True, timeout=600)
            # perf pads the symbol column to its longest name and adds empty columns: squeeze them.
            lines = (re.sub(r" {3,}", "  ", re.sub(r"(\s+-)+\s*$", "", l)).rstrip() for l in rep.stdout.splitlines())
            reports[sort] = "\n".join(l for l in lines if l.strip() and not l.startswith("#"))
        path = out_dir / f"perf-gate-{kind}-{stamp}.txt"
        path.write_text(f"perf record -F 999 (flat) of gate, c=50 {kind}, {r['requests']} requests "
                        f"({r['rps']:,.0f} req/s under perf)\n\n== by shared object\n{reports['dso']}\n\n"
                        f"== by symbol\n{reports['dso,symbol']}\n")
        out[kind] = {"report": str(path.relative_to(out_dir.parent.parent)), "by_dso": reports["dso"].splitlines()[:8],
                     "top_symbols": reports["dso,symbol"].splitlines()[:15]}
    return out


# ---------------------------------------------------------------- soak


def soak(work: Path, gate: Target, minutes: float, period: float = 10.0) -> dict:
    """Gate under 25 plain + 25 streaming connections for `minutes`; VmRSS every `period` s."""
    duration = minutes * 60.0
    procs = []
    for stream in (False, True):
        script = lua_script(work / f"wrk-soak-{'s' if stream else 'p'}.lua", gate, stream)
        cmd = ["wrk", "-t1", "-c25", f"-d{round(duration)}s", "--timeout", "30s", "-s", str(script), gate.url(stream)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0))
        CHILDREN.append(procs[-1])  # stopped with the rest on Ctrl-C
    series = []
    t0 = time.monotonic()
    while any(p.poll() is None for p in procs):
        series.append((round(time.monotonic() - t0, 1), rss_mb(gate.proc.pid)))
        time.sleep(max(0.0, period - ((time.monotonic() - t0) % period)))
    loads = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        line = next((l for l in stdout.splitlines() if l.startswith("WRKJSON ")), None)
        loads.append(json.loads(line[len("WRKJSON "):]) if line else {"error": stderr.strip()})

    def window_mean(a: float, b: float):
        vals = [v for t, v in series if a <= t < b]
        return statistics.mean(vals) if vals else None

    minute2 = window_mean(60.0, 120.0)
    last = window_mean(max(0.0, duration - 60.0), duration + period)
    flat = bool(minute2 and last is not None and abs(last - minute2) <= 0.10 * minute2)
    return {"minutes": minutes, "sample_period_s": period, "rss_series_mb": series,
            "rss_max_mb": max((v for _, v in series), default=0.0),
            "minute2_mean_mb": minute2, "last_minute_mean_mb": last, "flat": flat, "loads": loads}


# ---------------------------------------------------------------- report


SCENARIOS = [  # name, concurrency, stream
    ("c50", 50, False),
    ("c50-stream", 50, True),
    ("c1", 1, False),
    ("c1-stream", 1, True),
]


def median_of(runs: list[dict]) -> dict:
    out = {"rounds": runs}  # summarize() pairs paths round by round
    out["rps"] = statistics.median(r["rps"] for r in runs)
    out["latency_ms"] = {k: statistics.median(r["latency_ms"][k] for r in runs) for k in runs[0]["latency_ms"]}
    for k in ("rss_max_mb", "rss_end_mb", "proxy_cpu_ms_per_request", "postgresql_cpu_ms_per_request",
              "redis_cpu_ms_per_request"):
        if all(k in r for r in runs):
            out[k] = statistics.median(r[k] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors_total"] for r in runs)
    return out


def summarize(results: dict) -> dict:
    """Per path: rates, shares, latencies, RSS. Ratios and differences between two paths are
    taken within each round (the two ran minutes apart at most) and then the median across
    rounds, which on a shared machine is steadier than the ratio of two medians."""
    s = results["scenarios"]

    def get(sc, t):
        return s.get(sc, {}).get(t)

    def paired(sc, a, b, f):
        ra, rb = get(sc, a), get(sc, b)
        if not ra or not rb:
            return None
        vals = [f(x, y) for x, y in zip(ra["rounds"], rb["rounds"])]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def share(x, y):
        return x["rps"] / y["rps"] if y["rps"] else None

    def latency_over(q):
        return lambda x, y: x["latency_ms"][q] - y["latency_ms"][q]

    rows = {}
    for t in results["paths"]:
        row = {}
        for sc in ("c50", "c50-stream"):
            r = get(sc, t)
            if r:
                row[f"{sc}_rps"] = r["rps"]
                row[f"{sc}_share_of_nginx_proxy"] = paired(sc, t, "nginx-proxy", share)
                row[f"{sc}_errors"] = r["errors"]
                row[f"{sc}_requests"] = r["requests"]
                row[f"{sc}_cpu_ms_per_request"] = r.get("proxy_cpu_ms_per_request")
                for server in ("postgresql", "redis"):
                    if r.get(f"{server}_cpu_ms_per_request") is not None:
                        row[f"{sc}_{server}_cpu_ms_per_request"] = r[f"{server}_cpu_ms_per_request"]
        for sc in ("c1", "c1-stream"):
            r = get(sc, t)
            if r:
                row[f"{sc}_p50_ms"] = r["latency_ms"]["p50"]
                row[f"{sc}_p99_ms"] = r["latency_ms"]["p99"]
                if t != "direct":
                    for q in ("p50", "p99"):
                        row[f"{sc}_added_{q}_ms"] = paired(sc, t, "direct", latency_over(q))
        rss = [get(sc, t).get("rss_max_mb") for sc in ("c50", "c50-stream") if get(sc, t)]
        rss = [v for v in rss if v is not None]
        if rss:
            row["rss_max_mb"] = max(rss)
            row["rss_end_mb"] = get("c50-stream", t).get("rss_end_mb") if get("c50-stream", t) else None
        rows[t] = row
    if "gate-policy" in rows:
        for sc in ("c50", "c50-stream"):
            rows["gate-policy"][f"{sc}_share_of_plain_key"] = paired(sc, "gate-policy", "gate", share)
    if "gate-shared-policy" in rows:
        # The embedded vs shared store pair: the same key policy, decided in-process or by one
        # Redis script per request (and one per settlement).
        for sc in ("c50", "c50-stream"):
            rows["gate-shared-policy"][f"{sc}_share_of_embedded"] = paired(
                sc, "gate-shared-policy", "gate-policy", share)
    if "gate-policy" in rows and "gate-noacct" in rows:
        # Issue 14's accounting on vs off pair; it does not depend on the shared store's run.
        for sc in ("c50", "c50-stream"):
            rows["gate-policy"][f"{sc}_share_of_no_accounting"] = paired(sc, "gate-policy", "gate-noacct", share)
        for sc in ("c1", "c1-stream"):
            for q in ("p50", "p99"):
                rows["gate-policy"][f"{sc}_{q}_over_no_accounting_ms"] = paired(
                    sc, "gate-policy", "gate-noacct", latency_over(q))
    return rows


def targets_met(results: dict) -> list[tuple[str, str, bool | None]]:
    rows = results["summary"]
    g, gp = rows.get("gate", {}), rows.get("gate-policy", {})
    out = []

    def add(what, val, fmt_, ok):
        out.append((what, "-" if val is None else fmt_.format(val), None if val is None else ok(val)))

    add("c=50 non-streamed, share of nginx-as-proxy >= 80%", g.get("c50_share_of_nginx_proxy"), "{:.0%}",
        lambda v: v >= T_PLAIN_SHARE)
    add("c=50 streamed, share of nginx-as-proxy >= 70%", g.get("c50-stream_share_of_nginx_proxy"), "{:.0%}",
        lambda v: v >= T_STREAM_SHARE)
    add("c=1 added latency p50 <= 0.1 ms (non-streamed)", g.get("c1_added_p50_ms"), "{:.3f} ms",
        lambda v: v <= T_ADDED_P50_MS)
    add("c=1 added latency p99 <= 0.5 ms (non-streamed)", g.get("c1_added_p99_ms"), "{:.3f} ms",
        lambda v: v <= T_ADDED_P99_MS)
    add("c=1 added latency p50 <= 0.1 ms (streamed, whole stream)", g.get("c1-stream_added_p50_ms"), "{:.3f} ms",
        lambda v: v <= T_ADDED_P50_MS)
    add("c=1 added latency p99 <= 0.5 ms (streamed, whole stream)", g.get("c1-stream_added_p99_ms"), "{:.3f} ms",
        lambda v: v <= T_ADDED_P99_MS)
    add("key with budget + rpm, c=50 non-streamed, >= 90% of the plain key", gp.get("c50_share_of_plain_key"),
        "{:.0%}", lambda v: v >= T_POLICY_SHARE)
    add("key with budget + rpm, c=50 streamed, >= 90% of the plain key", gp.get("c50-stream_share_of_plain_key"),
        "{:.0%}", lambda v: v >= T_POLICY_SHARE)
    add("accounting on (usage log, budget, rpm) vs off, c=50 non-streamed, >= 90%",
        gp.get("c50_share_of_no_accounting"), "{:.0%}", lambda v: v >= T_ACCOUNTING_SHARE)
    add("accounting on vs off, c=50 streamed, >= 90%",
        gp.get("c50-stream_share_of_no_accounting"), "{:.0%}", lambda v: v >= T_ACCOUNTING_SHARE)
    add("accounting on vs off, c=1 p50 difference <= 0.05 ms (non-streamed)",
        gp.get("c1_p50_over_no_accounting_ms"), "{:+.3f} ms", lambda v: v <= T_ACCOUNTING_C1_MS)
    gs = rows.get("gate-shared-policy", {})
    add("shared store (PostgreSQL + Redis) vs embedded, c=50 non-streamed, >= 85%",
        gs.get("c50_share_of_embedded"), "{:.0%}", lambda v: v >= T_SHARED_SHARE)
    add("shared store vs embedded, c=50 streamed, >= 85%",
        gs.get("c50-stream_share_of_embedded"), "{:.0%}", lambda v: v >= T_SHARED_SHARE)
    add("Gate RSS under c=50 load <= 30 MB (max of the samples)", g.get("rss_max_mb"), "{:.1f} MB",
        lambda v: v <= T_RSS_MB)
    steal = results["environment"].get("host_steal_pct")
    if steal:
        out.append((f"quiet host: hypervisor steal over the measured rounds <= {T_STEAL_PCT:g}% "
                    "(else not a run of record)",
                    f"{steal['rounds']:.1f}% (max {steal['max_of_one_measurement']:.1f}% in one measurement)",
                    steal["rounds"] <= T_STEAL_PCT))
    stalls = results["environment"].get("stalled_measurements")
    if stalls is not None:
        out.append(("no failed request on any path but the peers' (else not a run of record: a host pause, "
                    "e.g. a VM snapshot, or a stall or fault of the path, to be looked into)",
                    ", ".join(stalls) or "none", not stalls))
    so = results.get("soak")
    if so:
        out.append((f"Gate RSS flat over the {so['minutes']:g}-minute soak (last minute's mean within 10% of "
                    "minute 2's) and <= 30 MB",
                    f"{so['minute2_mean_mb'] or 0:.1f} -> {so['last_minute_mean_mb'] or 0:.1f} MB "
                    f"(max {so['rss_max_mb']:.1f})", so["flat"] and so["rss_max_mb"] <= T_RSS_MB))
    return out


def f_rps(v):
    return "-" if v is None else f"{v:,.0f}"


def f_pct(v, target=None):
    if v is None:
        return "-"
    return (f"{v:.0%}" if v >= 0.1 else f"{v:.2%}") + (f" (≥ {target:.0%})" if target else "")


def f_ms(v, target=None, signed=False):
    if v is None:
        return "-"
    text = f"{v:+.3f}" if signed else f"{v:.3f}"
    return text + (f" (≤ {target:g})" if target is not None else "")


def tables(results: dict) -> list[str]:
    rows = results["summary"]
    lines = [
        "| path | c=50 req/s | share of nginx-as-proxy | c=50 streamed req/s | share of nginx-as-proxy "
        "| errors / requests (c=50) | proxy CPU per request [ms] (plain / stream) | RSS under load, max / end [MB] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in results["paths"]:
        r = rows[t]
        is_gate = t.startswith("gate")
        errs = f"{r.get('c50_errors', 0) + r.get('c50-stream_errors', 0)}/" \
               f"{r.get('c50_requests', 0) + r.get('c50-stream_requests', 0)}"
        cpu = "-" if t == "direct" else \
            f"{r.get('c50_cpu_ms_per_request') or 0:.3f} / {r.get('c50-stream_cpu_ms_per_request') or 0:.3f}"
        rss = "-" if r.get("rss_max_mb") is None else \
            f"{r['rss_max_mb']:.1f} / {r.get('rss_end_mb') or 0:.1f}" + (" (≤ 30)" if is_gate else "")
        lines.append(
            f"| {LABELS[t]} | {f_rps(r.get('c50_rps'))} | "
            f"{f_pct(r.get('c50_share_of_nginx_proxy'), T_PLAIN_SHARE if is_gate else None)} | "
            f"{f_rps(r.get('c50-stream_rps'))} | "
            f"{f_pct(r.get('c50-stream_share_of_nginx_proxy'), T_STREAM_SHARE if is_gate else None)} | "
            f"{errs} | {cpu} | {rss} |")
    gp = rows.get("gate-policy", {})
    if gp.get("c50_share_of_plain_key"):
        lines.append("")
        lines.append(f"Key with budget + rpm vs plain key (same Gate, same run): "
                     f"{gp['c50_share_of_plain_key']:.0%} non-streamed, "
                     f"{gp.get('c50-stream_share_of_plain_key') or 0:.0%} streamed (target ≥ 90%); "
                     f"key created with `gate token create {' '.join(results['gate_policy']['args'])}`.")
    if gp.get("c50_share_of_no_accounting"):
        lines.append("")
        lines.append(f"Accounting on (usage log, budget, rpm) vs a Gate with the usage log off and a plain key "
                     f"(issue 14, same run): {gp['c50_share_of_no_accounting']:.0%} non-streamed, "
                     f"{gp.get('c50-stream_share_of_no_accounting') or 0:.0%} streamed at c=50 (target ≥ 90%); "
                     f"c=1 p50 {gp.get('c1_p50_over_no_accounting_ms') or 0:+.3f} ms, "
                     f"p99 {gp.get('c1_p99_over_no_accounting_ms') or 0:+.3f} ms.")
    gs = rows.get("gate-shared-policy", {})
    if gs.get("c50_share_of_embedded"):
        lines.append("")
        lines.append(f"Shared store (PostgreSQL + Redis on loopback, `[store] url` + `redis_url`) vs embedded, same key policy, "
                     f"same run: {gs['c50_share_of_embedded']:.0%} non-streamed, "
                     f"{gs.get('c50-stream_share_of_embedded') or 0:.0%} streamed (issue 15: ≥ 85% at c=50).")
        ge = rows.get("gate-policy", {})
        if gs.get("c50_postgresql_cpu_ms_per_request") is not None:
            # Where the difference goes on this one machine: the servers' CPU comes out of the
            # same cores as Gate's, the origin's and wrk's.
            parts = []
            for sc, what in (("c50", "non-streamed"), ("c50-stream", "streamed")):
                parts.append(f"{what}: Gate {1000 * (gs.get(f'{sc}_cpu_ms_per_request') or 0):.1f} µs "
                             f"(embedded {1000 * (ge.get(f'{sc}_cpu_ms_per_request') or 0):.1f} µs), "
                             f"PostgreSQL {1000 * (gs.get(f'{sc}_postgresql_cpu_ms_per_request') or 0):.1f} µs, "
                             f"Redis {1000 * (gs.get(f'{sc}_redis_cpu_ms_per_request') or 0):.1f} µs")
            lines.append(f"CPU per request at c=50, shared store: {'; '.join(parts)}.")
    lines += ["", "| path | c=1 p50 [ms] | c=1 p99 [ms] | added p50 [ms] | added p99 [ms] "
                  "| c=1 streamed p50 [ms] | streamed p99 [ms] | added p50 [ms] | added p99 [ms] |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in results["paths"]:
        r = rows[t]
        is_gate = t.startswith("gate")
        cells = []
        for sc in ("c1", "c1-stream"):
            cells += [f_ms(r.get(f"{sc}_p50_ms")), f_ms(r.get(f"{sc}_p99_ms")),
                      f_ms(r.get(f"{sc}_added_p50_ms"), T_ADDED_P50_MS if is_gate else None, True) if t != "direct" else "",
                      f_ms(r.get(f"{sc}_added_p99_ms"), T_ADDED_P99_MS if is_gate else None, True) if t != "direct" else ""]
        lines.append(f"| {LABELS[t]} | " + " | ".join(cells) + " |")
    lines += ["", "| Gate target (issue 16) | measured | met |", "|---|---|---|"]
    for what, val, ok in results["targets"]:
        lines.append(f"| {what} | {val} | {'-' if ok is None else ('yes' if ok else 'NO')} |")
    if results.get("skipped"):
        lines.append("")
        for name, why in results["skipped"].items():
            lines.append(f"- {LABELS.get(name, name)}: not measured: {why}")
    return lines


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, paths = results["summary"], results["paths"]
    colors = {"direct": "#9e9e9e", "nginx-proxy": "#2ca02c", "hyper-floor": "#98df8a", "gate": "#1f77b4", "gate-policy": "#6baed6",
              "gate-noacct": "#c6dbef", "gate-shared-policy": "#08306b",
              "litellm": "#d62728", "portkey": "#ff7f0e"}
    so = results.get("soak")
    fig, axes = plt.subplots(1, 4 if so else 3, figsize=(20 if so else 16, 5))

    def grouped(ax, groups, key, title, ylabel, log=False, fmt="{:.2f}", skip=()):
        shown = [t for t in paths if t not in skip]
        width = 0.8 / max(len(shown), 1)
        for i, t in enumerate(shown):
            vals = [rows[t].get(key(g)) or 0 for g in groups]
            pos = [x + (i - (len(shown) - 1) / 2) * width for x in range(len(groups))]
            bars = ax.bar(pos, vals, width, label=LABELS[t], color=colors[t])
            for rect, v in zip(bars, vals):
                ax.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(groups)))
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.3)

    grouped(axes[0], ["c50", "c50-stream"], lambda g: f"{g}_rps", "requests/s at concurrency 50",
            "requests/s (log)", log=True, fmt="{:,.0f}")
    axes[0].set_xticklabels(["non-streamed", "streamed (20 events)"])
    grouped(axes[1], ["c1_added_p50", "c1_added_p99", "c1-stream_added_p50", "c1-stream_added_p99"],
            lambda g: f"{g}_ms", "added latency over direct, concurrency 1", "ms (log)", log=True, fmt="{:.3f}",
            skip=("direct",))
    axes[1].set_xticklabels(["p50", "p99", "stream p50", "stream p99"], fontsize=8)
    for y, label in ((T_ADDED_P50_MS, "0.1 ms"), (T_ADDED_P99_MS, "0.5 ms")):
        axes[1].axhline(y, color="#555", linestyle=":", linewidth=1)
        axes[1].annotate(f"target {label}", (1.0, y), xycoords=("axes fraction", "data"), fontsize=7, ha="right",
                         va="bottom", color="#555")
    proxies = [t for t in paths if rows[t].get("rss_max_mb") and t not in ("direct", "gate-policy")]
    b = axes[2].bar(range(len(proxies)), [rows[t]["rss_max_mb"] for t in proxies],
                    color=[colors[t] for t in proxies])
    for rect, t in zip(b, proxies):
        axes[2].annotate(f"{rows[t]['rss_max_mb']:.1f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                         ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    axes[2].set_xticks(range(len(proxies)))
    axes[2].set_xticklabels([LABELS[t] for t in proxies], rotation=20, ha="right", fontsize=8)
    axes[2].set_yscale("log")
    axes[2].axhline(T_RSS_MB, color="#555", linestyle=":", linewidth=1)
    axes[2].annotate("target 30 MB (Gate)", (1.0, T_RSS_MB), xycoords=("axes fraction", "data"), fontsize=7,
                     ha="right", va="bottom", color="#555")
    axes[2].set_title("max RSS under c=50 load (process tree)", fontsize=10)
    axes[2].set_ylabel("MB (log)")
    axes[2].margins(y=0.3)
    if so:
        series = so["rss_series_mb"]
        axes[3].plot([t / 60.0 for t, _ in series], [v for _, v in series], color=colors["gate"])
        axes[3].set_ylim(0, max(T_RSS_MB * 1.2, so["rss_max_mb"] * 1.2))
        axes[3].axhline(T_RSS_MB, color="#555", linestyle=":", linewidth=1)
        axes[3].set_title(f"Gate RSS during the {so['minutes']:g}-min soak (c=50)", fontsize=10)
        axes[3].set_xlabel("minutes")
        axes[3].set_ylabel("MB")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(paths), frameon=False)
    env = results["environment"]
    fig.suptitle(f"HTTP-layer limit (issue 16) — {env['date']}, {env['cpus']} CPUs, mode {results['mode']}, "
                 f"load avg {env['loadavg_start']}, stream framed {env.get('stream_framing', 'length')} "
                 "(bench/throughput.sh)", fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path)
    # A raster copy for viewers without SVG support (not committed: bench/out/ is ignored).
    fig.savefig(path.parent / "out" / (path.stem + ".png"), dpi=100)


# ---------------------------------------------------------------- main


def version_of(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 round of short runs, no soak (default)")
    mode.add_argument("--full", action="store_true", help="3 interleaved rounds and a 10-minute soak of Gate")
    ap.add_argument("--skip-peers", action="store_true", help="no LiteLLM, no Portkey")
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--skip-portkey", action="store_true")
    ap.add_argument("--skip-shared-store", action="store_true",
                    help="no embedded vs shared store (PostgreSQL + Redis) pair")
    ap.add_argument("--stream-framing", choices=STREAM_FRAMINGS, default="chunked",
                    help="how the origin frames its SSE stream: chunked (as providers do; default) or "
                         "length (a Content-Length, the framing of runs 1-14)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--soak-minutes", type=float, default=None)
    ap.add_argument("--gate-binary", type=Path, default=None, help="measure this gate instead of target/release/gate")
    ap.add_argument("--gate-extra-config", type=Path, default=None,
                    help="TOML appended to Gate's config (e.g. the usage log's settings)")
    ap.add_argument("--perf", action="store_true",
                    help="after the rounds, profile Gate with perf under c=50 (reports in bench/out/)")
    ap.add_argument("--litellm-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--chart-only", type=Path, default=None, help="redraw the chart from a results JSON and exit")
    ap.add_argument("--peer-notes", default="", help="install problems reported by throughput.sh")
    args = ap.parse_args()
    root = args.root
    if args.chart_only:
        chart(json.loads(args.chart_only.read_text()), root / "bench/throughput.svg")
        return 0

    full = args.full
    mode_name = "full" if full else "quick"
    rounds = args.rounds or (3 if full else 1)
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (10.0 if full else 0.0)
    dur_c50, dur_c1, warm = (15.0, 10.0, 3.0) if full else (5.0, 4.0, 1.0)
    gate_binary = args.gate_binary or root / "target/release/gate"

    out_dir = root / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gate-throughput-"))
    atexit.register(stop_all)

    def on_signal(signum, _frame):
        print(f"bench: signal {signum}, stopping", file=sys.stderr, flush=True)
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def litellm_version():
        try:
            from importlib.metadata import version

            return version("litellm")
        except Exception:  # noqa: BLE001
            return None

    portkey_pkg = root / "bench/node_modules/@portkey-ai/gateway/package.json"
    results: dict = {
        "mode": mode_name,
        "rounds": rounds,
        "durations_s": {"c50": dur_c50, "c1": dur_c1, "warmup": warm},
        "environment": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                               if l.startswith("model name")), "?"),
            "kernel": platform.release(),
            "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
            "nginx": version_of([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
            "wrk": (version_of(["wrk", "-v"]) or "").split(" Copyright")[0] or None,
            "node": version_of(["node", "--version"]),
            "litellm": litellm_version(),
            "litellm_workers": args.litellm_workers,
            "portkey_gateway": json.loads(portkey_pkg.read_text())["version"] if portkey_pkg.exists() else None,
            "rustc": version_of(["rustc", "--version"]),
            "gate_binary": str(gate_binary),
            "workdir": str(work),
            "pinning": "none: every process unpinned, in the shell's session (one autogroup)",
            "stream_framing": args.stream_framing,
        },
        "scenarios": {},
        "skipped": {},
    }
    if args.peer_notes:
        for note in args.peer_notes.split(";"):
            if "=" in note:
                k, v = note.split("=", 1)
                results["skipped"][k] = v

    print(f"== work dir {work}", file=sys.stderr)
    origin_proc, origin_port = start_origin(work, args.stream_framing)
    direct = Target("direct", origin_proc, f"http://127.0.0.1:{origin_port}", {"authorization": f"Bearer {UPSTREAM_KEY}"},
                    stream_path="/stream/v1/chat/completions")
    proxy_proc, proxy_port = start_nginx_proxy(work, origin_port)
    nginx_proxy = Target("nginx-proxy", proxy_proc, f"http://127.0.0.1:{proxy_port}",
                         {"authorization": f"Bearer {UPSTREAM_KEY}"}, stream_path="/stream/v1/chat/completions")
    extra = args.gate_extra_config.read_text() if args.gate_extra_config else ""
    gate, gate_policy, policy = start_gate(root, work, origin_port, gate_binary, extra)
    results["gate_policy"] = policy
    # The same Gate with its usage log off, for issue 14's accounting on/off pair (its second
    # key, with a budget, is not measured).
    gate_noacct, _, _ = start_gate(root, work, origin_port, gate_binary, extra, name="gate-noacct",
                                   accounting=False)
    targets = [direct, nginx_proxy]
    try:
        targets.append(start_hyper_floor(root, work, origin_port))
    except (RuntimeError, OSError) as e:
        results["skipped"]["hyper-floor"] = str(e)
    targets += [gate, gate_policy, gate_noacct]
    if args.skip_shared_store:
        results["skipped"]["gate-shared-policy"] = "--skip-shared-store"
    elif not shutil.which("redis-server"):
        results["skipped"]["gate-shared-policy"] = "redis-server is not installed (apt-get install redis-server)"
    elif pg_bin_dir() is None:
        results["skipped"]["gate-shared-policy"] = ("PostgreSQL's server programs are not installed "
                                                    "(no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)")
    else:
        redis_proc, redis_port = start_redis(work)
        pg_url, pg_proc = start_postgres(work)
        # Keys, usage log and spend in PostgreSQL, rate limits and budget holds in Redis.
        shared_extra = (f'{extra}\n[store]\nurl = "{pg_url}"\n'
                        f'redis_url = "redis://127.0.0.1:{redis_port}"\n')
        _, gate_shared, _ = start_gate(root, work, origin_port, gate_binary, shared_extra, name="gate-shared")
        gate_shared.servers = {"postgresql": pg_proc, "redis": redis_proc}
        targets.append(gate_shared)
    for t in targets:
        wait_ready(t, 30)
        check_answers(t)
    framing = stream_framing_of(direct)
    if framing != args.stream_framing:
        raise SystemExit(f"the origin frames its stream as {framing!r}, not {args.stream_framing!r} "
                         "(nginx without http_sub_module? `nginx -V` lists it)")
    results["stream_framing_by_path"] = {t.name: stream_framing_of(t) for t in targets}
    results["gate_idle_rss_mb"] = rss_mb(gate.proc.pid)

    peers = []
    if not args.skip_peers and not args.skip_litellm and "litellm" not in results["skipped"]:
        peers.append(("litellm", lambda: start_litellm(root, work, origin_port, args.litellm_workers), 240))
    if not args.skip_peers and not args.skip_portkey and "portkey" not in results["skipped"]:
        peers.append(("portkey", lambda: start_portkey(root, work, origin_port), 60))
    for name, starter, deadline in peers:
        print(f"== starting {LABELS[name]}", file=sys.stderr)
        t = None
        try:
            t = starter()
            wait_ready(t, deadline)
            check_answers(t)
            targets.append(t)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            log = work / f"{name}.log"
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            results["skipped"][name] = f"{e}" + (f" — log tail: {tail!r}" if tail else "")
            print(f"   {name} not measured: {e}", file=sys.stderr)
            if t is not None and t.proc is not None:
                stop(t.proc)
    if args.skip_peers:
        results["skipped"].setdefault("litellm", "--skip-peers")
        results["skipped"].setdefault("portkey", "--skip-peers")
    results["paths"] = [t.name for t in targets]

    print("== warm-up", file=sys.stderr)
    for t in targets:
        for stream in (False, True):
            wrk(work, t, stream, 50, warm)

    per: dict = {sc: {t.name: [] for t in targets} for sc, _, _ in SCENARIOS}
    rounds_host0 = cpu_times()
    for rnd in range(rounds):
        for sc, conc, stream in SCENARIOS:
            for t in targets:
                duration = dur_c50 if conc > 1 else dur_c1
                r = measure(work, t, stream, conc, duration, sample_rss=conc > 1 and t.name != "direct")
                per[sc][t.name].append(r)
                print(f"== r{rnd + 1} {sc:<10} {t.name:<12} {r['rps']:>9,.0f} req/s  p50 {r['latency_ms']['p50']:.3f} ms"
                      f"  p99 {r['latency_ms']['p99']:.3f} ms  errors {r['errors_total']}"
                      + (f"  rss {r['rss_max_mb']:.1f} MB" if "rss_max_mb" in r else "")
                      + f"  steal {r['host_steal_pct']:.1f}%", file=sys.stderr)
    for sc in per:
        results["scenarios"][sc] = {t: median_of(rs) for t, rs in per[sc].items() if rs}
    steals = [r["host_steal_pct"] for sc in per for rs in per[sc].values() for r in rs]
    results["environment"]["host_steal_pct"] = {
        "rounds": steal_pct(rounds_host0, cpu_times()),
        "max_of_one_measurement": max(steals, default=0.0),
    }
    # Every in-flight request failing at once is what a paused host looks like (the VM frozen
    # for a snapshot: the guest's clock jumps on resume, wrk fails the requests in flight, and
    # steal does not count it); a stall or a fault of the path under test looks the same.
    # Either way the run is not of record until it is explained.
    results["environment"]["stalled_measurements"] = [
        f"r{i + 1} {sc} {name} ("
        + ", ".join(f"{kind} errors: {n}" for kind, n in r["errors"].items() if n) + ")"
        for sc in per for name, rs in per[sc].items() if name not in PEERS
        for i, r in enumerate(rs) if r["errors_total"] > 0
    ]

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.perf:
        print("== perf record of Gate at c=50 (plain, streamed)", file=sys.stderr)
        results["perf"] = profile_gate(work, out_dir, gate, dur_c50, stamp)

    # Peers are not needed for the soak: stop them so that they do not compete for the CPU.
    for t in targets:
        if t.name in ("litellm", "portkey", "gate-noacct"):
            stop(t.proc)
    if soak_minutes > 0:
        # With accounting on: the key with a budget and a rate limit, the usage log writing.
        print(f"== soak: Gate (key with budget + rpm) under 25 plain + 25 streaming connections for "
              f"{soak_minutes:g} min", file=sys.stderr)
        results["soak"] = soak(work, gate_policy, soak_minutes)

    results["environment"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    results["summary"] = summarize(results)
    results["targets"] = targets_met(results)
    stop_all()

    for p in (out_dir / f"throughput-{mode_name}-{stamp}.json", out_dir / "throughput-latest.json"):
        p.write_text(json.dumps(results, indent=1))
    chart(results, root / "bench/throughput.svg")

    env = results["environment"]
    print()
    print(f"HTTP-layer limit (issue 16), {env['date']}, mode {mode_name} ({rounds} round(s), medians), "
          f"{env['cpus']} CPUs ({env['cpu_model']}), load average {env['loadavg_start']} -> {env['loadavg_end']}, "
          f"hypervisor steal {env['host_steal_pct']['rounds']:.1f}% over the rounds; "
          f"{env['nginx']}, {env['wrk']}, LiteLLM {env['litellm']} ({env['litellm_workers']} workers), "
          f"Portkey gateway {env['portkey_gateway']} on node {env['node']}; "
          f"the origin's stream framed {env.get('stream_framing', 'length')}")
    print()
    for line in tables(results):
        print(line)
    if results.get("soak"):
        so = results["soak"]
        print()
        print(f"Soak: {so['minutes']:g} min, RSS every {so['sample_period_s']:g} s: minute 2 mean "
              f"{so['minute2_mean_mb'] or 0:.1f} MB, last minute mean {so['last_minute_mean_mb'] or 0:.1f} MB, "
              f"max {so['rss_max_mb']:.1f} MB: {'flat' if so['flat'] else 'NOT flat'}; load: "
              + ", ".join(f"{kind} {l.get('requests', 0) / max(l.get('duration_us', 1) / 1e6, 1e-9):,.0f} req/s "
                          f"({sum(l.get('errors', {}).values())} errors of {l.get('requests', 0):,})"
                          for kind, l in zip(("plain", "streamed"), so["loads"])))
    for kind, pr in (results.get("perf") or {}).items():
        print()
        if "error" in pr:
            print(f"perf ({kind}): {pr['error']}")
            continue
        print(f"Where Gate's CPU goes at c=50, {kind} (perf, {pr['report']}):")
        print("```")
        print("\n".join(pr["by_dso"]))
        print("...")
        print("\n".join(pr["top_symbols"]))
        print("```")
    print()
    print(f"JSON: bench/out/throughput-{mode_name}-{stamp}.json; chart: bench/throughput.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
