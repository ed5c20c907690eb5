"""Instructions per request of the representative Dubbo mix through the sans-IO core (callgrind).

Wall-clock and CPU time on the shared machines vary with the other jobs; callgrind's instruction
counts do not, so optimisation work on the Dubbo hot path decides with this:

    .venv/bin/python bench/dubbo_icount.py                 # callgrind, two runs, instructions/request
    .venv/bin/python bench/dubbo_icount.py --run 2000      # the workload alone (under any tool)
    .venv/bin/python bench/dubbo_icount.py --annotate 25   # also the top functions (callgrind_annotate)

The workload is the representative suite's Dubbo mix (``bench/representative/corpus.py``: 4
services x 3 methods, a ``traceparent`` attachment distinct per request, varied arguments, the
provider's four reply shapes) and its routes (``targets.dubbo_routes``: 12 routes on interface
and method, one cluster of 2 endpoints), driven through the compiled core (or the sources, with
METAPROTOCOL_PURE_PYTHON=1) on fake transports: ``--clients`` client sessions each hand
``--per-read`` requests to the proxy per read, the upstream connections get every reply of a
round in one read. As the load generator does, 16 hex digits of each request's trace id are
overwritten with a counter, so no two requests are alike (no memo keyed by bytes can hit).

Instructions per request are the difference between two runs (``--requests`` and twice that)
divided by the difference in requests: start-up, imports and the fixed set-up cancel out; the
harness's own per-request work (building and matching the canned replies) stays in, the same on
both sides of any comparison.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _workload(requests: int, clients: int, per_read: int, pool: int, prepare: int) -> None:
    """Drive ``requests`` requests (after a warm-up of one pass over the corpus) through the core."""
    from bench.representative import corpus
    from metaprotocol.cli import relax_gc
    from metaprotocol.config.model import AttributeMatcher, MatchKind, RouteAction, RouteRule
    from metaprotocol_codecs.dubbo import DubboCodecFactory
    from tests.proxy.test_session import Harness

    routes = tuple(
        RouteRule(f"{m.interface}.{m.name}", (AttributeMatcher("interface", MatchKind.EXACT, m.interface),
                                              AttributeMatcher("method", MatchKind.EXACT, m.name)), RouteAction(cluster="backend"))
        for m in corpus.METHODS
    )  # fmt: skip
    h = Harness(DubboCodecFactory(), routes, {"backend": 2})
    sessions = [h.client() for _ in range(clients)]
    frames = corpus.dubbo_corpus(pool)
    # The provider picks its reply by method name; the first 64 bytes of a body (dubbo version,
    # path, version, then the method name) tell the method, the same bytes for every frame of it.
    reply_of: dict[bytes, bytes] = {}
    for f in frames:
        name = next(m for m in corpus.METHODS if bytes([len(m.name)]) + m.name.encode() in f.data[16:120])
        reply = corpus.dubbo_reply(name).data
        assert reply_of.setdefault(f.data[16:80], reply) == reply
    # Every read of the run made beforehand (``prepare`` requests, however many are run), so
    # that the set-up costs the same in both runs of a comparison and cancels out.
    reads: list[bytes] = []
    for n in range(0, prepare, per_read):
        batch = []
        for i in range(n, n + per_read):
            data = bytearray(frames[i % len(frames)].data)
            off = frames[i % len(frames)].trace_off
            data[off : off + 16] = b"%016x" % i
            batch.append(bytes(data))
        reads.append(b"".join(batch))

    def answer(sent: bytes) -> bytes:
        out, pos = [], 0
        while pos < len(sent):
            end = pos + 16 + int.from_bytes(sent[pos + 12 : pos + 16], "big")
            reply = reply_of[sent[pos + 16 : pos + 80]]
            out.append(reply[:4] + sent[pos + 4 : pos + 12] + reply[12:])
            pos = end
        return b"".join(out)

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
    run(len(frames) // per_read * per_read)  # warm-up: every frame once, connections up, memos as they will be
    responses = h.ctx.stats.responses
    run(requests)
    h.upstreams.sweep(0.0)
    got = h.ctx.stats.responses - responses
    if got != requests:
        raise SystemExit(f"expected {requests} responses, got {got}")


def _callgrind(args: argparse.Namespace, requests: int, out: Path) -> int:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__, "--run", str(requests),
           "--prepare", str(2 * args.requests + args.pool), "--clients", str(args.clients), "--per-read", str(args.per_read), "--pool", str(args.pool)]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in both runs and every build
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    m = re.search(r"^summary:\s*(\d+)", out.read_text(errors="replace"), re.M)
    if m is None:
        raise SystemExit(f"no summary in {out}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="requests of the smaller run (the larger is twice that)")
    ap.add_argument("--clients", type=int, default=50, help="client sessions (default 50, as the suite)")
    ap.add_argument("--per-read", type=int, default=4, help="requests per client read (default 4)")
    ap.add_argument("--pool", type=int, default=1024, help="distinct corpus frames (default 1024)")
    ap.add_argument("--run", type=int, help="run the workload with this many requests, no callgrind")
    ap.add_argument("--prepare", type=int, help=argparse.SUPPRESS)  # requests made beforehand (both runs alike)
    ap.add_argument("--annotate", type=int, default=0, help="print the top N functions of the larger run")
    ap.add_argument("--keep", type=Path, help="directory for the callgrind output files")
    args = ap.parse_args()
    if args.run is not None:
        _workload(args.run, args.clients, args.per_read, args.pool, max(args.prepare or 0, args.run + args.pool))
        return
    import metaprotocol._native as native

    print("build: {} ({})".format(*native.mode()))
    work = args.keep or Path(tempfile.mkdtemp(prefix="dubbo_icount."))
    work.mkdir(parents=True, exist_ok=True)
    small, large = args.requests, 2 * args.requests
    i_small = _callgrind(args, small, work / "small.out")
    i_large = _callgrind(args, large, work / "large.out")
    per = (i_large - i_small) / (large - small)
    print(f"instructions per request: {per:,.0f}  ({i_small:,} for {small}, {i_large:,} for {large}; "
          f"{args.clients} clients, {args.per_read} per read, {args.pool} frames; files in {work})")  # fmt: skip
    if args.annotate:
        out = subprocess.run(["callgrind_annotate", "--inclusive=no", str(work / "large.out")], check=True, capture_output=True, text=True).stdout
        lines = [ln for ln in out.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
        print("\n".join(lines[1 : args.annotate + 1]))


if __name__ == "__main__":
    main()
