"""A 16-command Redis pipeline through the sans-IO core: forwarded as one unit versus routed one
command at a time (the same pipeline with a key-prefix route that catches everything, which
forces a per-command decision). The ratio of the two medians is the gain of forwarded pipelines
without any IO."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprotocol.config.model import AttributeMatcher, MatchKind, RouteAction, RouteRule  # noqa: E402
from metaprotocol_codecs.redis import RedisCodecFactory  # noqa: E402
from tests.proxy.test_session import Harness  # noqa: E402

PIPELINE = b"".join(b"*2\r\n$3\r\nGET\r\n$6\r\nkey:%02d\r\n" % i for i in range(16))
REPLIES = b"$5\r\nvalue\r\n" * 16

CASES = {
    "forwarded": RouteRule("all", (), RouteAction(cluster="c")),
    "one_by_one": RouteRule("all", (AttributeMatcher("key", MatchKind.PREFIX, "key:"),), RouteAction(cluster="c")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_of_16_gets(benchmark: object, case: str) -> None:
    h = Harness(RedisCodecFactory(), (CASES[case],), {"c": 1})
    assert h.ctx.forwards_pipelines() is (case == "forwarded")
    s, t = h.client()
    s.data_received(PIPELINE)
    h.connect_all()
    conn = h.conns()[0]
    upstream = h.upstream_transports[id(conn)]

    def run() -> None:
        upstream.written.clear()
        conn.data_received(REPLIES)  # type: ignore[attr-defined]
        h.io.flush()
        t.written.clear()
        s.data_received(PIPELINE)
        h.io.flush()

    benchmark(run)  # type: ignore[operator]
    assert h.ctx.stats.responses >= 16 and s.inflight == 16
