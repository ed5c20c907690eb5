"""Bad upstreams and bad clients against a live proxy and real servers: a stalled connection is
replaced, malformed input gets the protocol's error at once, health checks move endpoints."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from metaprotocol_codecs.dubbo import wire
from tests.integration.test_dubbo_proxy import DEMO, Providers
from tests.servers import RedisServer, StallingRelay, bootstrap_dict, cluster, free_port, listener

pytestmark = pytest.mark.integration
ROUTE_TIMEOUT = 0.4


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers(("v1",))
    yield p
    p.stop()


def _proxy(run_proxy: Any, codec: str, port: int, **cluster_extra: object) -> Any:
    tree = bootstrap_dict(
        [listener("l", 0, codec, [{"name": "all", "route": {"cluster": "c", "timeout": f"{ROUTE_TIMEOUT}s"}}])],
        [cluster("c", [port], **cluster_extra)],
    )
    return run_proxy(tree)


def _fatal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Fatal error" in r.getMessage() or "Exception in callback" in r.getMessage()]


def test_redis_a_stalled_connection_is_replaced_after_one_timeout(run_proxy: Any) -> None:
    with RedisServer() as server, StallingRelay(server.port) as relay:
        rp = _proxy(run_proxy, "redis", relay.port)
        r = redis.Redis(port=rp.port("l"), socket_timeout=5)
        with pytest.raises(redis.ResponseError, match="upstream request timeout"):
            r.get("k")
        start = time.monotonic()
        assert r.set("k", "v") and r.get("k") == b"v"  # on a new upstream connection
        assert time.monotonic() - start < ROUTE_TIMEOUT + 1.0
        assert relay.accepted == 2
        assert 'metaprotocol_upstream_cx_destroy_timeout_total{cluster="c"} 1' in rp.run(rp.proxy.stats_text)


def test_dubbo_a_stalled_multiplexed_connection_is_replaced(run_proxy: Any, providers: Providers) -> None:
    with StallingRelay(providers.port("v1")) as relay:
        rp = _proxy(run_proxy, "dubbo", relay.port)
        port = rp.port("l")

        async def scenario() -> tuple[list[int], str, float]:
            consumers = [await DubboConsumer("127.0.0.1", port, timeout=5).connect() for _ in range(3)]
            try:
                # Three calls in flight on the stalled shared connection time out together.
                results = await asyncio.gather(*(c.call(DEMO, "sayHello", ["x"], version="1.0.0") for c in consumers), return_exceptions=True)
                statuses = [r.status for r in results if isinstance(r, DubboError)]
                start = time.monotonic()
                ok = await consumers[0].call(DEMO, "sayHello", ["y"], version="1.0.0")
                return statuses, ok, time.monotonic() - start
            finally:
                for c in consumers:
                    await c.close()

        statuses, ok, took = asyncio.run(scenario())
        assert statuses == [wire.SERVER_TIMEOUT] * 3
        assert ok == "Hello y, response from provider-v1"
        assert took < ROUTE_TIMEOUT + 1.0 and relay.accepted == 2


def test_thrift_a_stalled_multiplexed_connection_is_replaced(run_proxy: Any, tmp_path: Any) -> None:
    import json

    import thriftpy2
    from thriftpy2.rpc import make_client, make_server
    from thriftpy2.thrift import TApplicationException
    from thriftpy2.transport import TFramedTransportFactory

    from tests.vectors import vectors_dir

    path = tmp_path / "oracle.thrift"
    path.write_text(json.loads((vectors_dir() / "thrift/messages.json").read_text())["idl"])
    idl = thriftpy2.load(str(path), module_name="hardening_thrift")

    class Handler:
        def echo(self, msg: str) -> str:
            return f"v1:{msg}"

    backend = free_port()
    server = make_server(idl.UserService, Handler(), "127.0.0.1", backend, trans_factory=TFramedTransportFactory(), client_timeout=None)
    server.daemon = True  # its per-client threads must not hold the interpreter at exit
    import threading

    threading.Thread(target=server.serve, daemon=True).start()
    from tests.servers import wait_port

    wait_port(backend)
    with StallingRelay(backend) as relay:
        rp = _proxy(run_proxy, "thrift", relay.port)

        def call(msg: str) -> str | int:
            client = make_client(idl.UserService, "127.0.0.1", rp.port("l"), trans_factory=TFramedTransportFactory(), timeout=5000)
            try:
                return str(client.echo(msg))
            except TApplicationException as exc:
                return int(exc.type)
            finally:
                client.close()

        with ThreadPoolExecutor(3) as pool:
            first = list(pool.map(call, ["a", "b", "c"]))
        assert all(isinstance(x, int) for x in first)  # TApplicationException for each
        start = time.monotonic()
        assert call("d") == "v1:d"
        assert time.monotonic() - start < ROUTE_TIMEOUT + 1.0 and relay.accepted == 2
        server.close()


def test_dubbo_malformed_body_gets_an_immediate_error_reply_and_no_fatal_log(
    run_proxy: Any, providers: Providers, caplog: pytest.LogCaptureFixture
) -> None:
    rp = _proxy(run_proxy, "dubbo", providers.port("v1"))
    body = bytes.fromhex("41000034")
    frame = struct.pack(">HBBQI", wire.MAGIC, 0xC2, 0, 77, len(body)) + body
    with caplog.at_level(logging.WARNING), socket.create_connection(("127.0.0.1", rp.port("l")), timeout=5) as s:
        s.sendall(frame)
        reply = s.recv(65536)
        _, flag, status, rid, _ = struct.unpack_from(">HBBQI", reply)
        assert (status, rid) == (wire.BAD_REQUEST, 77)
        # The frame's length was known, so the codec may step over it and go on; otherwise the
        # connection is closed cleanly. Either way a heartbeat after it is answered or sees EOF.
        try:
            s.sendall(wire.build_heartbeat(78))
            after = s.recv(65536)
        except ConnectionError:
            after = b""
        assert after == b"" or struct.unpack_from(">HBBQI", after)[3] == 78
    assert not _fatal_lines(caplog)


def test_health_checks_take_a_silent_endpoint_out_and_bring_it_back(run_proxy: Any) -> None:
    with RedisServer() as good, StallingRelay(good.port, stall=10**6) as silent:
        hc = [{"timeout": "0.2s", "interval": "0.1s", "unhealthy_threshold": 2, "healthy_threshold": 1,
               "custom_health_check": {"name": "metaprotocol.health_checkers.codec"}}]  # fmt: skip
        tree = bootstrap_dict(
            [listener("l", 0, "redis", [{"name": "all", "route": {"cluster": "c", "timeout": "0.3s"}}])],
            [cluster("c", [good.port, silent.port], health_checks=hc)],
        )
        rp = run_proxy(tree)
        cs = rp.proxy.upstreams.clusters["c"]
        deadline = time.monotonic() + 5
        while cs.healthy != [True, False] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cs.healthy == [True, False]
        r = redis.Redis(port=rp.port("l"), socket_timeout=5)
        assert all(r.set(f"k{i}", i) for i in range(20))  # none goes to the silent endpoint
        silent.stall_left = 0  # it starts answering
        deadline = time.monotonic() + 5
        while cs.healthy != [True, True] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cs.healthy == [True, True]
        stats = rp.run(rp.proxy.stats_text)
        assert 'metaprotocol_upstream_health_check_failure_total{cluster="c"}' in stats


def test_past_the_process_pending_bound_clients_get_over_limit_replies_at_once(run_proxy: Any) -> None:
    limit, per_client, clients = 2000, 500, 20
    with StallingRelay(free_port(), stall=10**6) as blackhole:  # accepts, reads, never answers
        tree = bootstrap_dict(
            [listener("l", 0, "redis", [{"name": "all", "route": {"cluster": "c", "timeout": "30s"}}], max_pending_per_connection=100_000)],
            [cluster("c", [blackhole.port])],
        )
        tree["overload_manager"] = {"resource_monitors": [
            {"name": "metaprotocol.resource_monitors.pending_requests", "typed_config": {"max_pending_requests": limit}}]}  # fmt: skip
        rp = run_proxy(tree)
        get = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        socks = [socket.create_connection(("127.0.0.1", rp.port("l")), timeout=5) for _ in range(clients)]
        try:
            for s in socks:
                s.sendall(get * per_client)
            expected_refusals = clients * per_client - limit
            received = [b""] * clients
            deadline = time.monotonic() + 5  # far below the 30 s route timeout: these are immediate
            while sum(r.count(b"-ERR") for r in received) < expected_refusals and time.monotonic() < deadline:
                for i, s in enumerate(socks):
                    s.settimeout(0.01)
                    try:
                        received[i] += s.recv(1 << 20)
                    except TimeoutError:
                        pass
            refused = sum(r.count(b"-ERR") for r in received)
            assert refused == expected_refusals
            assert all(line == b"-ERR proxy overloaded (pending limit)" for r in received for line in r.split(b"\r\n") if line)
            assert rp.proxy.overload.pending == limit  # the admitted ones wait on the silent upstream
            assert f'metaprotocol_overload_rejected_requests_total{{limit="pending"}} {expected_refusals}' in rp.run(rp.proxy.stats_text)
        finally:
            for s in socks:
                s.close()


def test_upstream_connections_get_the_clusters_tcp_keepalive(run_proxy: Any) -> None:
    with RedisServer() as server:
        keepalive = {"tcp_keepalive": {"keepalive_probes": 4, "keepalive_time": 30, "keepalive_interval": 5}}
        rp = _proxy(run_proxy, "redis", server.port, upstream_connection_options=keepalive)
        assert redis.Redis(port=rp.port("l")).set("k", "v")

        def options() -> tuple[int, int, int, int]:
            (pool,) = rp.proxy.upstreams.pools.values()
            sock = pool.conns[0].transport.get_extra_info("socket")
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            )

        assert rp.run(options) == (1, 4, 30, 5)


def _theader_upstream(sock: socket.socket, bad_first: int) -> None:
    """Reads THeader calls on one connection; once three are in, answers the first with a frame
    whose ZLIB payload is not zlib (``bad_first`` times) and echoes the others as replies."""
    from metaprotocol_codecs.thrift import wire as twire

    conn, _ = sock.accept()
    conn.settimeout(10)
    data = b""
    frames: list[bytes] = []
    while len(frames) < 3:
        data += conn.recv(65536)
        while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
            n = 4 + int.from_bytes(data[:4], "big")
            frames.append(data[:n])
            data = data[n:]
    out = b""
    for i, frame in enumerate(frames):
        seq = frame[8:12]
        if i < bad_first:
            body = b"\x0f\xff\x00\x00" + seq + b"\x00\x01" + b"\x00\x01\x01\x00" + b"not-zlib"
            out += struct.pack(">I", len(body)) + body
        else:
            at = twire.read_theader(frame).payload_at
            reply = bytearray(frame)
            reply[at + 3] = 2  # strict binary version word: CALL -> REPLY; args field 1 reads as the value
            out += bytes(reply)
    conn.sendall(out)
    time.sleep(1)
    conn.close()


def test_thrift_a_bad_theader_reply_fails_only_its_request_on_the_shared_connection(
    run_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from tests.integration.test_thrift_proxy import _apache_header_call

    upstream = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_theader_upstream, args=(upstream, 1), daemon=True).start()
    rp = _proxy(run_proxy, "thrift", upstream.getsockname()[1])

    def call(i: int) -> object:
        try:
            return _apache_header_call(rp.port("l"), f"m{i}", {}, seqid=100 + i)[0]
        except Exception as exc:  # noqa: BLE001 - the one whose reply was bad
            return exc

    with caplog.at_level(logging.WARNING), ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(call, i) for i in range(3)]
        results = [f.result(10) for f in futures]
    upstream.close()
    values = sorted(r for r in results if isinstance(r, str))
    errors = [r for r in results if not isinstance(r, str)]
    # The failed call got a TApplicationException (message type 3) with its own seqid, at once.
    assert len(errors) == 1 and re.search(r"\('echo', 3, 10[0-2]\) == \('echo', 2, 10[0-2]\)", str(errors[0]))
    assert len(values) == 2 and all(v.startswith("m") for v in values)
    assert rp.proxy.upstreams.cluster_stats["c"].response_decoding_errors == 1
    assert not _fatal_lines(caplog)


def test_dubbo_health_checks_use_the_heartbeat(providers: Providers, run_proxy: Any) -> None:
    with StallingRelay(providers.port("v1"), stall=10**6) as silent:
        hc = [{"timeout": "0.2s", "interval": "0.1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
               "custom_health_check": {"name": "metaprotocol.health_checkers.codec"}}]  # fmt: skip
        tree = bootstrap_dict(
            [listener("l", 0, "dubbo", [{"name": "all", "route": {"cluster": "c", "timeout": "1s"}}])],
            [cluster("c", [providers.port("v1"), silent.port], health_checks=hc)],
        )
        rp = run_proxy(tree)
        cs = rp.proxy.upstreams.clusters["c"]
        stats = rp.proxy.upstreams.cluster_stats["c"]
        deadline = time.monotonic() + 5
        while (cs.healthy != [True, False] or stats.health_check_successes < 3) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cs.healthy == [True, False] and stats.health_check_successes >= 3  # heartbeats answered
