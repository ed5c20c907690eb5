"""Proxy CPU per request with 1 and with N worker processes, in one run (issue 15 target: with 2
workers within 10 % of 1 worker).

    python bench/workers_cpu.py [--requests 200000] [--rounds 3] [--workers 2]

redis-benchmark (GET and SET, 50 connections, ``-P 16``) through ``metaprotocol proxy
[--concurrency N]`` to one redis-server; the CPU time of the whole proxy process tree (the parent
and its workers, user + system, from /proc) divided by the requests, rounds interleaved
(1, N, 1, N ...), medians and spread, with a CPU calibration (a fixed pure-Python loop) at the
start and the end. A benchmark, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peers import cpu_seconds  # noqa: E402
from tests.servers import bootstrap_dict, cluster, free_port, listener, wait_port  # noqa: E402


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every process below it."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return total


def calibrate() -> float:
    """Milliseconds of a fixed pure-Python loop (the machine's speed right now)."""
    start = time.process_time()
    n = 0
    for i in range(2_000_000):
        n += i & 7
    return (time.process_time() - start) * 1000


def one_round(workers: int, redis_port: int, requests: int, tmp: Path) -> dict[str, float]:
    port = free_port()
    boot = tmp / f"proxy-{workers}.yaml"
    boot.write_text(yaml.safe_dump(bootstrap_dict([listener("redis", port, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [redis_port])])))
    cmd = [sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(boot), "--log-level", "error"]
    if workers > 1:
        cmd += ["--concurrency", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_port(port, timeout=30)
        subprocess.run(["redis-benchmark", "-p", str(port), "-t", "get,set", "-n", str(requests // 10), "-c", "50", "-P", "16", "-q"], check=True, capture_output=True)  # warm up
        before = tree_cpu(proc.pid)
        t0 = time.monotonic()
        subprocess.run(["redis-benchmark", "-p", str(port), "-t", "get,set", "-n", str(requests), "-c", "50", "-P", "16", "-q"], check=True, capture_output=True)
        wall = time.monotonic() - t0
        cpu = tree_cpu(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    done = 2 * requests  # GET and SET
    return {"cpu_us_per_request": cpu / done * 1e6, "requests_per_s": done / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cal_start = calibrate()
    with tempfile.TemporaryDirectory(prefix="mp-workers-") as tmp_name:
        tmp = Path(tmp_name)
        redis_port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        try:
            wait_port(redis_port)
            runs: dict[int, list[dict[str, float]]] = {1: [], args.workers: []}
            for _ in range(args.rounds):
                for w in (1, args.workers):
                    runs[w].append(one_round(w, redis_port, args.requests, tmp))
        finally:
            server.terminate()
            server.wait()
    cal_end = calibrate()
    out = {}
    for w, rs in runs.items():
        cpu = [r["cpu_us_per_request"] for r in rs]
        rps = [r["requests_per_s"] for r in rs]
        out[w] = {"cpu_us_per_request": {"median": statistics.median(cpu), "min": min(cpu), "max": max(cpu)},
                  "requests_per_s": {"median": statistics.median(rps), "min": min(rps), "max": max(rps)}}  # fmt: skip
    from metaprotocol import _native

    ratio = out[args.workers]["cpu_us_per_request"]["median"] / out[1]["cpu_us_per_request"]["median"]
    print("| workers | proxy CPU µs/request (median, min-max) | requests/s (median, min-max) |")
    print("|---|---|---|")
    for w, o in out.items():
        c, r = o["cpu_us_per_request"], o["requests_per_s"]
        print(f"| {w} | {c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | {r['median']:,.0f} ({r['min']:,.0f}-{r['max']:,.0f}) |")
    print(f"\nCPU per request, {args.workers} workers / 1: {ratio:.2f}x (target: at most 1.10x)")
    print(f"*{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, hot path {'/'.join(_native.mode())}; "
          f"calibration (pure-Python loop, ms) {cal_start:.0f} -> {cal_end:.0f}*")  # fmt: skip
    (ROOT / "bench/results/workers_cpu.json").write_text(json.dumps({"workers": out, "ratio": ratio, "calibration_ms": [cal_start, cal_end]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
