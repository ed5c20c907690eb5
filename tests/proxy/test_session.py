"""The sans-IO core driven byte by byte: no sockets, no event loop."""

from __future__ import annotations

import random

from metaprotocol.cluster.state import ClusterState
from metaprotocol.config.model import (
    CircuitBreakers,
    ClusterConfig,
    CodecRef,
    Endpoint,
    GlobalRateLimit,
    ListenerConfig,
    LocalRateLimit,
    TokenBucket,
    RouteAction,
    RouteConfig,
    RetryPolicy,
    RouteRule,
    AttributeMatcher,
    LbPolicy,
    MatchKind,
)
from metaprotocol.proxy.context import ListenerContext
from metaprotocol.proxy.policies import RateLimiter
from metaprotocol.proxy.session import DownstreamSession
from metaprotocol.proxy.upstream import Upstreams
from metaprotocol.router import RouteTable
from metaprotocol.spi import CodecFactory
from metaprotocol_codecs.redis import RedisCodecFactory
from tests.fakes import FakeIO, FakeTransport
from tests.lenprefix import LenPrefixFactory, frame, parse


class Harness:
    def __init__(
        self,
        factory: CodecFactory,
        routes: tuple[RouteRule, ...],
        clusters: dict[str, int],
        max_pending: int = 4096,
    ) -> None:
        self.io = FakeIO()
        cfgs = {
            name: ClusterConfig(name, tuple(Endpoint("127.0.0.1", 9000 + i) for i in range(n)))
            for name, n in clusters.items()
        }
        self.upstreams = Upstreams(self.io, cfgs)  # type: ignore[arg-type]
        self.io.upstreams = self.upstreams  # type: ignore[assignment]
        lst = ListenerConfig("l", "127.0.0.1", 0, CodecRef(factory.name), "l", max_pending_per_connection=max_pending)
        self.ctx = ListenerContext(lst, factory, RouteTable(RouteConfig("r", routes)), self.upstreams, self.io, random.Random(1))  # type: ignore[arg-type]
        self.upstream_transports: dict[int, FakeTransport] = {}

    def client(self) -> tuple[DownstreamSession, FakeTransport]:
        s = DownstreamSession(self.ctx)
        t = FakeTransport()
        s.connection_made(t)
        return s, t

    def connect_all(self) -> None:
        for conn, _, _port in self.io.connects:
            if conn.transport is None and not conn.closed:
                t = FakeTransport()
                self.upstream_transports[id(conn)] = t
                conn.connection_made(t)
        self.io.flush()

    def conns(self) -> list[object]:
        return [c for c, _, _ in self.io.connects]

    def conn_for(self, cluster: str) -> object:
        return next(c for c, _, _ in self.io.connects if c.pool.cluster.config.name == cluster)


def route(name: str, cluster: str, *matchers: AttributeMatcher, timeout: float = 15.0, mutation: tuple[tuple[str, str], ...] = ()) -> RouteRule:
    return RouteRule(name, matchers, RouteAction(cluster=cluster, timeout=timeout), request_mutation=mutation)


# -- request-id (multiplexed) mode ------------------------------------------------------------


def test_multiplexing_rewrites_ids_so_clients_never_collide() -> None:
    h = Harness(LenPrefixFactory(), (route("all", "c"),), {"c": 1})
    (s1, t1), (s2, t2) = h.client(), h.client()
    s1.data_received(frame(0, 7, {"method": "a"}))
    s2.data_received(frame(0, 7, {"method": "b"}))  # same downstream id on another client
    assert len(h.io.connects) == 1  # one shared upstream connection
    h.connect_all()
    conn = h.conns()[0]
    sent = h.upstream_transports[id(conn)].take()
    ids = []
    while sent:
        n = int.from_bytes(sent[:4], "big") + 4
        ids.append(parse(sent[:n])[1])
        sent = sent[n:]
    assert len(set(ids)) == 2
    # Answer out of order: each reply goes back to its own client with its own id.
    conn.data_received(frame(1, ids[1], {}, b"for-b") + frame(1, ids[0], {}, b"for-a"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t1.take()) == (1, 7, {}, b"for-a")
    assert parse(t2.take()) == (1, 7, {}, b"for-b")


def test_route_not_found_gets_codec_error_reply_echoing_id() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c", AttributeMatcher("method", MatchKind.EXACT, "a")),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 42, {"method": "zzz"}))
    kind, rid, md, _ = parse(t.take())
    assert (kind, rid, md) == (5, 42, {"error": "route_not_found"})
    assert h.ctx.stats.errors["route_not_found"] == 1


def test_unknown_cluster_and_heartbeat_and_oneway() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "nope"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(3, 5) + frame(0, 6, {"m": "x"}))
    out = t.take()
    first_len = int.from_bytes(out[:4], "big") + 4
    assert parse(out[:first_len])[:2] == (4, 5)  # heartbeat answered, never routed
    assert parse(out[first_len:])[2] == {"error": "cluster_not_found"}
    h2 = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 1})
    s2, t2 = h2.client()
    s2.data_received(frame(2, 9, {"m": "x"}))
    h2.connect_all()
    assert s2.inflight == 0 and t2.take() == b""
    assert parse(h2.upstream_transports[id(h2.conns()[0])].take())[0] == 2


def test_request_mutation_reaches_upstream() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c", mutation=(("foo", "bar"),)),), {"c": 1})
    s, _ = h.client()
    s.data_received(frame(0, 1, {"method": "m"}))
    h.connect_all()
    _, _, md, _ = parse(h.upstream_transports[id(h.conns()[0])].take())
    assert md == {"method": "m", "foo": "bar"}


def test_timeout_gives_error_reply_and_late_response_is_dropped() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c", timeout=0.5),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"method": "m"}))
    h.connect_all()
    conn = h.conns()[0]
    upstream_id = parse(h.upstream_transports[id(conn)].take())[1]
    h.io.advance(0.4)
    assert t.take() == b""
    h.io.advance(0.2)
    assert parse(t.take())[2] == {"error": "upstream_timeout"}
    conn.data_received(frame(1, upstream_id, {}, b"late"))  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b""
    assert s.inflight == 0


def test_upstream_reset_fails_only_its_requests() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "a", AttributeMatcher("m", MatchKind.EXACT, "a")), route("b", "b")), {"a": 1, "b": 1})
    (s1, t1), (s2, t2) = h.client(), h.client()
    s1.data_received(frame(0, 1, {"m": "a"}))
    s2.data_received(frame(0, 2, {"m": "b"}))
    h.connect_all()
    conn_a, conn_b = h.conn_for("a"), h.conn_for("b")
    conn_a.connection_lost(ConnectionResetError())  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t1.take())[2] == {"error": "upstream_reset"}
    b_id = parse(h.upstream_transports[id(conn_b)].take())[1]
    conn_b.data_received(frame(1, b_id, {}, b"ok"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t2.take())[3] == b"ok"


def test_connect_failure_replies_and_backs_off_endpoint() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 2})
    s, t = h.client()
    s.data_received(frame(0, 1, {}))
    conn, _, port = h.io.connects[0]
    conn.connect_failed(ConnectionRefusedError())
    h.io.flush()
    assert parse(t.take())[2] == {"error": "connect_failure"}
    cs = h.upstreams.clusters["c"]
    assert cs.healthy.count(False) == 1
    # Next requests go to the healthy endpoint only.
    for i in range(4):
        s.data_received(frame(0, 10 + i, {}))
    assert {p for _, _, p in h.io.connects[1:]} == {9000 if port == 9001 else 9001}
    h.io.advance(1.0)  # back-off over
    assert all(cs.healthy)


def test_malformed_frame_gets_error_reply_after_earlier_replies_and_closes() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {}) + b"\xff\xff\xff\xff\x09garbage")
    assert h.ctx.stats.request_decoding_errors == 1
    assert not t.closed  # request 1 is still in flight
    h.connect_all()
    conn = h.conns()[0]
    rid = parse(h.upstream_transports[id(conn)].take())[1]
    conn.data_received(frame(1, rid, {}, b"answer"))  # type: ignore[attr-defined]
    h.io.flush()
    out = t.take()
    assert b"answer" in out and b"bad_request" in out
    assert t.closed


def test_backpressure_pauses_reading_at_max_pending() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 1}, max_pending=4)
    s, t = h.client()
    s.data_received(b"".join(frame(0, i, {}) for i in range(10)))
    assert t.paused and s.inflight == 4
    h.connect_all()
    conn = h.conns()[0]
    answered = 0
    for expected_inflight_after in (4, 2, 0):
        sent = h.upstream_transports[id(conn)].take()
        ids = []
        while sent:
            n = int.from_bytes(sent[:4], "big") + 4
            ids.append(parse(sent[:n])[1])
            sent = sent[n:]
        conn.data_received(b"".join(frame(1, i, {}) for i in ids))  # type: ignore[attr-defined]
        h.io.flush()
        answered += len(ids)
        # Replies free slots: reading resumes and the buffered requests go out, up to the limit.
        assert s.inflight == expected_inflight_after
    assert answered == 10 and not t.paused
    out = t.take()
    assert out.count(b"|") == 10


# -- ordered (pipelined) mode with the Redis codec ---------------------------------------------


def test_ordered_replies_return_in_request_order_across_clusters() -> None:
    h = Harness(
        RedisCodecFactory(),
        (route("a", "a", AttributeMatcher("key", MatchKind.PREFIX, "a")), route("b", "b")),
        {"a": 1, "b": 1},
    )
    s, t = h.client()
    s.data_received(b"*2\r\n$3\r\nGET\r\n$2\r\na1\r\n*2\r\n$3\r\nGET\r\n$2\r\nb1\r\n*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$2\r\na2\r\n")
    h.connect_all()
    conn_a, conn_b = h.conn_for("a"), h.conn_for("b")
    conn_b.data_received(b"$2\r\nB1\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b""  # a1 is not answered yet: nothing may overtake it
    conn_a.data_received(b"$2\r\nA1\r\n$2\r\nA2\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$2\r\nA1\r\n$2\r\nB1\r\n+PONG\r\n$2\r\nA2\r\n"


def test_ordered_timeout_closes_the_connection_and_the_next_request_uses_a_new_one() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c", timeout=1.0),), {"c": 1})
    s, t = h.client()
    s.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")
    h.connect_all()
    first = h.conns()[0]
    h.io.advance(1.5)
    assert t.take() == b"-ERR upstream request timeout\r\n"
    assert h.upstream_transports[id(first)].closed  # a lost reply would misalign the FIFO
    s.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\ny\r\n")
    h.connect_all()
    second = h.conns()[-1]
    assert second is not first
    second.data_received(b"$1\r\nY\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nY\r\n"
    assert h.upstreams.cluster_stats["c"].timeout_closes == 1


def test_fanout_merges_replies_in_key_order() -> None:
    h = Harness(
        RedisCodecFactory(),
        (route("a", "a", AttributeMatcher("key", MatchKind.PREFIX, "a")), route("b", "b")),
        {"a": 1, "b": 1},
    )
    s, t = h.client()
    s.data_received(b"*4\r\n$4\r\nMGET\r\n$2\r\nb1\r\n$2\r\na1\r\n$2\r\nb2\r\n")
    h.connect_all()
    conn_a, conn_b = h.conn_for("a"), h.conn_for("b")
    sent_b = h.upstream_transports[id(conn_b)].take()
    assert sent_b == b"*2\r\n$3\r\nGET\r\n$2\r\nb1\r\n*2\r\n$3\r\nGET\r\n$2\r\nb2\r\n"
    conn_a.data_received(b"$-1\r\n")  # type: ignore[attr-defined]
    conn_b.data_received(b"$2\r\nv1\r\n$2\r\nv2\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"*3\r\n$2\r\nv1\r\n$-1\r\n$2\r\nv2\r\n"


def test_fanout_to_one_shard_sends_the_command_whole() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    cmd = b"*3\r\n$3\r\nDEL\r\n$1\r\nx\r\n$1\r\ny\r\n"
    s.data_received(cmd)
    h.connect_all()
    assert h.upstream_transports[id(h.conns()[0])].take() == cmd
    assert h.ctx.stats.fanout_requests == 0


def test_quit_answers_then_closes_after_pending_replies() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n*1\r\n$4\r\nQUIT\r\n*1\r\n$4\r\nPING\r\n")
    h.connect_all()
    assert not t.closed
    h.conns()[0].data_received(b"$1\r\nX\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nX\r\n+OK\r\n"  # the PING after QUIT is never read
    assert t.closed


def test_one_write_per_batch() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n" * 16)
    h.connect_all()
    up = h.upstream_transports[id(h.conns()[0])]
    assert up.writes == 1
    h.conns()[0].data_received(b"$1\r\nX\r\n" * 16)  # type: ignore[attr-defined]
    h.io.flush()
    assert t.writes == 1 and t.take() == b"$1\r\nX\r\n" * 16


# -- forwarded pipelines (ORDERED codecs with ServerCodec.batch) --------------------------------

GET = b"*2\r\n$3\r\nGET\r\n$1\r\n%b\r\n"


def test_a_pipeline_goes_upstream_as_one_unit_around_local_answers() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    assert h.ctx.forwards_pipelines()
    s, t = h.client()
    s.data_received(GET % b"a" + GET % b"b" + b"*1\r\n$4\r\nPING\r\n" + GET % b"c" + GET % b"d" + GET % b"e")
    h.connect_all()
    conn = h.conns()[0]
    assert h.upstream_transports[id(conn)].take() == GET % b"a" + GET % b"b" + GET % b"c" + GET % b"d" + GET % b"e"
    assert len(conn.fifo) == 2 and h.ctx.stats.requests == 6 and h.ctx.stats.active_requests == 5  # type: ignore[attr-defined]
    conn.data_received(b"$1\r\nA\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b""  # half a unit: nothing yet, and the PONG waits its turn
    conn.data_received(b"$1\r\nB\r\n$1\r\nC\r\n$1\r\nD\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nA\r\n$1\r\nB\r\n+PONG\r\n"
    conn.data_received(b"-ERR wrong\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nC\r\n$1\r\nD\r\n-ERR wrong\r\n"
    assert h.ctx.stats.responses == 5 and h.ctx.stats.active_requests == 0 and s.inflight == 0
    assert h.ctx.stats.latency.count == 5


def test_a_pipeline_cut_by_a_reset_keeps_the_replies_that_came() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(GET % b"a" + GET % b"b" + GET % b"c")
    h.connect_all()
    conn = h.conns()[0]
    conn.data_received(b"$1\r\nA\r\n")  # type: ignore[attr-defined]
    conn.connection_lost(None)  # type: ignore[attr-defined]
    h.io.flush()
    out = t.take()
    assert out.startswith(b"$1\r\nA\r\n") and out.count(b"-ERR upstream") == 2 and out.count(b"\r\n") == 4
    assert h.ctx.stats.errors["upstream_reset"] == 2  # one per request left unanswered...
    s.data_received(GET % b"x")  # ...and the client goes on
    h.connect_all()
    h.conns()[-1].data_received(b"$1\r\nX\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nX\r\n"


def test_a_timed_out_pipeline_answers_every_request_and_closes_the_connection() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c", timeout=1.0),), {"c": 1})
    s, t = h.client()
    s.data_received(GET % b"a" + GET % b"b")
    h.connect_all()
    first = h.conns()[0]
    h.io.advance(1.5)
    assert t.take() == b"-ERR upstream request timeout\r\n" * 2
    assert h.upstream_transports[id(first)].closed
    s.data_received(GET % b"y")
    h.connect_all()
    h.conns()[-1].data_received(b"$1\r\nY\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nY\r\n"


def test_pipelines_are_forwarded_only_when_nothing_is_decided_per_request() -> None:
    plain = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 2})
    assert plain.ctx.forwards_pipelines()
    by_key = Harness(RedisCodecFactory(), (route("a", "c", AttributeMatcher("key", MatchKind.PREFIX, "a")), route("b", "c")), {"c": 1})
    assert not by_key.ctx.forwards_pipelines()
    mutated = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 1})  # REQUEST_ID correlation
    assert not mutated.ctx.forwards_pipelines()
    plain.ctx.access_log = lambda record: None
    assert not plain.ctx.forwards_pipelines()
    plain.ctx.access_log = None
    assert plain.ctx.forwards_pipelines()
    plain.ctx.limiter = RateLimiter(LocalRateLimit((), TokenBucket(10, 10, 1.0)), 0.0)  # a live limit update
    assert not plain.ctx.forwards_pipelines()
    plain.ctx.limiter = None
    plain.ctx.apply_global_limit(GlobalRateLimit("d", "rls", (("key", "key"),)))
    assert not plain.ctx.forwards_pipelines()
    plain.ctx.apply_global_limit(None)
    assert plain.ctx.forwards_pipelines()
    hashed = {"c": ClusterConfig("c", (Endpoint("127.0.0.1", 9000),), lb_policy=LbPolicy.RING_HASH)}
    plain.upstreams.update_clusters(hashed)  # a cluster update is seen at once
    assert not plain.ctx.forwards_pipelines()
    s, _ = plain.client()
    s.data_received(GET % b"a" + GET % b"b")
    plain.connect_all()
    assert len(plain.conns()[0].fifo) == 2  # type: ignore[attr-defined]


# -- retry limits -------------------------------------------------------------------------------


def _frames(data: bytes) -> list[tuple[int, int, dict[str, str], bytes]]:
    out = []
    while data:
        n = int.from_bytes(data[:4], "big") + 4
        out.append(parse(data[:n]))
        data = data[n:]
    return out


def test_max_retries_caps_retries_in_progress_and_counts_overflow_and_success() -> None:
    retry = RetryPolicy(1, frozenset({"error"}), retry_non_idempotent=True)
    h = Harness(LenPrefixFactory(), (RouteRule("r", (), RouteAction(cluster="c"), retry=retry),), {"c": 1})
    h.upstreams.update_clusters({"c": ClusterConfig("c", (Endpoint("127.0.0.1", 9000),), circuit_breakers=CircuitBreakers(max_retries=1))})
    s, t = h.client()
    s.data_received(frame(0, 1) + frame(0, 2) + frame(0, 3))
    h.connect_all()
    conn = h.conns()[0]
    upstream = h.upstream_transports[id(conn)]
    first = [rid for _, rid, _, _ in _frames(upstream.take())]
    conn.data_received(b"".join(frame(5, rid, {"error": "boom"}) for rid in first))  # type: ignore[attr-defined]
    h.io.flush()
    # One retry fits; the two others overflow and the client gets their error replies.
    assert sorted(rid for _, rid, _, _ in _frames(t.take())) == [2, 3]
    cluster = h.upstreams.clusters["c"]
    stats = h.upstreams.cluster_stats["c"]
    assert (cluster.active_retries, stats.retries, stats.retry_overflows) == (1, 1, 2)
    (retried,) = [rid for _, rid, _, _ in _frames(upstream.take())]
    conn.data_received(frame(1, retried, {}, b"ok"))  # type: ignore[attr-defined]
    h.io.flush()
    assert _frames(t.take()) == [(1, 1, {}, b"ok")]
    assert (cluster.active_retries, stats.retry_successes) == (0, 1)


def test_retry_budget_scales_with_requests_in_flight() -> None:
    budget = CircuitBreakers(retry_budget_percent=50.0, min_retry_concurrency=1)
    state = ClusterState(ClusterConfig("c", (Endpoint("127.0.0.1", 9000),), circuit_breakers=budget))
    assert state.retry_allowed()  # the floor: min_retry_concurrency
    state.active_retries = 1
    assert not state.retry_allowed()
    state.in_flight = 10  # 50 % of 10 in flight
    assert state.retry_allowed()
    state.active_retries = 5
    assert not state.retry_allowed()
    assert ClusterState(ClusterConfig("c", ())).retry_allowed()  # no limits configured


def test_a_push_between_the_replies_of_a_pipeline_is_not_taken_for_one() -> None:
    h = Harness(RedisCodecFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(GET % b"a" + GET % b"b")
    h.connect_all()
    conn = h.conns()[0]
    conn.data_received(b"$1\r\nA\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n$1")  # type: ignore[attr-defined]
    conn.data_received(b"\r\nB\r\n")  # type: ignore[attr-defined]
    h.io.flush()
    assert t.take() == b"$1\r\nA\r\n$1\r\nB\r\n"
    assert h.upstreams.cluster_stats["c"].unsolicited == 1 and h.upstreams.cluster_stats["c"].responses == 2


def test_local_replies_made_when_reading_resumes_are_flushed() -> None:
    """A paused client's buffered heartbeat is answered when reading resumes after its write
    side drained, without waiting for another event."""
    from metaprotocol_codecs.dubbo import DubboCodecFactory, wire

    h = Harness(DubboCodecFactory(), (route("a", "c"),), {"c": 1}, max_pending=2)
    s, t = h.client()
    inv = wire.Invocation("a.B", "m", "Ljava/lang/String;", ["x"], {}, "1.0.0")
    s.data_received(wire.build_request(1, inv) + wire.build_request(2, inv) + wire.build_heartbeat(3))
    h.connect_all()
    assert s.read_paused and s.buffer.pending()  # two in flight: the heartbeat waits unread
    s.pause_writing()
    conn = h.conns()[0]
    sent = b"".join(h.upstream_transports[id(conn)].written)
    for rid in (1, 2):
        body = wire.build_response(rid, wire.Result(value="ok"))[16:]
        conn.data_received(wire.header(0x02, wire.OK, rid, len(body)) + body)  # type: ignore[attr-defined]
    assert sent and s.read_paused  # still paused: the client is not reading
    h.io.flush()
    t.written.clear()
    s.resume_writing()
    h.io.flush()
    assert b"".join(t.written) == wire.build_heartbeat(3, reply=True)
