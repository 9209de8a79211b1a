"""Instructions per request, by function, of Gate and of the hyper floor (issue 16).

Run it through bench/callgrind.sh. CPU time per request moves with the host (a hypervisor's
steal, cache pressure from neighbours); instruction counts do not. This starts the throughput
bench's nginx origin, then Gate (the same config and keys as bench/throughput.py) and
daemon/examples/hyper_floor each under valgrind's callgrind, warms each up, zeroes the counters,
sends a fixed number of requests with daemon/examples/loadgen, dumps the counters and reports:

- instructions (Ir) per request, in the whole process, for each target and scenario;
- the functions with the most instructions per request (self cost, and inclusive cost), so a
  change's effect can be read function by function, before and after.

Everything is bounded (a fixed request count per scenario, timeouts on each step) and binds
127.0.0.1. Writes bench/out/callgrind-<time>.json (and keeps the raw callgrind.out files in
the work directory, printed at the end, for `callgrind_annotate` or kcachegrind).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway import start, stop_all
from throughput import STREAM_FRAMINGS, MODEL, STREAM_MODEL, UPSTREAM_KEY, Target, check_answers, free_port, request_body, start_gate, start_origin, wait_ready

# The usage log's writer thread (daemon/src/usage/writer.rs): everything its `Writer` methods
# do is the log's (entered from its thread's closure, whatever was inlined into it).
WRITER_ENTRY = "gate_daemon::usage::writer::Writer::"

VALGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no", "--compress-pos=no"]


def wrapper(work: Path, binary: Path, outdir: Path) -> Path:
    """A script that runs `binary serve ...` under callgrind and every other command directly, so
    throughput.py's start_gate (which also runs `gate token create`) starts Gate under it."""
    script = work / "gate-under-callgrind"
    vg = " ".join(VALGRIND + [f"--callgrind-out-file={outdir}/callgrind.out.gate.%p"])
    script.write_text(f'#!/bin/sh\nif [ "$1" = serve ]; then exec {vg} {binary} "$@"; fi\nexec {binary} "$@"\n')
    script.chmod(0o755)
    return script


def loadgen(root: Path, target: Target, stream: bool, conc: int, requests: int, timeout_s: float) -> dict:
    # No warm-up of loadgen's own: every request it sends is one the counters see.
    cmd = [str(root / "target/release/examples/loadgen"), "--url", target.url(stream), "--body", request_body(stream),
           "--concurrency", str(conc), "--requests", str(requests), "--duration", str(int(timeout_s)), "--warmup", "0",
           "--header", "content-type: application/json", "--label", target.name]
    for k, v in target.hdrs(stream).items():
        cmd += ["--header", f"{k}: {v}"]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen against {target.name} failed: {out.stderr.strip()[-500:]}")
    report = json.loads(out.stdout)
    if report["errors"]:
        raise RuntimeError(f"{target.name}: {report['errors']} errors, first: {report.get('first_error')}")
    return report


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=120, check=True)


def newest_dump(outdir: Path, before: set[Path], deadline_s: float) -> Path:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        new = [p for p in outdir.glob("callgrind.out.*") if p not in before and p.stat().st_size > 0]
        if new:
            time.sleep(1.0)  # let callgrind finish writing
            return max(new, key=lambda p: p.stat().st_mtime)
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump appeared in {outdir}")


def parse_dump(dump: Path, enter: str | None = None) -> tuple[int, dict[str, int], dict[str, int]]:
    """Total Ir, and Ir per function: self and inclusive (self plus the calls it made; a
    recursive call counts once per level). Read from the dump itself: callgrind_annotate 3.19
    gives a Rust binary's inlined frames' self cost to the thread's entry point.

    With `enter`, the inclusive map also holds, under the key `enter`, the cost of every call
    into a function whose name contains `enter` from one whose name does not: the whole cost
    of that code, however the compiler inlined its entry point."""
    names: dict[str, str] = {}
    self_ir: dict[str, int] = {}
    incl_ir: dict[str, int] = {}
    total = 0
    entered = 0
    fn = "?"
    callee = "?"
    in_call = False

    def name(value: str) -> str:
        m = re.match(r"^\((\d+)\)(?: (.*))?$", value)
        if not m:
            return value
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), value)

    with open(dump, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = name(line[3:].rstrip("\n"))
                in_call = False
            elif line.startswith("cfn="):
                callee = name(line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                in_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) < 2:
                    continue
                ir = int(parts[1])
                incl_ir[fn] = incl_ir.get(fn, 0) + ir
                if in_call:
                    in_call = False
                    if enter and enter in callee and enter not in fn:
                        entered += ir
                else:
                    self_ir[fn] = self_ir.get(fn, 0) + ir
                    total += ir
    if enter:
        incl_ir[enter] = entered
    return total, self_ir, incl_ir


def annotate(dump: Path, top: int) -> tuple[int, list[tuple[int, str]], list[tuple[int, str]]]:
    """Total Ir and the `top` functions by self Ir and by inclusive Ir."""
    total, self_ir, incl_ir = parse_dump(dump)
    by_self = sorted(((ir, f) for f, ir in self_ir.items()), reverse=True)[:top]
    by_incl = sorted(((ir, f) for f, ir in incl_ir.items()), reverse=True)[:top]
    return total, by_self, by_incl


def short(fn: str) -> str:
    return fn[:160]


def measure(root: Path, outdir: Path, target: Target, pid: int, stream: bool, conc: int, warmup: int,
            requests: int, top: int) -> dict:
    loadgen(root, target, stream, conc, warmup, 600)
    callgrind_control("-z", str(pid))
    before = set(outdir.glob("callgrind.out.*"))
    report = loadgen(root, target, stream, conc, requests, 1800)
    callgrind_control("-d", str(pid))
    dump = newest_dump(outdir, before, 120)
    n = report["requests"]
    total, self_rows, incl_rows = annotate(dump, top)
    _, _, incl = parse_dump(dump, WRITER_ENTRY)
    # The usage log's writer thread works in batches (their size follows the request rate,
    # slower here than without callgrind), so its share per request is reported apart.
    writer = incl.get(WRITER_ENTRY, 0)
    return {
        "target": target.name, "stream": stream, "concurrency": conc, "requests": n, "dump": str(dump),
        "ir_total": total, "ir_per_request": round(total / n),
        "usage_writer_ir_per_request": round(writer / n), "request_path_ir_per_request": round((total - writer) / n),
        "self": [{"ir_per_request": round(ir / n), "function": short(f)} for ir, f in self_rows],
        "inclusive": [{"ir_per_request": round(ir / n), "function": short(f)} for ir, f in incl_rows],
    }


def usage_rows(root: Path, rows: int, top: int) -> int:
    """daemon/examples/usage_rows under callgrind: instructions per row of the usage log."""
    work = Path(tempfile.mkdtemp(prefix="gate-callgrind-rows-"))
    dump = work / "callgrind.out.usage-rows"
    subprocess.run(VALGRIND + [f"--callgrind-out-file={dump}", str(root / "target/release/examples/usage_rows"),
                               "--rows", str(rows), "--dir", str(work / "state")],
                   check=True, capture_output=True, timeout=3600)
    total, self_rows, incl_rows = annotate(dump, top)
    print(f"usage log alone: {total / rows:,.0f} instructions per row ({rows} rows, whole process)")
    print("   self Ir/row  function")
    for ir, f in self_rows:
        print(f"   {ir / rows:>10,.0f}  {short(f)}")
    print("   incl Ir/row  function")
    for ir, f in incl_rows:
        print(f"   {ir / rows:>10,.0f}  {short(f)}")
    print(f"raw dump: {dump}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--stream-framing", choices=STREAM_FRAMINGS, default="chunked",
                    help="how the origin frames its stream (as bench/throughput.sh; default chunked)")
    ap.add_argument("--gate-binary", type=Path)
    ap.add_argument("--requests", type=int, default=4000, help="measured requests per scenario (default 4000)")
    ap.add_argument("--warmup", type=int, default=1000, help="requests before the counters are zeroed (default 1000)")
    ap.add_argument("--conc", type=int, default=10, help="concurrent connections (default 10)")
    ap.add_argument("--top", type=int, default=40, help="functions listed per scenario (default 40)")
    ap.add_argument("--only", choices=["gate", "gate-policy", "hyper-floor"], action="append",
                    help="measure only these targets (repeatable; default all)")
    ap.add_argument("--no-stream", action="store_true", help="plain requests only")
    ap.add_argument("--label", default="", help="a note stored with the results")
    ap.add_argument("--usage-rows", type=int, metavar="N",
                    help="instead: the usage log alone, N rows written by daemon/examples/usage_rows "
                         "in batches of the writer's size, instructions per row")
    args = ap.parse_args()
    if args.usage_rows:
        return usage_rows(args.root.resolve(), args.usage_rows, args.top)
    root = args.root.resolve()
    binary = (args.gate_binary or root / "target/release/gate").resolve()
    only = set(args.only or ["gate", "gate-policy", "hyper-floor"])
    work = Path(tempfile.mkdtemp(prefix="gate-callgrind-"))
    outdir = work / "dumps"
    outdir.mkdir()
    results = []
    try:
        origin, origin_port = start_origin(work, args.stream_framing)
        targets: list[tuple[Target, int]] = []
        if only & {"gate", "gate-policy"}:
            plain, policy, _ = start_gate(root, work, origin_port, wrapper(work, binary, outdir), "")
            for t in (plain, policy):
                wait_ready(t, 300)
            check_answers(plain)
            if "gate" in only:
                targets.append((plain, plain.proc.pid))
            if "gate-policy" in only:
                targets.append((policy, policy.proc.pid))
        if "hyper-floor" in only:
            floor_bin = root / "target/release/examples/hyper_floor"
            port = free_port()
            proc = start(VALGRIND + [f"--callgrind-out-file={outdir}/callgrind.out.floor.%p", str(floor_bin),
                                     f"127.0.0.1:{port}", f"127.0.0.1:{origin_port}"], work / "hyper-floor.log")
            floor = Target("hyper-floor", proc, f"http://127.0.0.1:{port}", {"authorization": f"Bearer {UPSTREAM_KEY}"},
                           stream_path="/stream/v1/chat/completions")
            wait_ready(floor, 300)
            targets.append((floor, proc.pid))
        for target, pid in targets:
            for stream in ([False] if args.no_stream else [False, True]):
                r = measure(root, outdir, target, pid, stream, args.conc, args.warmup, args.requests, args.top)
                results.append(r)
                print(f"\n== {r['target']} {'streamed' if stream else 'plain'}, c={args.conc}: "
                      f"{r['ir_per_request']:,} instructions per request ({r['requests']} requests): "
                      f"{r['request_path_ir_per_request']:,} request path, {r['usage_writer_ir_per_request']:,} usage writer")
                print("   self Ir/req  function")
                for row in r["self"][:args.top]:
                    print(f"   {row['ir_per_request']:>11,}  {row['function']}")
                print("   incl Ir/req  function")
                for row in r["inclusive"][:args.top]:
                    print(f"   {row['ir_per_request']:>11,}  {row['function']}")
                sys.stdout.flush()
    finally:
        stop_all()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = root / "bench/out" / f"callgrind-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    git = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"label": args.label, "commit": git, "binary": str(binary), "conc": args.conc,
                               "results": results}, indent=1))
    print("\nsummary (instructions per request: all, request path, usage writer):")
    for r in results:
        print(f"  {r['target']:<12} {'streamed' if r['stream'] else 'plain':<9} {r['ir_per_request']:>9,} "
              f"{r['request_path_ir_per_request']:>9,} {r['usage_writer_ir_per_request']:>9,}")
    print(f"\nwrote {out}; raw dumps in {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
