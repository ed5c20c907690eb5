"""The command line both instruction-count harnesses share (``bench/dubbo_icount.py``,
``bench/redis_icount.py``): the workload runs twice under callgrind (N and 2N requests, the same
requests made beforehand in both), and the difference over N is the instructions per request,
free of start-up and warm-up; deterministic, unlike time on a shared machine."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

Workload = Callable[[int, int, int, int, int], None]  # (requests, clients, per read, pool, prepared)


def drive(h: Any, sessions: list[Any], reads: list[bytes], answer: Callable[[bytes], bytes], requests: int, *, per_read: int, warmup: int) -> None:  # noqa: ANN401
    """Run ``requests`` through a core test harness (``tests.proxy.test_session.Harness``): each
    client session in turn receives the next prepared read, what the core writes upstream is
    answered by ``answer``, until done; after a warm-up of ``warmup`` requests (connections up,
    memos as they will be) and the proxy's own GC settings. Fails unless every request is answered."""
    from metaprotocol.cli import relax_gc

    next_read = 0

    def run(n: int) -> None:
        nonlocal next_read
        left = n // per_read
        while left:
            for s, _t in sessions:
                if not left:
                    break
                s.data_received(reads[next_read % len(reads)])
                next_read += 1
                left -= 1
            h.io.flush()
            if not h.io.connects or any(c.transport is None for c, _, _ in h.io.connects):
                h.connect_all()
            for conn, _, _ in h.io.connects:
                written = h.upstream_transports[id(conn)].written
                sent = b"".join(written)
                written.clear()
                if sent:
                    conn.data_received(answer(sent))
            h.io.flush()
            for _s, t in sessions:
                t.written.clear()

    relax_gc()  # as the proxy does once it serves (metaprotocol.cli): start-up objects frozen
    run(warmup)
    responses = h.ctx.stats.responses
    run(requests)
    h.upstreams.sweep(0.0)
    got = h.ctx.stats.responses - responses
    if got != requests:
        raise SystemExit(f"expected {requests} responses, got {got}")


def _callgrind(script: str, args: argparse.Namespace, requests: int, out: Path) -> int:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script, "--run", str(requests),
           "--prepare", str(2 * args.requests + args.pool), "--clients", str(args.clients), "--per-read", str(args.per_read), "--pool", str(args.pool)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs and every build
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    m = re.search(r"^summary:\s*(\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise SystemExit(f"no summary in {out}")
    return int(m.group(1))


def main(script: str, doc: str | None, workload: Workload, *, unit: str, requests: int, per_read: int, pool: int) -> None:
    """Parse the command line; ``--run N`` runs the workload (inside callgrind), else both counts."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=requests, help=f"{unit}s of the smaller run (the larger is twice that)")
    ap.add_argument("--clients", type=int, default=50, help="client sessions (default 50, as the suite)")
    ap.add_argument("--per-read", type=int, default=per_read, help=f"{unit}s per client read (default {per_read})")
    ap.add_argument("--pool", type=int, default=pool, help=f"distinct corpus {unit}s (default {pool})")
    ap.add_argument("--run", type=int, help=f"run the workload with this many {unit}s, no callgrind")
    ap.add_argument("--prepare", type=int, help=argparse.SUPPRESS)  # requests made beforehand (both runs alike)
    ap.add_argument("--annotate", type=int, default=0, help="print the top N functions of the larger run")
    ap.add_argument("--keep", type=Path, help="directory for the callgrind output files")
    args = ap.parse_args()
    if args.run is not None:
        workload(args.run, args.clients, args.per_read, args.pool, max(args.prepare or 0, args.run + args.pool))
        return
    import metaprotocol._native as native

    print("build: {} ({})".format(*native.mode()))
    work = args.keep or Path(tempfile.mkdtemp(prefix=f"{Path(script).stem}."))
    work.mkdir(parents=True, exist_ok=True)
    small, large = args.requests, 2 * args.requests
    i_small = _callgrind(script, args, small, work / "small.out")
    i_large = _callgrind(script, args, large, work / "large.out")
    per = (i_large - i_small) / (large - small)
    print(f"instructions per {unit}: {per:,.0f}  ({i_small:,} for {small}, {i_large:,} for {large}; "
          f"{args.clients} clients, {args.per_read} per read, {args.pool} {unit}s; files in {work})")  # fmt: skip
    if args.annotate:
        out = subprocess.run(["callgrind_annotate", "--inclusive=no", str(work / "large.out")], check=True, capture_output=True, text=True).stdout
        lines = [ln for ln in out.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
        print("\n".join(lines[1 : args.annotate + 1]))
