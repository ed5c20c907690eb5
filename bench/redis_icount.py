"""Instructions per command of the representative Redis mix through the sans-IO core (callgrind).

Wall-clock and CPU time on the shared machines vary with the other jobs; callgrind's instruction
counts do not, so optimisation work on the Redis hot path decides with this:

    .venv/bin/python bench/redis_icount.py                 # callgrind, two runs, instructions/command
    .venv/bin/python bench/redis_icount.py --run 8000      # the workload alone (under any tool)
    .venv/bin/python bench/redis_icount.py --annotate 25   # also the top functions (callgrind_annotate)

The workload is the representative suite's Redis mix (``bench/representative/corpus.py``: GET
45 %, SET 30 % with values of 16 B to 4 KB, MGET of 4 keys 10 %, INCR 15 % over 10^5 keys) and
the suite's configuration of our proxy (one catch-all route to one cluster, so the listener
forwards pipelines), driven through the compiled core (or the sources, with
METAPROTOCOL_PURE_PYTHON=1) on fake transports: ``--clients`` client sessions each hand
``--per-read`` commands (16, as ``redis-benchmark -P 16`` writes them) to the proxy per read; the
upstream connections get every reply of a round in one read, shaped as redis-server answers
(a GET the key's value of the suite's size, MGET an array of four, SET ``+OK``, INCR an integer).

Instructions per command are the difference between two runs (``--requests`` and twice that)
divided by the difference in commands: start-up, imports and the fixed set-up cancel out; the
harness's own per-command work (reading the commands sent upstream and building the canned
replies, a few small slices each) stays in, the same on both sides of any comparison.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import icount  # noqa: E402


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _workload(requests: int, clients: int, per_read: int, pool: int, prepare: int) -> None:
    """Drive ``requests`` commands (after a warm-up of one pass over the corpus) through the core."""
    from bench.representative import corpus
    from metaprotocol.config.model import RouteAction, RouteRule
    from metaprotocol_codecs.redis import RedisCodecFactory
    from tests.proxy.test_session import Harness

    h = Harness(RedisCodecFactory(), (RouteRule("all", (), RouteAction(cluster="backend")),), {"backend": 1})
    sessions = [h.client() for _ in range(clients)]
    frames = [f.data for f in corpus.redis_corpus(pool)]
    # What redis-server answers, by key (the suite prefills every key with a value of
    # ``value_size(key)`` bytes; the bytes themselves do not matter to the proxy, only that they
    # hold no CR, as the suite's hex values do not).
    keys = {int(k) for f in frames for k in re.findall(rb"key:(\d{5})", f)}
    get_reply = {b"key:%05d" % k: _bulk(b"%d" % (k % 10) * corpus.value_size(k)) for k in keys}
    ok, counter = b"+OK\r\n", b":1\r\n"
    # Every read of the run made beforehand (``prepare`` commands, however many are run), so
    # that the set-up costs the same in both runs of a comparison and cancels out.
    reads = [b"".join(frames[i % pool] for i in range(n, n + per_read)) for n in range(0, prepare, per_read)]

    def answer(sent: bytes) -> bytes:
        """The replies to the commands in ``sent`` (the corpus's shapes only: keys ``key:NNNNN``
        of 9 bytes, counters ``counter:NNNN`` of 12)."""
        out, pos, n = [], 0, len(sent)
        while pos < n:
            name_len = sent[pos + 5] - 48  # *<argc>\r\n$<3|4>\r\n<NAME>\r\n
            p = pos + 10 + name_len
            name = sent[pos + 8 : pos + 8 + name_len]
            if name == b"GET":
                out.append(get_reply[sent[p + 4 : p + 13]])
                pos = p + 15
            elif name == b"SET":
                eol = sent.index(b"\r\n", p + 16)
                pos = eol + 4 + int(sent[p + 16 : eol])
                out.append(ok)
            elif name == b"MGET":
                out.append(b"*4\r\n" + b"".join(get_reply[sent[q + 4 : q + 13]] for q in range(p, p + 60, 15)))
                pos = p + 60
            elif name == b"INCR":
                out.append(counter)
                pos = p + 19
            else:
                raise SystemExit(f"unexpected command upstream: {sent[pos : pos + 40]!r}")
        return b"".join(out)

    icount.drive(h, sessions, reads, answer, requests, per_read=per_read, warmup=pool // per_read * per_read)


if __name__ == "__main__":
    icount.main(__file__, __doc__, _workload, unit="command", requests=8000, per_read=16, pool=4096)
