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

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import icount  # noqa: E402


def _workload(requests: int, clients: int, per_read: int, pool: int, prepare: int) -> None:
    """Drive ``requests`` requests (after a warm-up of one pass over the corpus) through the core."""
    from bench.representative import corpus
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

    icount.drive(h, sessions, reads, answer, requests, per_read=per_read, warmup=len(frames) // per_read * per_read)


if __name__ == "__main__":
    icount.main(__file__, __doc__, _workload, unit="request", requests=4000, per_read=4, pool=1024)
