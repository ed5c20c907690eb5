"""EXCLUSIVE correlation (one request at a time per upstream connection), the pool's in-flight
accounting, and the abort of a connection whose reply cannot be read."""

from __future__ import annotations

from metaprotocol.config.model import CircuitBreakers, ClusterConfig, Endpoint, RouteAction, RouteRule
from tests.fakes import FakeTransport
from tests.lenprefix import ExclusiveFactory, LenPrefixFactory, frame, parse
from tests.proxy.test_session import Harness, route

POOL = 64  # an EXCLUSIVE pool opens at least this many connections per endpoint


def request(rid: int, **md: str) -> bytes:
    return frame(0, rid, md or {"m": "x"})


def reply_to(raw: bytes) -> bytes:
    _, rid, _, _ = parse(raw)
    return frame(1, rid, {}, b"ok%d" % rid)


def test_each_request_has_a_connection_of_its_own_and_extra_ones_wait_for_one() -> None:
    h = Harness(ExclusiveFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(b"".join(request(i) for i in range(1, POOL + 3)))
    cs = h.upstreams.clusters["c"]
    pool = next(iter(h.upstreams.pools.values()))
    assert len(pool.conns) == POOL and len(pool.waiting) == 2
    assert cs.in_flight == POOL + 2 and cs.active == [POOL + 2]  # waiting requests count as in flight
    h.connect_all()
    for conn in list(pool.conns):  # each connection carries exactly one request
        assert conn.outstanding == 1
    first = pool.conns[0]
    sent = h.upstream_transports[id(first)].take()
    first.data_received(reply_to(sent))
    h.io.flush()
    assert len(pool.waiting) == 1 and first.outstanding == 1  # the freed connection took a waiter
    handed = h.upstream_transports[id(first)].take()
    assert parse(handed)[1] == POOL + 1
    assert cs.in_flight == POOL + 1
    first.data_received(reply_to(handed))
    h.io.flush()
    for conn in list(pool.conns):
        transport = h.upstream_transports[id(conn)]
        while conn.outstanding:
            data = transport.take()
            if not data:
                break
            conn.data_received(reply_to(data))
            h.io.flush()
    assert cs.in_flight == 0 and cs.active == [0] and not pool.waiting
    assert len(pool.idle) == POOL
    out = t.take()
    rids = []
    while out:
        n = int.from_bytes(out[:4], "big") + 4
        rids.append(parse(out[:n])[1])
        out = out[n:]
    assert rids == list(range(1, POOL + 3))  # the client's replies in its order
    assert h.ctx.stats.active_requests == 0 and s.inflight == 0


def test_an_idle_connection_is_reused_and_a_lost_one_hands_its_waiter_to_a_new_connection() -> None:
    h = Harness(ExclusiveFactory(), (route("a", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(request(1))
    h.connect_all()
    pool = next(iter(h.upstreams.pools.values()))
    conn = pool.conns[0]
    conn.data_received(reply_to(h.upstream_transports[id(conn)].take()))
    h.io.flush()
    assert pool.idle == [conn]
    s.data_received(request(2))
    assert len(pool.conns) == 1 and conn.outstanding == 1  # the idle one, no new connection
    s.data_received(b"".join(request(i) for i in range(3, POOL + 3)))
    assert len(pool.waiting) == 1
    h.connect_all()
    conn.connection_lost(None)  # request 2 fails; the waiter goes to a fresh connection
    assert not pool.waiting and len(pool.conns) == POOL
    h.connect_all()
    fresh = pool.conns[-1]
    assert parse(h.upstream_transports[id(fresh)].take())[1] == POOL + 2
    assert h.upstreams.clusters["c"].in_flight == POOL
    assert h.ctx.stats.errors["upstream_reset"] == 1


def test_a_timeout_closes_the_exclusive_connection_and_the_pool_recovers() -> None:
    h = Harness(ExclusiveFactory(), (RouteRule("a", (), RouteAction(cluster="c", timeout=1.0)),), {"c": 1})
    s, t = h.client()
    s.data_received(request(7))
    h.connect_all()
    pool = next(iter(h.upstreams.pools.values()))
    conn = pool.conns[0]
    h.io.advance(1.5)
    _, rid, md, _ = parse(t.take())
    assert (rid, md["error"]) == (7, "upstream_timeout")
    assert h.upstream_transports[id(conn)].closed and conn not in pool.conns and conn not in pool.idle
    assert h.upstreams.clusters["c"].in_flight == 0
    conn.data_received(reply_to(request(7)))  # a late reply on the closed connection: ignored
    h.io.flush()
    assert t.take() == b""


def test_the_pending_requests_breaker_bounds_the_waiting_queue() -> None:
    h = Harness(ExclusiveFactory(), (route("a", "c"),), {"c": 1})
    cfg = ClusterConfig("c", (Endpoint("127.0.0.1", 9000),), circuit_breakers=CircuitBreakers(max_pending_requests=1))
    h.upstreams.update_clusters({"c": cfg})
    s, t = h.client()
    s.data_received(b"".join(request(i) for i in range(1, POOL + 3)))
    pool = next(iter(h.upstreams.pools.values()))
    assert len(pool.waiting) == 1
    assert h.upstreams.cluster_stats["c"].errors["overflow"] == 1
    assert h.upstreams.clusters["c"].in_flight == POOL + 1  # the refused one was never counted


def test_an_unreadable_reply_fails_every_request_on_that_connection_and_only_there() -> None:
    h = Harness(LenPrefixFactory(), (route("a", "c"),), {"c": 2})
    s1, t1 = h.client()
    s1.data_received(frame(0, 1, {"m": "x"}) + frame(0, 2, {"m": "x"}) + frame(0, 3, {"m": "x"}))
    h.connect_all()
    conns = [c for c in h.conns() if c.outstanding]  # type: ignore[attr-defined]
    assert len(conns) == 2  # round robin over the two endpoints
    bad, good = conns
    bad.data_received(b"\x00\x00\x00\x03\x09garbage")  # type: ignore[attr-defined]  # an impossible header
    h.io.flush()
    assert h.upstream_transports[id(bad)].closed and not h.upstream_transports[id(good)].closed
    failed = bad.outstanding  # type: ignore[attr-defined]
    assert failed == 0
    out = t1.take()
    errors = out.count(b"error=bad_response")
    assert errors >= 1
    waiting = good.outstanding  # type: ignore[attr-defined]
    for rid in list(good.inflight):  # type: ignore[attr-defined]
        good.data_received(frame(1, rid, {}, b"fine"))  # type: ignore[attr-defined]
    h.io.flush()
    assert t1.take().count(b"fine") == waiting
    assert errors + waiting == 3
    assert h.upstreams.cluster_stats["c"].response_decoding_errors == 1
    assert h.upstreams.clusters["c"].in_flight == 0
    assert isinstance(h.upstream_transports[id(good)], FakeTransport)
