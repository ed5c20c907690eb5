"""The per-request cost of each traffic policy (pytest-benchmark), in the sans-IO core.

Each benchmark pushes 16 pipelined Dubbo requests through a session and answers them, with one
policy enabled; compare with ``test_no_policy`` (the same path with none).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprotocol.config.model import (  # noqa: E402
    AccessLog,
    AttributeMatcher,
    MatchKind,
    RbacAction,
    RbacFilter,
    RbacOp,
    RbacPolicy,
    RbacRule,
    FaultPolicy,
    LocalRateLimit,
    MirrorPolicy,
    RetryPolicy,
    RouteAction,
    RouteRule,
    TokenBucket,
)
from metaprotocol.proxy.policies import RateLimiter  # noqa: E402
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire  # noqa: E402
from tests.proxy.test_session import Harness  # noqa: E402

IFACE = "org.apache.dubbo.samples.basic.api.DemoService"
REQUEST = wire.build_request(1, wire.Invocation(IFACE, "sayHello", "Ljava/lang/String;", ["world"], {"foo": "bar"}, "1.0.0"))
BATCH = b"".join(REQUEST[:4] + i.to_bytes(8, "big") + REQUEST[12:] for i in range(16))
REPLY_BODY = wire.build_response(0, wire.Result(value="hello"))[16:]


def _harness(rule: RouteRule, listener_extra: dict[str, object] | None = None) -> object:
    h = Harness(DubboCodecFactory(), (rule,), {"c": 1, "m": 1})
    if listener_extra:
        from dataclasses import replace

        h.ctx.config = replace(h.ctx.config, **listener_extra)
        if h.ctx.config.local_rate_limit is not None:
            h.ctx.limiter = RateLimiter(h.ctx.config.local_rate_limit, 0.0)
        if h.ctx.config.access_log:
            h.ctx.access_log = lambda record: None
        h.ctx.recompile()  # the chain of the new configuration (an RBAC filter, ...)
    return h


def _cycle(h: object) -> None:
    s, t = h.client()  # type: ignore[attr-defined]

    def run() -> None:
        s.data_received(BATCH)
        h.io.flush()  # type: ignore[attr-defined]
        if not h.io.connects or any(c.transport is None for c, _, _ in h.io.connects):  # type: ignore[attr-defined]
            h.connect_all()  # type: ignore[attr-defined]
        for conn, _, _ in h.io.connects:  # type: ignore[attr-defined]
            sent = b"".join(h.upstream_transports[id(conn)].written)  # type: ignore[attr-defined]
            h.upstream_transports[id(conn)].written.clear()  # type: ignore[attr-defined]
            pos, replies = 0, []
            while pos < len(sent):
                _, _, _, rid, length = wire.HEADER.unpack_from(sent, pos)
                pos += 16 + length
                replies.append(wire.header(0x02, 20, rid, len(REPLY_BODY)) + REPLY_BODY)
            if replies:
                conn.data_received(b"".join(replies))
        h.io.flush()  # type: ignore[attr-defined]
        h.upstreams.sweep(0.0)  # type: ignore[attr-defined]
        t.written.clear()

    return run  # type: ignore[return-value]


def _rbac_50() -> RbacFilter:
    """50 ALLOW policies of the DubboAuthorizationPolicy kind (an interface and a method, from one
    principal); the request matches only the last: every policy is evaluated."""
    policies = []
    for i in range(50):
        iface = IFACE if i == 49 else f"org.example.Service{i}"
        method = "sayHello" if i == 49 else f"method{i}"
        permission = RbacRule(RbacOp.AND, (
            RbacRule(RbacOp.REQUEST, matcher=AttributeMatcher("interface", MatchKind.EXACT, iface)),
            RbacRule(RbacOp.REQUEST, matcher=AttributeMatcher("method", MatchKind.EXACT, method)),
        ))  # fmt: skip
        policies.append(RbacPolicy(f"p{i}", (permission,), (RbacRule(RbacOp.ANY),)))
    return RbacFilter("authz", RbacAction.ALLOW, tuple(policies))


CASES = {
    "no_policy": (RouteRule("r", (), RouteAction(cluster="c")), None),
    "local_rate_limit": (RouteRule("r", (), RouteAction(cluster="c")), {"local_rate_limit": LocalRateLimit((), TokenBucket(10**9, 10**9, 1.0))}),
    "mirror_100pct": (RouteRule("r", (), RouteAction(cluster="c"), mirrors=(MirrorPolicy("m", 1.0),)), None),
    "retry_policy": (RouteRule("r", (), RouteAction(cluster="c"), retry=RetryPolicy(2)), None),
    "fault_0pct": (RouteRule("r", (), RouteAction(cluster="c"), fault=FaultPolicy(0.0, 0.0, "internal", 0.0)), None),
    "access_log": (RouteRule("r", (), RouteAction(cluster="c")), {"access_log": (AccessLog("/dev/null", (("m", "%REQ(method)%"),)),)}),
    "rbac_50_policies": (RouteRule("r", (), RouteAction(cluster="c")), {"rbac": (_rbac_50(),)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_policy_cost_per_16_requests(benchmark: object, case: str) -> None:
    rule, extra = CASES[case]
    h = _harness(rule, extra)
    run = _cycle(h)
    random.seed(1)
    benchmark(run)  # type: ignore[operator]
    assert h.ctx.stats.responses >= 16  # type: ignore[attr-defined]
