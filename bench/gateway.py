"""Gateway overhead benchmark driver (run it through bench/gateway.sh, which builds and installs).

It owns: starting the mock upstream, Gate and the LiteLLM proxy on free loopback ports; running
the load generator (daemon/examples/loadgen.rs, a separate process) against each target for each
scenario, back to back in the same run; sampling VmRSS and CPU time from /proc; the soak; the JSON
report in bench/out/, the printed table and the chart bench/gateway.svg. It must not leave a
process behind (every child is stopped on exit, also on Ctrl-C) nor bind anything but 127.0.0.1,
and every step is bounded in time. It measures; it asserts nothing (targets are reported as
met / missed).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench-upstream-0123456789"
LITELLM_MASTER_KEY = "sk-bench-litellm-master-0123456789"
PROMPT = "Say hello to the benchmark"

CHILDREN: list[subprocess.Popen] = []


# ---------------------------------------------------------------- processes and /proc


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict | None = None, stdout=None) -> subprocess.Popen:
    log_file = open(log, "ab")
    proc = subprocess.Popen(
        cmd,
        stdout=stdout if stdout is not None else log_file,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        env=env,
        # A process group of its own (so `stop` can signal LiteLLM's workers with it), but the
        # same session as the load generator: with the kernel's autogroup scheduling
        # (/proc/sys/kernel/sched_autogroup_enabled = 1, Debian's default) every session is
        # one scheduling group with an equal share of the CPU, so a target in a session of its
        # own was held to a third of the 2 cores whenever mock, proxy and load generator were
        # all busy, and a proxy that needs more than a third measured slower than it is. In one
        # session the kernel shares the CPU per thread, as in a benchmark run from one shell.
        process_group=0,
    )
    CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Stops a child we started, and its process group (LiteLLM's workers)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def stop_all() -> None:
    for proc in reversed(CHILDREN):
        try:
            stop(proc)
        except Exception as e:  # noqa: BLE001 - best effort at exit
            print(f"bench: could not stop pid {proc.pid}: {e}", file=sys.stderr)


def on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int, tree: bool = False) -> float:
    pids = descendants(pid) if tree else [pid]
    return sum(status_kb(p, "VmRSS") for p in pids) / 1024.0


def pss_mb(pid: int, tree: bool = False) -> float:
    pids = descendants(pid) if tree else [pid]
    return sum(pss_kb(p) for p in pids) / 1024.0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int, tree: bool = False) -> float:
    total = 0
    for p in descendants(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class RssSampler:
    """Samples the RSS of a process (tree) every `period` seconds in a thread."""

    def __init__(self, pid: int, tree: bool, period: float):
        self.pid, self.tree, self.period = pid, tree, period
        self.samples: list[tuple[float, float]] = []
        self.pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - t0, rss_mb(self.pid, self.tree)))
            if self.tree:
                self.pids.update(descendants(self.pid))
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def max(self) -> float:
        return max((s for _, s in self.samples), default=0.0)


def wait_http(url: str, headers: dict, deadline_s: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: {what} exited with {proc.returncode} before it was ready")
        try:
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
            last = e
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.1)
    raise SystemExit(f"bench: {what} not ready at {url} after {deadline_s}s ({last})")


# ---------------------------------------------------------------- targets


class Target:
    def __init__(self, name, url, auth, proc, tree=False):
        self.name, self.url, self.auth, self.proc, self.tree = name, url, auth, proc, tree


def start_mock(root: Path, work: Path) -> Target:
    binary = root / "target/release/examples/mock_upstream"
    port = free_port()
    proc = start(
        [str(binary), "--port", str(port), "--expect-key", UPSTREAM_KEY, "--models", MODEL, "--record-limit", "0"],
        work / "mock.log",
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/v1/models", {"authorization": f"Bearer {UPSTREAM_KEY}"}, 30, "mock_upstream", proc)
    return Target("mock", base + "/v1/chat/completions", f"Bearer {UPSTREAM_KEY}", proc)


def start_gate(root: Path, work: Path, mock_port: int, binary: Path | None = None) -> Target:
    binary = binary or root / "target/release/gate"
    state = work / "gate-state"
    state.mkdir()
    port = free_port()
    config = work / "gate.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {port}\n\n'
        f"[upstreams.mock]\n"
        f'provider = "custom"\n'
        f'base_url = "http://127.0.0.1:{mock_port}/v1"\n'
        f'api_key = "{UPSTREAM_KEY}"\n'
        f'models = ["{MODEL}"]\n'
    )
    key = subprocess.run(
        [str(binary), "token", "create", "--name", "bench", "--state-dir", str(state)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    proc = start([str(binary), "serve", "--config", str(config), "--state-dir", str(state)], work / "gate.log")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health", {}, 30, "gate", proc)
    return Target("gate", base + "/v1/chat/completions", f"Bearer {key}", proc)


def start_litellm(root: Path, work: Path, mock_port: int, workers: int) -> Target:
    port = free_port()
    config = work / "litellm.yaml"
    # LiteLLM's "Best practices for production" page: a master key, set_verbose off, JSON logs,
    # workers matched to the CPU count. No database, no callbacks (nothing to write to).
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n"
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
    venv_bin = root / "bench/.venv/bin"
    cmd = [str(venv_bin / "litellm"), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", str(workers)]
    if workers > 1:
        # uvicorn's supervisor restarts a worker that misses a 5 s health ping; a CPU-bound worker on
        # a loaded 2-core machine misses it under load and is killed and re-imported in a loop (seen
        # in the first runs). LiteLLM exposes this knob for exactly that; 60 s keeps workers alive.
        cmd += ["--timeout_worker_healthcheck", "60"]
    proc = start(cmd, work / "litellm.log", env=env)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/health/liveliness", {}, 180, "litellm", proc)
    return Target("litellm", base + "/v1/chat/completions", f"Bearer {LITELLM_MASTER_KEY}", proc, tree=True)


# ---------------------------------------------------------------- load


def body(stream: bool) -> str:
    b = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        b["stream"] = True
    return json.dumps(b)


def run_load(root: Path, target: Target, concurrency: int, stream: bool, duration: float, requests: int,
             warmup: int, label: str, threads: int, others: list[Target]) -> dict:
    cmd = [
        str(root / "target/release/examples/loadgen"),
        "--url", target.url,
        "--body", body(stream),
        "--header", f"authorization: {target.auth}",
        "--concurrency", str(concurrency),
        "--requests", str(requests),
        "--duration", str(duration),
        "--warmup", str(warmup),
        "--threads", str(threads),
        "--timeout", "60",
        "--label", label,
    ]
    if stream:
        cmd.append("--stream")
    watched = [target] + [o for o in others if o is not target]
    cpu_before = {t.name: cpu_s(t.proc.pid, t.tree) for t in watched}
    with RssSampler(target.proc.pid, target.tree, 0.2) as sampler:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 600)
    cpu_after = {t.name: cpu_s(t.proc.pid, t.tree) for t in watched}
    if out.returncode != 0:
        raise SystemExit(f"bench: loadgen failed for {label}: {out.stderr.strip()}")
    report = json.loads(out.stdout)
    # The CPU deltas include the warm-up, so they are per-request figures over all requests sent.
    sent = report["requests"] + warmup * concurrency
    report["cpu_ms_per_request"] = {
        name: (cpu_after[name] - cpu_before[name]) * 1000.0 / max(sent, 1) for name in cpu_before
    }
    report["rss_max_mb"] = sampler.max
    if target.tree:
        report["processes_seen"] = len(sampler.pids)
    report["target"] = target.name
    return report


SCENARIOS = [
    ("c1", 1, False),
    ("c1-stream", 1, True),
    ("c50", 50, False),
    ("c50-stream", 50, True),
]


def median_report(reports: list[dict]) -> dict:
    """Per-metric median over rounds."""
    if len(reports) == 1:
        return reports[0]
    out = dict(reports[-1])
    for key in ("throughput_rps", "rss_max_mb", "client_cpu_ms_per_request"):
        out[key] = statistics.median(r[key] for r in reports)
    for section in ("latency_ms", "ttfb_ms"):
        if reports[0].get(section):
            out[section] = {k: statistics.median(r[section][k] for r in reports) for k in reports[0][section]}
    out["cpu_ms_per_request"] = {
        k: statistics.median(r["cpu_ms_per_request"][k] for r in reports) for k in reports[0]["cpu_ms_per_request"]
    }
    out["errors"] = sum(r["errors"] for r in reports)
    out["requests"] = sum(r["requests"] for r in reports)
    out["rounds"] = reports
    return out


def soak(root: Path, gate: Target, others: list[Target], minutes: float, period: float) -> dict:
    """Gate under mixed load (25 plain + 25 streaming connections) for `minutes`, RSS sampled."""
    duration = minutes * 60.0
    procs = []
    for stream in (False, True):
        cmd = [
            str(root / "target/release/examples/loadgen"),
            "--url", gate.url, "--body", body(stream), "--header", f"authorization: {gate.auth}",
            "--concurrency", "25", "--requests", "1000000000", "--duration", str(duration),
            "--warmup", "5", "--threads", "1", "--timeout", "60", "--label", f"soak-{'stream' if stream else 'plain'}",
        ] + (["--stream"] if stream else [])
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      process_group=0))
        CHILDREN.append(procs[-1])
    with RssSampler(gate.proc.pid, False, period) as sampler:
        reports = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=duration + 600)
            if p.returncode != 0:
                raise SystemExit(f"bench: soak loadgen failed: {stderr.strip()}")
            reports.append(json.loads(stdout))
    series = sampler.samples
    values = [v for _, v in series]
    half = values[len(values) // 2 :] or values
    # Least-squares slope over the second half, in MB per minute: ~0 when flat.
    ts = [t for t, _ in series[len(values) // 2 :]] or [0.0]
    slope = 0.0
    if len(half) >= 2:
        mt, mv = statistics.mean(ts), statistics.mean(half)
        den = sum((t - mt) ** 2 for t in ts)
        slope = sum((t - mt) * (v - mv) for t, v in zip(ts, half)) / den * 60.0 if den else 0.0
    return {
        "minutes": minutes,
        "sample_period_s": period,
        "rss_series_mb": series,
        "rss_first_mb": values[0] if values else 0.0,
        "rss_last_mb": values[-1] if values else 0.0,
        "rss_max_mb": max(values, default=0.0),
        "rss_min_second_half_mb": min(half, default=0.0),
        "rss_max_second_half_mb": max(half, default=0.0),
        "rss_slope_second_half_mb_per_min": slope,
        "loads": reports,
    }


# ---------------------------------------------------------------- report


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}{unit}"
        if abs(v) >= 10:
            return f"{v:.1f}{unit}"
        return f"{v:.3f}{unit}"
    return f"{v}{unit}"


def ratio(a, b):
    return a / b if a is not None and b else None


def build_table(results: dict) -> list[str]:
    rows = ["| scenario | metric | mock (direct) | Gate | LiteLLM | Gate − mock | Gate / mock | Gate / LiteLLM |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, _, stream in SCENARIOS:
        per = results["scenarios"].get(name, {})
        m, g, l = per.get("mock"), per.get("gate"), per.get("litellm")

        def get(r, section, key):
            return r[section][key] if r and r.get(section) else None

        metrics = [("latency p50 [ms]", "latency_ms", "p50"), ("latency p99 [ms]", "latency_ms", "p99")]
        if stream:
            metrics += [("first event p50 [ms]", "ttfb_ms", "p50"), ("first event p99 [ms]", "ttfb_ms", "p99")]
        for label, section, key in metrics:
            mv, gv, lv = get(m, section, key), get(g, section, key), get(l, section, key)
            rows.append(f"| {name} | {label} | {fmt(mv)} | {fmt(gv)} | {fmt(lv)} | "
                        f"{fmt(gv - mv if gv is not None and mv is not None else None)} | "
                        f"{fmt(ratio(gv, mv), '×')} | {fmt(ratio(gv, lv), '×')} |")
        tp = [r["throughput_rps"] if r else None for r in (m, g, l)]
        rows.append(f"| {name} | throughput [req/s] | {fmt(tp[0])} | {fmt(tp[1])} | {fmt(tp[2])} | | "
                    f"{fmt(ratio(tp[1], tp[0]), '×')} | {fmt(ratio(tp[1], tp[2]), '×')} |")
        cpu = [r["cpu_ms_per_request"].get(r["target"]) if r else None for r in (m, g, l)]
        rows.append(f"| {name} | CPU per request, proxy [ms] | - | {fmt(cpu[1])} | {fmt(cpu[2])} | | | "
                    f"{fmt(ratio(cpu[1], cpu[2]), '×')} |")
        mcpu = [r["cpu_ms_per_request"].get("mock") if r else None for r in (m, g, l)]
        rows.append(f"| {name} | CPU per request, mock [ms] | {fmt(mcpu[0])} | {fmt(mcpu[1])} | {fmt(mcpu[2])} | | | |")
        ccpu = [r.get("client_cpu_ms_per_request") if r else None for r in (m, g, l)]
        rows.append(f"| {name} | CPU per request, load generator [ms] | {fmt(ccpu[0])} | {fmt(ccpu[1])} | {fmt(ccpu[2])} | | | |")
        errs = [r["errors"] if r else None for r in (m, g, l)]
        rows.append(f"| {name} | errors / requests | "
                    + " | ".join(f"{e}/{r['requests']}" if r else "-" for e, r in zip(errs, (m, g, l)))
                    + " | | | |")
    return rows


def check_targets(results: dict) -> list[tuple[str, str, bool]]:
    s = results["scenarios"]
    out = []

    def lat(sc, t, sec, k):
        r = s.get(sc, {}).get(t)
        return r[sec][k] if r and r.get(sec) else None

    def add(what, value, ok):
        out.append((what, value, ok))

    for sc in ("c1", "c1-stream"):
        d50 = lat(sc, "gate", "latency_ms", "p50") - lat(sc, "mock", "latency_ms", "p50")
        d99 = lat(sc, "gate", "latency_ms", "p99") - lat(sc, "mock", "latency_ms", "p99")
        what = "whole stream" if "stream" in sc else "request to last byte"
        add(f"added latency p50 at c=1 ({sc}, {what}) <= 0.1 ms", f"{d50:.3f} ms", d50 <= 0.1)
        add(f"added latency p99 at c=1 ({sc}, {what}) <= 0.5 ms", f"{d99:.3f} ms", d99 <= 0.5)
    t = lat("c1-stream", "gate", "ttfb_ms", "p50") - lat("c1-stream", "mock", "ttfb_ms", "p50")
    add("added time to first event p50 at c=1 <= 0.2 ms", f"{t:.3f} ms", t <= 0.2)
    t99 = lat("c1-stream", "gate", "ttfb_ms", "p99") - lat("c1-stream", "mock", "ttfb_ms", "p99")
    add("added time to first event p99 at c=1 (no target; for reference)", f"{t99:.3f} ms", True)
    for sc in ("c50", "c50-stream"):
        g = s[sc]["gate"]["throughput_rps"]
        m = s[sc]["mock"]["throughput_rps"]
        add(f"throughput at c=50 ({sc}) >= 40% of direct", f"{100 * g / m:.0f}%", g >= 0.4 * m)
        if s[sc].get("litellm"):
            l_ = s[sc]["litellm"]["throughput_rps"]
            add(f"throughput at c=50 ({sc}) >= 50x LiteLLM", f"{g / l_:.1f}x", g >= 50 * l_)
    rss = results["rss"]
    add("Gate RSS idle <= 30 MB", f"{rss['gate_idle_start_mb']:.1f} MB", rss["gate_idle_start_mb"] <= 30)
    add("Gate RSS under load (c=50) <= 80 MB", f"{rss['gate_load_max_mb']:.1f} MB", rss["gate_load_max_mb"] <= 80)
    if results.get("soak"):
        so = results["soak"]
        flat = so["rss_max_second_half_mb"] - so["rss_min_second_half_mb"] <= 2.0 and so["rss_max_mb"] <= 80
        add(f"Gate RSS flat over a {so['minutes']:g}-minute soak (2nd half spread <= 2 MB, max <= 80 MB)",
            f"{so['rss_first_mb']:.1f} → {so['rss_last_mb']:.1f} MB (max {so['rss_max_mb']:.1f}, "
            f"2nd-half slope {so['rss_slope_second_half_mb_per_min']:+.3f} MB/min)", flat)
    return out


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["scenarios"]
    targets = [t for t in ("mock", "gate", "litellm") if any(t in s[sc] for sc, _, _ in SCENARIOS)]
    names = {"mock": "mock (direct)", "gate": "Gate", "litellm": "LiteLLM"}
    colors = {"mock": "#9e9e9e", "gate": "#1f77b4", "litellm": "#d62728"}
    soak_data = results.get("soak")
    fig, axes = plt.subplots(1, 5 if soak_data else 4, figsize=(21 if soak_data else 17, 4.8))
    width = 0.8 / max(len(targets), 1)

    def bars(ax, scenarios, value, title, ylabel, log=False, annotate="{:.2f}"):
        xs = range(len(scenarios))
        for i, t in enumerate(targets):
            vals = [value(s[sc].get(t)) if s[sc].get(t) else 0 for sc in scenarios]
            pos = [x + (i - (len(targets) - 1) / 2) * width for x in xs]
            b = ax.bar(pos, vals, width, label=names[t], color=colors[t])
            for rect, v in zip(b, vals):
                ax.annotate(annotate.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                            textcoords="offset points")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(scenarios)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)

    c1 = ["c1", "c1-stream"]
    c50 = ["c50", "c50-stream"]
    # Concurrency 1: whole response (plain and stream) and, for the stream, the first event.
    groups = [("c1", "latency_ms"), ("c1-stream", "latency_ms"), ("c1-stream", "ttfb_ms")]
    group_names = ["plain", "stream\n(whole)", "stream\n(first event)"]

    def c1_bars(ax, key, title):
        xs = range(len(groups))
        for i, t in enumerate(targets):
            vals = [s[sc][t][sec][key] if s[sc].get(t) else 0 for sc, sec in groups]
            pos = [x + (i - (len(targets) - 1) / 2) * width for x in xs]
            b = ax.bar(pos, vals, width, label=names[t], color=colors[t])
            for rect, v in zip(b, vals):
                ax.annotate(f"{v:.2f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(group_names, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("ms (log)")
        ax.set_yscale("log")
        ax.margins(y=0.25)

    c1_bars(axes[0], "p50", "latency p50, concurrency 1")
    c1_bars(axes[1], "p99", "latency p99, concurrency 1")
    bars(axes[2], c50, lambda r: r["throughput_rps"], "throughput, concurrency 50", "requests/s (log)", log=True,
         annotate="{:,.0f}")
    # RSS: Gate idle / under load / end of soak; LiteLLM idle / under load (all its processes).
    rss = results["rss"]
    labels, vals, cols = [], [], []
    for label, key, color in (
        ("Gate idle", "gate_idle_start_mb", colors["gate"]),
        ("Gate load", "gate_load_max_mb", colors["gate"]),
        ("Gate soak max", "gate_soak_max_mb", colors["gate"]),
        ("LiteLLM idle", "litellm_idle_mb", colors["litellm"]),
        ("LiteLLM load", "litellm_load_max_mb", colors["litellm"]),
    ):
        if rss.get(key):
            labels.append(label)
            vals.append(rss[key])
            cols.append(color)
    b = axes[3].bar(range(len(vals)), vals, color=cols)
    for rect, v in zip(b, vals):
        axes[3].annotate(f"{v:.1f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                         va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    axes[3].set_xticks(range(len(vals)))
    axes[3].set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    axes[3].set_title("resident memory (VmRSS)", fontsize=10)
    axes[3].set_ylabel("MB")
    axes[3].set_yscale("log")
    axes[3].margins(y=0.25)
    handles, labels_ = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels_, fontsize=8, loc="upper left", ncol=len(targets))
    if soak_data:
        series = soak_data["rss_series_mb"]
        axes[4].plot([t / 60.0 for t, _ in series], [v for _, v in series], color=colors["gate"])
        axes[4].set_ylim(0, max(80.0, soak_data["rss_max_mb"] * 1.1))
        axes[4].axhline(80, color="#d62728", linestyle=":", linewidth=1)
        axes[4].annotate("80 MB target", (0, 80), xytext=(2, -10), textcoords="offset points", fontsize=7)
        axes[4].set_title(f"Gate VmRSS during the {soak_data['minutes']:g}-min soak (c=50)", fontsize=10)
        axes[4].set_xlabel("minutes")
        axes[4].set_ylabel("MB")
    env = results["environment"]
    fig.suptitle(
        f"Gate vs. direct-to-mock vs. LiteLLM — {env['date']}, {env['cpus']} CPUs, mode {results['mode']}, "
        f"load avg {env['loadavg_start']} (bench/gateway.sh)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    # A raster copy for viewers without SVG support (not committed: bench/out/ is ignored).
    fig.savefig(path.parent / "out" / (path.stem + ".png"), dpi=110)


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    ap.add_argument("--soak-minutes", type=float, default=None)
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--chart-only", type=Path, default=None, help="redraw the chart from a results JSON and exit")
    ap.add_argument("--gate-binary", type=Path, default=None, help="measure this gate binary instead of target/release/gate")
    ap.add_argument("--litellm-workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    root = args.root
    if args.chart_only:
        chart(json.loads(args.chart_only.read_text()), root / "bench/gateway.svg")
        return 0
    full = args.full
    mode_name = "full" if full else "quick"
    soak_minutes = args.soak_minutes if args.soak_minutes is not None else (10.0 if full else 0.0)
    rounds = 3 if full else 1
    dur_c1, dur_c50 = (10.0, 15.0) if full else (4.0, 6.0)

    out_dir = root / "bench/out"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def litellm_version():
        try:
            from importlib.metadata import version

            return version("litellm")
        except Exception:  # noqa: BLE001
            return None

    results: dict = {
        "mode": mode_name,
        "environment": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(),
            "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
            "kernel": platform.release(),
            "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3]),
            "litellm": litellm_version(),
            "litellm_workers": None if args.skip_litellm else args.litellm_workers,
            "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
            "workdir": str(work),
            "gate_binary": str(args.gate_binary or root / "target/release/gate"),
        },
        "scenarios": {},
        "rss": {},
    }

    print(f"== work dir {work}", file=sys.stderr)
    mock = start_mock(root, work)
    mock_port = int(mock.url.split(":")[2].split("/")[0])
    gate = start_gate(root, work, mock_port, args.gate_binary)
    time.sleep(1.0)
    results["rss"]["gate_idle_start_mb"] = rss_mb(gate.proc.pid)
    results["rss"]["mock_idle_mb"] = rss_mb(mock.proc.pid)
    targets = [mock, gate]
    litellm = None
    if not args.skip_litellm:
        print("== starting LiteLLM (this takes a while)", file=sys.stderr)
        litellm = start_litellm(root, work, mock_port, args.litellm_workers)
        time.sleep(2.0)
        results["rss"]["litellm_idle_mb"] = rss_mb(litellm.proc.pid, tree=True)
        results["rss"]["litellm_idle_pss_mb"] = pss_mb(litellm.proc.pid, tree=True)
        targets.append(litellm)

    per_round: dict = {name: {t.name: [] for t in targets} for name, _, _ in SCENARIOS}
    for rnd in range(rounds):
        for name, conc, stream in SCENARIOS:
            for t in targets:
                slow = t.name == "litellm"
                duration = dur_c1 if conc == 1 else dur_c50
                requests = 1_000_000
                warmup = (2 if slow else 20) if conc > 1 else (10 if slow else 200)
                threads = 1 if conc == 1 else 2
                label = f"{t.name}-{name}-r{rnd + 1}"
                print(f"== {label}", file=sys.stderr)
                r = run_load(root, t, conc, stream, duration, requests, warmup, label, threads, targets)
                print(f"   {r['throughput_rps']:.0f} req/s, p50 {r['latency_ms']['p50']:.3f} ms, "
                      f"p99 {r['latency_ms']['p99']:.3f} ms, errors {r['errors']}"
                      + (f" ({r['first_error']})" if r["errors"] else "")
                      + (f", processes seen {r['processes_seen']}" if "processes_seen" in r else ""), file=sys.stderr)
                per_round[name][t.name].append(r)
    for name in per_round:
        results["scenarios"][name] = {t: median_report(rs) for t, rs in per_round[name].items() if rs}

    results["rss"]["gate_load_max_mb"] = max(results["scenarios"][sc]["gate"]["rss_max_mb"] for sc in ("c50", "c50-stream"))
    if litellm:
        results["rss"]["litellm_load_max_mb"] = max(
            results["scenarios"][sc]["litellm"]["rss_max_mb"] for sc in ("c50", "c50-stream"))
        results["rss"]["litellm_after_load_pss_mb"] = pss_mb(litellm.proc.pid, tree=True)
        # LiteLLM is not needed for the soak: stop it so it does not compete for the CPU.
        stop(litellm.proc)
    time.sleep(3.0)
    results["rss"]["gate_idle_after_load_mb"] = rss_mb(gate.proc.pid)

    if soak_minutes > 0:
        print(f"== soak: Gate under 25 plain + 25 streaming connections for {soak_minutes:g} min", file=sys.stderr)
        results["soak"] = soak(root, gate, targets, soak_minutes, 5.0)
        results["rss"]["gate_soak_max_mb"] = results["soak"]["rss_max_mb"]
        time.sleep(3.0)
        results["rss"]["gate_idle_after_soak_mb"] = rss_mb(gate.proc.pid)

    results["environment"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    results["targets"] = [{"target": w, "measured": v, "met": ok} for w, v, ok in check_targets(results)]
    stop_all()

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for p in (out_dir / f"gateway-{mode_name}-{stamp}.json", out_dir / "gateway-latest.json"):
        p.write_text(json.dumps(results, indent=1))
    chart(results, root / "bench/gateway.svg")

    env = results["environment"]
    print()
    print(f"Gateway overhead, {env['date']}, mode {mode_name}, {env['cpus']} CPUs ({env['cpu_model']}), "
          f"load average {env['loadavg_start']} -> {env['loadavg_end']}, LiteLLM {env['litellm']} "
          f"with {env['litellm_workers']} workers")
    print()
    for row in build_table(results):
        print(row)
    print()
    r = results["rss"]
    print("| memory | MB |")
    print("|---|---:|")
    for k, v in r.items():
        print(f"| {k} | {v:.1f} |")
    print()
    print("| target | measured | met |")
    print("|---|---|---|")
    for t in results["targets"]:
        print(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    print()
    print(f"JSON: bench/out/gateway-{mode_name}-{stamp}.json; chart: bench/gateway.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
