"""The core's guarantees against bad codecs, bad upstreams and overload, driven without sockets."""

from __future__ import annotations

import logging
from collections.abc import Hashable

import pytest

from metaprotocol.config.model import ClusterConfig, Endpoint, OverloadConfig
from metaprotocol.io.log_limit import RateLimitedLog
from metaprotocol.proxy.overload import Overload
from metaprotocol.spi import DecodeResult, ErrorKind, Message, ReadBuffer, RemoteProtocolError
from metaprotocol.spi.codec import Mutation
from tests.lenprefix import LenClient, LenPrefixFactory, LenServer, frame, parse
from tests.proxy.test_session import Harness, route


def _ids_sent(data: bytes) -> list[int]:
    ids = []
    while data:
        n = int.from_bytes(data[:4], "big") + 4
        ids.append(parse(data[:n])[1])
        data = data[n:]
    return ids


# -- codec exceptions of an unexpected type -----------------------------------------------------


class _BuggyServer(LenServer):
    """Raises IndexError (a codec bug) on a request whose metadata says ``boom``."""

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        start = buffer.pos
        msg = super().decode(buffer)
        if isinstance(msg, Message) and "boom" in msg.metadata:
            buffer.pos = start
            raise IndexError("index out of range")
        return msg


class _BuggyClient(LenClient):
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        msg = super().decode(buffer)
        if isinstance(msg, Message) and "boom" in msg.metadata:
            raise ValueError("unexpected")
        return msg


class _BadEncodeServer(LenServer):
    def encode(self, response: Message, mutation: Mutation | None = None, request_id: int | None = None) -> bytes | bytearray:
        if "boom" in response.metadata:
            raise KeyError("boom")
        return super().encode(response, mutation, request_id)


class _SkippingClient(LenClient):
    """Steps over a reply marked ``bad`` whole, as a framed codec does with a malformed body."""

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        msg = super().decode(buffer)
        if isinstance(msg, Message) and "bad" in msg.metadata:
            raise RemoteProtocolError("bad body", ErrorKind.BAD_RESPONSE, request=msg, skipped=True)
        return msg


class _SkippingServer(LenServer):
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        msg = super().decode(buffer)
        if isinstance(msg, Message) and "bad" in msg.metadata:
            raise RemoteProtocolError("bad body", ErrorKind.BAD_REQUEST, request=msg, skipped=True)
        return msg


class _Factory(LenPrefixFactory):
    def __init__(self, server: type[LenServer] = LenServer, client: type[LenClient] = LenClient) -> None:
        super().__init__()
        self._server, self._client = server, client

    def server_codec(self) -> LenServer:
        return self._server()

    def client_codec(self, profile: Hashable = None) -> LenClient:
        return self._client()


def test_an_unexpected_decode_exception_is_answered_counted_and_confined_to_its_connection() -> None:
    h = Harness(_Factory(server=_BuggyServer), (route("all", "c"),), {"c": 1})
    (bad, tb), (good, tg) = h.client(), h.client()
    bad.data_received(frame(0, 1, {"m": "a"}) + frame(0, 2, {"boom": "1"}))  # no exception escapes
    good.data_received(frame(0, 9, {"m": "b"}))
    h.connect_all()
    conn = h.conns()[0]
    up_ids = _ids_sent(h.upstream_transports[id(conn)].take())
    assert len(up_ids) == 2  # the request before the bad frame still went upstream
    assert h.ctx.stats.codec_internal_errors == 1
    assert ("codec_internal_error" in {e for e, _ in h.io.reports})
    error = parse(tb.take())
    assert error[0] == 5 and error[2] == {"error": "internal"}
    assert not tb.closed  # the reply it is owed comes first
    conn.data_received(b"".join(frame(1, rid, {}, b"ok") for rid in up_ids))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(tb.take())[1:] == (1, {}, b"ok") and tb.closed
    assert parse(tg.take())[1:] == (9, {}, b"ok") and not tg.closed


def test_an_unexpected_client_decode_exception_closes_that_upstream_connection_only() -> None:
    h = Harness(_Factory(client=_BuggyClient), (route("all", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"m": "a"}) + frame(0, 2, {"m": "b"}))
    h.connect_all()
    conn = h.conns()[0]
    ids = _ids_sent(h.upstream_transports[id(conn)].take())
    conn.data_received(frame(1, ids[0], {"boom": "1"}))  # type: ignore[attr-defined]
    h.io.flush()
    replies = t.take()
    assert h.ctx.stats.codec_internal_errors == 1
    assert h.upstream_transports[id(conn)].closed
    assert {parse(r)[2].get("error") for r in _split(replies)} == {"bad_response"}
    s.data_received(frame(0, 3, {"m": "c"}))  # the client goes on, on a new connection
    h.connect_all()
    assert h.conns()[-1] is not conn


def _split(data: bytes) -> list[bytes]:
    out = []
    while data:
        n = int.from_bytes(data[:4], "big") + 4
        out.append(data[:n])
        data = data[n:]
    return out


def test_an_unexpected_encode_exception_fails_only_that_request() -> None:
    h = Harness(_Factory(server=_BadEncodeServer), (route("all", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"m": "a"}) + frame(0, 2, {"m": "b"}))
    h.connect_all()
    conn = h.conns()[0]
    ids = _ids_sent(h.upstream_transports[id(conn)].take())
    conn.data_received(frame(1, ids[0], {"boom": "1"}) + frame(1, ids[1], {}, b"fine"))  # type: ignore[attr-defined]
    h.io.flush()
    first, second = (parse(r) for r in _split(t.take()))
    assert first[1:3] == (1, {"error": "internal"})
    assert second[1:] == (2, {}, b"fine")
    assert h.ctx.stats.codec_internal_errors == 1 and not t.closed


def test_a_skipped_bad_reply_fails_only_its_request_and_keeps_the_shared_connection() -> None:
    h = Harness(_Factory(client=_SkippingClient), (route("all", "c"),), {"c": 1})
    (s1, t1), (s2, t2) = h.client(), h.client()
    s1.data_received(frame(0, 1, {"m": "a"}))
    s2.data_received(frame(0, 2, {"m": "b"}))
    h.connect_all()
    conn = h.conns()[0]
    ids = _ids_sent(h.upstream_transports[id(conn)].take())
    conn.data_received(frame(1, ids[0], {"bad": "1"}) + frame(1, ids[1], {}, b"ok"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t1.take())[1:3] == (1, {"error": "bad_response"})
    assert parse(t2.take())[1:] == (2, {}, b"ok")
    assert not h.upstream_transports[id(conn)].closed
    assert h.upstreams.cluster_stats["c"].response_decoding_errors == 1


def test_a_skipped_bad_request_is_answered_in_place_and_reading_goes_on() -> None:
    h = Harness(_Factory(server=_SkippingServer), (route("all", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"bad": "1"}) + frame(0, 2, {"m": "b"}))
    assert parse(t.take())[1:3] == (1, {"error": "bad_request"})
    h.connect_all()
    conn = h.conns()[0]
    ids = _ids_sent(h.upstream_transports[id(conn)].take())
    assert len(ids) == 1
    conn.data_received(frame(1, ids[0], {}, b"ok"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t.take())[1:] == (2, {}, b"ok") and not t.closed


# -- dead upstream connections ------------------------------------------------------------------


def test_a_multiplexed_connection_is_replaced_after_consecutive_timeouts() -> None:
    h = Harness(LenPrefixFactory(), (route("all", "c", timeout=1.0),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"m": "a"}))
    h.connect_all()
    dead = h.conns()[0]
    for rid in (2, 3):
        h.io.advance(1.5)
        s.data_received(frame(0, rid, {"m": "a"}))
        h.io.flush()
    assert not h.upstream_transports[id(dead)].closed  # two timeouts: not yet
    h.io.advance(1.5)  # the third in a row
    assert h.upstream_transports[id(dead)].closed
    assert h.upstreams.cluster_stats["c"].timeout_closes == 1
    assert [parse(r)[2]["error"] for r in _split(t.take())] == ["upstream_timeout"] * 3
    s.data_received(frame(0, 4, {"m": "a"}))
    h.connect_all()
    fresh = h.conns()[-1]
    assert fresh is not dead
    (rid,) = _ids_sent(h.upstream_transports[id(fresh)].take())
    fresh.data_received(frame(1, rid, {}, b"ok"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t.take())[1:] == (4, {}, b"ok")


def test_a_reply_between_timeouts_resets_the_count() -> None:
    h = Harness(LenPrefixFactory(), (route("all", "c", timeout=1.0),), {"c": 1})
    s, t = h.client()
    conn = None
    for rid in range(1, 7):
        s.data_received(frame(0, rid, {"m": "a"}))
        h.connect_all()
        conn = h.conns()[0]
        sent = _ids_sent(h.upstream_transports[id(conn)].take())
        if rid % 2 == 0:  # every other request is answered: never 3 timeouts in a row
            conn.data_received(frame(1, sent[-1], {}, b"ok"))  # type: ignore[attr-defined]
        else:
            h.io.advance(1.5)
    assert conn is h.conns()[0] and not h.upstream_transports[id(conn)].closed


def test_zero_disables_closing_on_timeouts() -> None:
    h = Harness(LenPrefixFactory(), (route("all", "c", timeout=1.0),), {"c": 1})
    h.upstreams.update_clusters({"c": ClusterConfig("c", (Endpoint("127.0.0.1", 9000),), max_consecutive_timeouts=0)})
    s, _ = h.client()
    for rid in range(1, 6):
        s.data_received(frame(0, rid, {"m": "a"}))
        h.connect_all()
        h.io.advance(1.5)
    assert len(h.conns()) == 1 and not h.upstream_transports[id(h.conns()[0])].closed


# -- overload -----------------------------------------------------------------------------------


def _bounded(max_pending: int = 0, heap: int = 0, max_connections: int | None = None) -> Harness:
    h = Harness(LenPrefixFactory(), (route("all", "c"),), {"c": 1})
    h.ctx.overload = Overload(OverloadConfig(max_connections, max_pending, heap))
    return h


def test_past_the_process_pending_bound_requests_get_an_immediate_over_limit_reply() -> None:
    h = _bounded(max_pending=2)
    (s1, t1), (s2, t2) = h.client(), h.client()
    s1.data_received(frame(0, 1, {}) + frame(0, 2, {}))
    assert t1.take() == b""
    s2.data_received(frame(0, 3, {}))  # another client: the bound is for the whole process
    assert parse(t2.take())[1:3] == (3, {"error": "over_limit"})
    assert h.ctx.overload.pending == 2 and h.ctx.overload.rejected_requests["pending"] == 1
    h.connect_all()
    conn = h.conns()[0]
    ids = _ids_sent(h.upstream_transports[id(conn)].take())
    conn.data_received(b"".join(frame(1, rid, {}) for rid in ids))  # type: ignore[attr-defined]
    h.io.flush()
    assert h.ctx.overload.pending == 0
    s2.data_received(frame(0, 4, {}))  # room again
    h.io.flush()
    assert len(_ids_sent(h.upstream_transports[id(conn)].take())) == 1


def test_over_the_heap_threshold_requests_and_connections_are_refused_until_it_recovers() -> None:
    h = _bounded(heap=1000)
    s, t = h.client()
    h.ctx.overload.observe_heap(1001)
    s.data_received(frame(0, 1, {}))
    assert parse(t.take())[2] == {"error": "over_limit"}
    _, t2 = h.client()
    assert t2.closed and h.ctx.stats.cx_overflow == 1
    h.ctx.overload.observe_heap(960)  # within 95 %: still shedding (hysteresis)
    s.data_received(frame(0, 2, {}))
    assert parse(t.take())[2] == {"error": "over_limit"}
    h.ctx.overload.observe_heap(900)
    s.data_received(frame(0, 3, {}))
    assert t.take() == b"" and h.ctx.overload.pending == 1


def test_connection_bounds_per_listener_and_per_process() -> None:
    h = _bounded(max_connections=3)
    from dataclasses import replace

    h.ctx.config = replace(h.ctx.config, max_connections=2)
    clients = [h.client() for _ in range(3)]
    assert [t.closed for _, t in clients] == [False, False, True]
    assert h.ctx.overload.rejected_connections["listener"] == 1
    clients[0][0].connection_lost(None)
    assert h.ctx.overload.connections == 1
    h.ctx.config = replace(h.ctx.config, max_connections=0)
    more = [h.client() for _ in range(3)]
    assert [t.closed for _, t in more] == [False, False, True]
    assert h.ctx.overload.rejected_connections["process"] == 1


def test_overload_counters_are_in_the_stats_text() -> None:
    from metaprotocol.proxy.stats import render_prometheus

    h = _bounded(max_pending=1)
    s, _ = h.client()
    s.data_received(frame(0, 1, {}) + frame(0, 2, {}))
    text = render_prometheus([h.ctx.stats], [], h.ctx.overload)
    assert 'metaprotocol_overload_rejected_requests_total{limit="pending"} 1' in text
    assert "metaprotocol_overload_pending_requests 1" in text


# -- log rate limit -----------------------------------------------------------------------------


def test_the_log_is_rate_limited_per_cause_with_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    timers: list[tuple[float, object]] = []
    limited = RateLimitedLog(logging.getLogger("t"), lambda: clock[0], lambda d, cb: timers.append((clock[0] + d, cb)), burst=3, interval=10.0)
    with caplog.at_level(logging.WARNING, "t"):
        logged = [limited.emit("bad_client", f"frame {i}") for i in range(100)]
        limited.emit("other_cause", "still logged")
        assert logged.count(True) == 3 and len(timers) == 1
        clock[0] = 10.0
        timers[0][1]()  # type: ignore[operator]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["bad_client: frame 0", "bad_client: frame 1", "bad_client: frame 2"]
    assert "other_cause: still logged" in lines
    assert any(line.startswith("bad_client: 97 more suppressed") for line in lines)
    assert len(lines) == 5
    assert limited.emit("bad_client", "a new interval")  # logged again


# -- configuration changes ----------------------------------------------------------------------


def test_a_cluster_update_lets_requests_in_flight_finish_on_the_old_connection() -> None:
    h = Harness(LenPrefixFactory(), (route("all", "c"),), {"c": 1})
    s, t = h.client()
    s.data_received(frame(0, 1, {"m": "a"}))
    h.connect_all()
    old = h.conns()[0]
    (rid,) = _ids_sent(h.upstream_transports[id(old)].take())
    # New labels on the endpoint: a new cluster state; new requests use a new pool.
    h.upstreams.update_clusters({"c": ClusterConfig("c", (Endpoint("127.0.0.1", 9000, labels=(("version", "v2"),)),))})
    assert not h.upstream_transports[id(old)].closed  # a request is still in flight on it
    s.data_received(frame(0, 2, {"m": "b"}))
    h.connect_all()
    new = h.conns()[-1]
    assert new is not old
    old.data_received(frame(1, rid, {}, b"first"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t.take())[1:] == (1, {}, b"first")  # answered, not reset
    assert h.upstream_transports[id(old)].closed  # and then retired
    (rid2,) = _ids_sent(h.upstream_transports[id(new)].take())
    new.data_received(frame(1, rid2, {}, b"second"))  # type: ignore[attr-defined]
    h.io.flush()
    assert parse(t.take())[1:] == (2, {}, b"second")
    assert h.ctx.stats.errors == {}


def test_the_proxy_raises_its_open_file_limit_and_bounds_connections_below_it() -> None:
    import resource

    from metaprotocol.io.proxy import _fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256) if hard == resource.RLIM_INFINITY else min(soft, hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        limit = _fd_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert now == hard or hard == resource.RLIM_INFINITY
        assert limit == (0 if now == resource.RLIM_INFINITY else now)
        assert Overload(OverloadConfig(), limit).max_connections == int(limit * 0.9)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
