"""Per-request cost of Gate that does not depend on how busy the machine is (issue 16).

Run it through bench/perreq.sh. It starts the throughput bench's nginx origin and Gate (the same
config and keys as bench/throughput.py), then, for each scenario (c=50 plain and streamed, with
the plain key and with the key that has a budget and an rpm limit, so accounting is on), runs wrk
against Gate while counting in Gate's process only:

- CPU time (`task-clock`, in µs) and instructions (`perf stat` on the process; instructions
  read "-" where the machine has no hardware counters, as in most VMs), per request;
- context switches and CPU migrations (software events), per request;
- allocations: calls of libc's `malloc`, `calloc` and `realloc` and, when Gate has mimalloc
  compiled in, of `mi_malloc_aligned`, `mi_zalloc_aligned` and `mi_realloc_aligned` (uprobes
  added with `perf probe`, counted in a run of their own since each hit traps), per request;
- syscalls (`strace -c -f` attached for a run of its own, since strace slows every call), per
  request, by name.

Rates under perf or strace are not reported: only counts divided by the requests wrk completed.
Everything binds 127.0.0.1 and is stopped at the end (also on Ctrl-C). Writes
bench/out/perreq-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gateway import stop_all
from throughput import STREAM_FRAMINGS, check_answers, start_gate, start_origin, wait_ready, wrk

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
ALLOC_EVENTS = ["probe_libc:malloc", "probe_libc:calloc", "probe_libc:realloc"]


def ensure_probes() -> list[str]:
    """The uprobes on libc's allocation functions that exist (adding the missing ones)."""
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    out = []
    for ev in ALLOC_EVENTS:
        fn = ev.split(":")[1]
        if ev not in have:
            r = subprocess.run(["perf", "probe", "-q", "-x", LIBC, "--add", fn], capture_output=True, text=True)
            if r.returncode != 0:
                print(f"perreq: no uprobe on {fn}: {r.stderr.strip()}", file=sys.stderr)
                continue
        out.append(ev)
    return out


MI_FUNCS = {"mi_malloc_a": "mi_malloc_aligned", "mi_zalloc_a": "mi_zalloc_aligned", "mi_realloc_a": "mi_realloc_aligned"}


def ensure_mimalloc_probes(binary: Path) -> list[str]:
    """Uprobes on the entry points of a mimalloc compiled into `binary` (the `mimalloc` crate's
    GlobalAlloc calls these), so allocations are counted with either allocator; [] without it."""
    syms = subprocess.run(["nm", str(binary)], capture_output=True, text=True).stdout
    if " T mi_malloc_aligned\n" not in syms:
        return []
    group = re.sub(r"[^A-Za-z0-9_]", "_", binary.name)
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    out = []
    for event, fn in MI_FUNCS.items():
        ev = f"{group}:{group}_{event}"  # perf wants event names unique across groups
        # Probes name a file path: redo them, the binary at that path may have been rebuilt.
        if ev in have:
            subprocess.run(["perf", "probe", "-q", "-d", ev], capture_output=True)
        r = subprocess.run(["perf", "probe", "-q", "-x", str(binary), "-a", f"{ev}={fn}"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"perreq: no uprobe on {fn} in {binary}: {r.stderr.strip()}", file=sys.stderr)
            continue
        out.append(ev)
    return out


def perf_stat(pid: int, events: list[str], run) -> tuple[dict, dict]:
    """Counts `events` in process `pid` while `run()` runs; returns (counts, run's result)."""
    out_file = Path(tempfile.mktemp(prefix="perreq-stat-"))
    rec = subprocess.Popen(["perf", "stat", "-x", ",", "-o", str(out_file), "-e", ",".join(events),
                            "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        result = run()
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
    counts = {}
    for line in out_file.read_text().splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[2] in events:
            try:
                counts[parts[2]] = float(parts[0])
            except ValueError:
                counts[parts[2]] = None  # "<not counted>" / "<not supported>"
    out_file.unlink(missing_ok=True)
    return counts, result


def strace_count(pid: int, run) -> tuple[dict, dict]:
    out_file = Path(tempfile.mktemp(prefix="perreq-strace-"))
    rec = subprocess.Popen(["strace", "-c", "-f", "-o", str(out_file), "-p", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        result = run()
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=60)
    calls = {}
    for line in out_file.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    out_file.unlink(missing_ok=True)
    return calls, result


class RssSampler:
    """Gate's VmRSS every 0.2 s in a thread of its own, from construction to `stop()` (the
    maximum, in MB): the RSS target's reading, taken in the same run as the counts."""

    def __init__(self, pid: int):
        self.pid, self.max_kb, self.done = pid, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.max_kb = max(self.max_kb, int(line.split()[1]))
            except OSError:
                return
            self.done.wait(0.2)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.max_kb / 1024


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--stream-framing", choices=STREAM_FRAMINGS, default="chunked",
                    help="how the origin frames its stream (as bench/throughput.sh; default chunked)")
    ap.add_argument("--gate-binary", type=Path, default=None)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--profile-allocs", action="store_true",
                    help="with --only-profile: sample every 200th allocation (libc malloc, or mimalloc's when compiled in) "
                         "with DWARF call graphs (who allocates)")
    ap.add_argument("--only-profile", action="store_true",
                    help="no counts: perf record (flat, -F 999) of Gate under c=50 plain with the budget+rpm key, "
                         "report by symbol to bench/out/perreq-profile-<time>.txt")
    ap.add_argument("--callgraph", action="store_true",
                    help="with --only-profile: DWARF call graphs (-F 499), report with children (inclusive time per function)")
    ap.add_argument("--label", default="")
    ap.add_argument("--gate-preload", default=None,
                    help="LD_PRELOAD for Gate alone (e.g. another malloc, to compare allocators without a rebuild)")
    args = ap.parse_args()
    root = args.root
    binary = args.gate_binary or root / "target/release/gate"
    work = Path(tempfile.mkdtemp(prefix="gate-perreq-"))
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))

    _, origin_port = start_origin(work, args.stream_framing)
    if args.gate_preload:
        os.environ["LD_PRELOAD"] = args.gate_preload
    gate, gate_policy, _ = start_gate(root, work, origin_port, binary, "")
    os.environ.pop("LD_PRELOAD", None)
    wait_ready(gate, 30)
    for t in (gate, gate_policy):
        check_answers(t)
    pid = gate.proc.pid
    alloc_events = ensure_probes() + ensure_mimalloc_probes(binary.resolve())
    events = ["task-clock", "instructions", "context-switches", "cpu-migrations"]

    if args.only_profile:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out_dir = root / "bench/out"
        out_dir.mkdir(exist_ok=True)
        data = out_dir / f"perreq-profile-{stamp}.data"
        wrk(work, gate_policy, False, args.conc, 1)
        malloc_event = "probe_libc:malloc"
        if args.profile_allocs:
            mi = [e for e in alloc_events if e.endswith("_mi_malloc_a")]
            malloc_event = mi[0] if mi else malloc_event
        what = (["-e", malloc_event, "-c", "200", "--call-graph", "dwarf,16384"] if args.profile_allocs
                else ["-F", "499", "--call-graph", "dwarf,16384"] if args.callgraph
                else ["-F", "999", "-g"])
        rec = subprocess.Popen(["perf", "record", *what, "-p", str(pid), "-o", str(data)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        r = wrk(work, gate_policy, False, args.conc, args.seconds)
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=120)
        text = []
        reports = ([("caller", ["--no-children", "--sort", "sym", "-g", "caller,0.5,callee,function,percent",
                                "--percent-limit", "1"])] if args.profile_allocs else
                   [("symbol, inclusive", ["--children", "--sort", "sym", "-g", "none", "--percent-limit", "1.5"])]
                   if args.callgraph else
                   [(sort, ["--no-children", "--sort", sort, "-g", "none", "--percent-limit", "0.4"])
                    for sort in ("dso", "dso,symbol")])
        for sort, opts in reports:
            rep = subprocess.run(["perf", "report", "-i", str(data), *opts, "--stdio"],
                                 capture_output=True, text=True, timeout=600)
            text.append(f"== by {sort}\n" + "\n".join(
                re.sub(r" {3,}", "  ", l).rstrip() for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")))
        path = out_dir / f"perreq-profile-{stamp}.txt"
        path.write_text(f"perf record -F 999 of gate ({binary}), c={args.conc} plain, budget+rpm key, "
                        f"{r['requests']} requests\n\n" + "\n\n".join(text) + "\n")
        print(path.read_text())
        stop_all()
        return 0

    results = {}
    for target in (gate, gate_policy):
        for stream in (False, True):
            name = f"{target.name}{'-stream' if stream else ''}"
            wrk(work, target, stream, args.conc, 1)  # warm-up: connections, pools, caches
            # Uprobes cost a trap per call: CPU time is read in a run without them.
            row = {}
            for evs in (events, alloc_events):
                if not evs:
                    continue
                sampler = RssSampler(pid) if evs is events else None
                counts, r = perf_stat(pid, evs, lambda: wrk(work, target, stream, args.conc, args.seconds))
                if sampler:
                    row["rss_max_mb"] = sampler.stop()
                n = max(r["requests"], 1)
                row.setdefault("requests", r["requests"])
                row["errors"] = row.get("errors", 0) + r["errors_total"]
                for ev, v in counts.items():
                    row[ev] = None if v is None else v / n
            row["allocs"] = sum(row.get(ev) or 0 for ev in alloc_events) if alloc_events else None
            if not args.no_strace:
                calls, r2 = strace_count(pid, lambda: wrk(work, target, stream, args.conc, args.seconds))
                n2 = max(r2["requests"], 1)
                row["syscalls"] = sum(calls.values()) / n2
                row["syscalls_by_name"] = {k: round(v / n2, 3) for k, v in
                                           sorted(calls.items(), key=lambda kv: -kv[1]) if v / n2 >= 0.01}
            results[name] = row
            print(f"{name}: {json.dumps(row)}", file=sys.stderr)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = root / "bench/out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"perreq-{stamp}.json").write_text(json.dumps(
        {"label": args.label, "binary": str(binary), "conc": args.conc, "seconds": args.seconds,
         "results": results}, indent=2))
    print(f"\nper request, c={args.conc}, {args.label or binary}")
    print("| scenario | CPU [µs] (task-clock) | instructions | context switches | migrations | allocations (libc + mimalloc entry points) | syscalls | RSS max [MB] |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in results.items():
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)
        cpu_us = row.get("task-clock")
        print(f"| {name} | {f(cpu_us and cpu_us * 1000, '.1f')} | {f(row.get('instructions'), ',.0f')} | "
              f"{f(row.get('context-switches'), '.3f')} | {f(row.get('cpu-migrations'), '.3f')} | "
              f"{f(row.get('allocs'), '.1f')} | "
              f"{f(row.get('syscalls'), '.2f')} | {f(row.get('rss_max_mb'), '.1f')} |")
    if not args.no_strace:
        for name, row in results.items():
            print(f"syscalls {name}: {row['syscalls_by_name']}")
    stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
