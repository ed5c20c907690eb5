"""The compiled filter chain: one request path, and no stage bypassed by forwarded pipelines."""

from __future__ import annotations

import random

from metaprotocol.config.model import (
    AttributeMatcher,
    ClusterConfig,
    CodecRef,
    Endpoint,
    FaultPolicy,
    GlobalRateLimit,
    ListenerConfig,
    LocalRateLimit,
    MatchKind,
    RouteAction,
    RouteConfig,
    RouteRule,
    TokenBucket,
)
from metaprotocol.proxy.chain import Stage
from metaprotocol.proxy.context import ListenerContext, Pending
from metaprotocol.proxy.policies import RateLimiter
from metaprotocol.proxy.session import DownstreamSession
from metaprotocol.proxy.upstream import Upstreams
from metaprotocol.router import RouteTable
from metaprotocol.spi import ErrorKind
from metaprotocol_codecs.redis import RedisCodecFactory
from tests.fakes import FakeIO, FakeTransport
from tests.lenprefix import LenPrefixFactory

GET = b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n"


def get(key: bytes) -> bytes:
    return GET % (len(key), key)


class DenyKeys(Stage):
    """A per-request policy added to a listener (authorization will be one): requests for keys
    with a prefix are refused with the protocol's error."""

    name = "deny_keys"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen = 0

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        self.seen += p.count
        if p.request.metadata.get("key", "").startswith(self.prefix):
            session.local_error(p, ErrorKind.BAD_REQUEST, "denied")
            return False
        return True


class CountUnits(Stage):
    """A stage that reads no metadata (like admission): it lets pipelines be forwarded."""

    name = "count_units"
    per_request = False

    def __init__(self) -> None:
        self.units = 0

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        self.units += 1
        return True


def redis_listener(*stages: Stage, rule: RouteRule | None = None, factory: object = None) -> tuple[ListenerContext, FakeIO]:
    io = FakeIO()
    upstreams = Upstreams(io, {"c": ClusterConfig("c", (Endpoint("127.0.0.1", 9000),))})  # type: ignore[arg-type]
    io.upstreams = upstreams  # type: ignore[assignment]
    factory = factory or RedisCodecFactory()
    lst = ListenerConfig("l", "127.0.0.1", 0, CodecRef(factory.name), "l")  # type: ignore[attr-defined]
    table = RouteTable(RouteConfig("r", (rule or RouteRule("all", (), RouteAction(cluster="c")),)))
    builders = [lambda ctx, index, s=s: s for s in stages]
    ctx = ListenerContext(lst, factory, table, upstreams, io, random.Random(1), stages=builders)  # type: ignore[arg-type]
    return ctx, io


def connect(ctx: ListenerContext) -> tuple[DownstreamSession, FakeTransport]:
    s = DownstreamSession(ctx)
    t = FakeTransport()
    s.connection_made(t)
    return s, t


def upstream_bytes(io: FakeIO) -> tuple[object, FakeTransport]:
    conn = io.connects[0][0]
    t = FakeTransport()
    conn.connection_made(t)
    io.flush()
    return conn, t


def test_a_listener_runs_only_the_stages_it_uses() -> None:
    ctx, _ = redis_listener()
    assert ctx.chain.names() == ["admission", "router"]
    assert ctx.chain.on_finish == ()
    ctx.limiter = RateLimiter(LocalRateLimit((), TokenBucket(10, 10, 1.0)), 0.0)
    ctx.apply_global_limit(GlobalRateLimit("d", "rls", (("key", "key"),)))
    ctx.access_log = lambda record: None
    assert ctx.chain.names() == ["local_rate_limit", "admission", "global_rate_limit", "router"]
    assert len(ctx.chain.on_finish) == 1
    ctx.limiter = None
    ctx.apply_global_limit(None)
    ctx.access_log = None
    assert ctx.chain.names() == ["admission", "router"]


def test_a_per_request_stage_is_never_bypassed_by_forwarded_pipelines() -> None:
    deny = DenyKeys("secret")
    ctx, io = redis_listener(deny)
    assert not ctx.forwards_pipelines()  # the stage decides per request, so runs go one by one
    s, t = connect(ctx)
    s.data_received(get(b"a") + get(b"secret1") + get(b"b") + get(b"secret2") + get(b"c"))
    conn, up = upstream_bytes(io)
    assert up.take() == get(b"a") + get(b"b") + get(b"c")  # the denied requests never left
    assert deny.seen == 5
    conn.data_received(b"$1\r\nA\r\n$1\r\nB\r\n$1\r\nC\r\n")  # type: ignore[attr-defined]
    io.flush()
    assert t.take() == b"$1\r\nA\r\n-ERR denied\r\n$1\r\nB\r\n-ERR denied\r\n$1\r\nC\r\n"
    assert ctx.stats.requests == 5 and ctx.stats.errors["bad_request"] == 2 and ctx.stats.active_requests == 0


def test_a_stage_that_reads_no_metadata_keeps_pipelines_forwarded_and_sees_each_unit() -> None:
    units = CountUnits()
    ctx, io = redis_listener(units)
    assert ctx.forwards_pipelines() and ctx.chain.names() == ["admission", "count_units", "router"]
    s, t = connect(ctx)
    s.data_received(get(b"a") + get(b"b") + get(b"c"))
    conn, up = upstream_bytes(io)
    assert up.take() == get(b"a") + get(b"b") + get(b"c")
    assert units.units == 1 and len(conn.fifo) == 1  # type: ignore[attr-defined]  # one unit, one stage pass
    conn.data_received(b"$1\r\nA\r\n$1\r\nB\r\n$1\r\nC\r\n")  # type: ignore[attr-defined]
    io.flush()
    assert t.take() == b"$1\r\nA\r\n$1\r\nB\r\n$1\r\nC\r\n"


def test_route_level_policies_take_pipelines_off_the_forwarded_path() -> None:
    match = RouteRule("keyed", (AttributeMatcher("key", MatchKind.PREFIX, "a"),), RouteAction(cluster="c"))
    fault = RouteRule("faulty", (), RouteAction(cluster="c"), fault=FaultPolicy(abort_fraction=1.0, abort_kind="over_limit"))
    for rule in (match, fault):
        ctx, _ = redis_listener(rule=rule)
        assert not ctx.forwards_pipelines() and ctx.chain.router is not None and ctx.chain.router.per_request
    ctx, io = redis_listener(rule=fault)
    s, t = connect(ctx)
    s.data_received(get(b"a") + get(b"b"))
    io.flush()
    assert t.take() == b"-ERR fault injected\r\n" * 2 and not io.connects  # the fault saw each request


def test_a_multiplexed_protocol_never_forwards_pipelines() -> None:
    ctx, _ = redis_listener(factory=LenPrefixFactory())
    assert not ctx.forwards_pipelines() and ctx.chain.names() == ["admission", "router"]


def test_a_forwarded_pipeline_cut_part_way_is_answered_by_the_codec_for_the_rest() -> None:
    ctx, io = redis_listener()
    s, t = connect(ctx)
    s.data_received(get(b"a") + get(b"b") + get(b"c") + get(b"d"))
    conn, _ = upstream_bytes(io)
    conn.data_received(b"$1\r\nA\r\n")  # type: ignore[attr-defined]
    conn.connection_lost(None)  # type: ignore[attr-defined]
    io.flush()
    out = t.take()
    assert out.startswith(b"$1\r\nA\r\n") and out.count(b"-ERR ") == 3 and out.count(b"\r\n") == 5
    assert ctx.stats.errors["upstream_reset"] == 3
