"""The core over real loopback sockets with the request-id test codec, and the CLI as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from metaprotocol.registry import CodecRegistry
from tests.lenprefix import LenPrefixFactory, frame, parse
from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class LenUpstream:
    """An asyncio server speaking the test protocol: answers `echo`, delays `slow`, never answers `hang`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.seen: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readexactly(4)
                rest = await reader.readexactly(int.from_bytes(head, "big"))
                kind, rid, md, body = parse(head + rest)
                self.seen.append(md)
                if kind == 2 or md.get("method") == "hang":
                    continue
                delay = float(md.get("delay", "0"))

                async def answer(rid: int = rid, body: bytes = body, delay: float = delay) -> None:
                    await asyncio.sleep(delay)
                    writer.write(frame(1, rid, {"server": self.name}, body))

                asyncio.ensure_future(answer())
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_closed():
            self.loop.close()


def call(sock: socket.socket, rid: int, md: dict[str, str], body: bytes = b"") -> None:
    sock.sendall(frame(0, rid, md, body))


def read_frame(sock: socket.socket) -> tuple[int, int, dict[str, str], bytes]:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    n = int.from_bytes(head, "big")
    rest = b""
    while len(rest) < n:
        chunk = sock.recv(n - len(rest))
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return parse(head + rest)


REGISTRY = CodecRegistry({"lenprefix": LenPrefixFactory})


def test_many_clients_multiplexed_over_one_upstream_connection(run_proxy: object) -> None:
    up = LenUpstream("u1")
    try:
        tree = bootstrap_dict([listener("l", 0, "lenprefix", [{"route": {"cluster": "c"}}])], [cluster("c", [up.port])])
        rp = run_proxy(tree, REGISTRY)  # type: ignore[operator]
        clients = [socket.create_connection(("127.0.0.1", rp.port("l"))) for _ in range(10)]
        for i, c in enumerate(clients):
            for j in range(20):
                # Every client uses the same ids 0..19: the proxy must keep them apart upstream.
                call(c, j, {"method": "echo", "delay": str(0.01 * ((i + j) % 3))}, f"{i}:{j}".encode())
        for i, c in enumerate(clients):
            got = {}
            for _ in range(20):
                _, rid, md, body = read_frame(c)
                got[rid] = body
            assert got == {j: f"{i}:{j}".encode() for j in range(20)}
            c.close()
        assert up.connections == 1
    finally:
        up.stop()


def test_weighted_split_and_attribute_route_over_sockets(run_proxy: object) -> None:
    v1, v2 = LenUpstream("v1"), LenUpstream("v2")
    try:
        tree = bootstrap_dict(
            [listener("l", 0, "lenprefix", [
                {"match": {"metadata": [{"name": "foo", "exact_match": "bar"}]}, "route": {"cluster": "v1"}},
                {"route": {"weighted_clusters": {"clusters": [{"name": "v1", "weight": 20}, {"name": "v2", "weight": 80}]}}},
            ])],
            [cluster("v1", [v1.port]), cluster("v2", [v2.port])],
        )  # fmt: skip
        rp = run_proxy(tree, REGISTRY)  # type: ignore[operator]
        with socket.create_connection(("127.0.0.1", rp.port("l"))) as c:
            for i in range(1000):
                call(c, i, {"method": "sayHello"})
            servers = Counter(read_frame(c)[2]["server"] for _ in range(1000))
            # Binomial(1000, 0.2): sd = 12.6; allow 4 sd.
            assert abs(servers["v1"] - 200) < 51, servers
            for i in range(50):
                call(c, i, {"method": "sayHello", "foo": "bar"})
            assert {read_frame(c)[2]["server"] for _ in range(50)} == {"v1"}
    finally:
        v1.stop()
        v2.stop()


def test_killing_upstream_mid_request_errors_that_request_only(run_proxy: object) -> None:
    dying, fine = LenUpstream("dying"), LenUpstream("fine")
    try:
        tree = bootstrap_dict(
            [listener("l", 0, "lenprefix", [
                {"match": {"metadata": [{"name": "target", "exact_match": "dying"}]}, "route": {"cluster": "dying"}},
                {"route": {"cluster": "fine"}},
            ])],
            [cluster("dying", [dying.port]), cluster("fine", [fine.port])],
        )  # fmt: skip
        rp = run_proxy(tree, REGISTRY)  # type: ignore[operator]
        a = socket.create_connection(("127.0.0.1", rp.port("l")))
        b = socket.create_connection(("127.0.0.1", rp.port("l")))
        a.settimeout(5)
        b.settimeout(5)
        call(a, 1, {"method": "hang", "target": "dying"})
        call(b, 2, {"method": "echo", "delay": "0.5"}, b"slow but fine")
        time.sleep(0.2)
        dying.stop()  # the upstream goes away with the request unanswered
        kind, rid, md, _ = read_frame(a)
        assert (kind, rid, md["error"]) == (5, 1, "upstream_reset")
        assert read_frame(b)[3] == b"slow but fine"
        call(a, 3, {"method": "echo"}, b"a still works")
        assert read_frame(a)[3] == b"a still works"
        a.close()
        b.close()
    finally:
        fine.stop()


def _write_bootstrap(tmp_path: Path, tree: dict[str, object]) -> Path:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metaprotocol.cli", *args]


def test_sigterm_drains_in_flight_requests_then_exits(tmp_path: Path) -> None:
    with RedisServer() as server:
        port, admin = free_port(), free_port()
        tree = bootstrap_dict([listener("redis", port, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [server.port])])
        proc = subprocess.Popen(
            _cli("proxy", "-c", str(_write_bootstrap(tmp_path, tree)), "--admin", f"127.0.0.1:{admin}"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            wait_port(port)
            wait_port(admin)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as resp:
                assert resp.status == 200
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            s.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.5\r\n")
            time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            data = b""
            with s:
                while chunk := s.recv(100):
                    data += chunk
            assert data == b"+OK\r\n"  # the in-flight request was answered, then the connection closed
            assert proc.wait(10) == 0
        finally:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_config_with_path_and_lists_codecs(tmp_path: Path) -> None:
    tree = bootstrap_dict([listener("l", 1, "redis", [{"route": {"cluster": "nope"}}])], [cluster("c", [2])])
    path = _write_bootstrap(tmp_path, tree)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(_cli("proxy", "-c", str(path)), capture_output=True, text=True, env=env, timeout=30, check=False)
    assert out.returncode == 2
    assert str(path) in out.stderr and "routes[0].route" in out.stderr and "unknown cluster 'nope'" in out.stderr
    out = subprocess.run(_cli("validate", "-c", str(path)), capture_output=True, text=True, env=env, timeout=30, check=False)
    assert out.returncode == 2  # the same code as the proxy for the same bad configuration
    out = subprocess.run(_cli("proxy", "-c", str(path), "--log-level", "verbose"), capture_output=True, text=True, env=env, timeout=30, check=False)
    assert out.returncode == 2 and "invalid choice" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(_cli("--help"), capture_output=True, text=True, env=env, timeout=30, check=True)
    assert "``" not in out.stdout and "metaprotocol proxy --xds HOST:PORT" in out.stdout
    out = subprocess.run(_cli("codecs"), capture_output=True, text=True, env=env, timeout=30, check=True)
    lines = out.stdout.splitlines()
    assert "redis\tordered\tmetaprotocol_codecs.redis:RedisCodecFactory" in "\n".join(lines)
    assert any(line.startswith("dubbo\trequest_id\tmetaprotocol_codecs.dubbo:DubboCodecFactory") for line in lines)


def test_admin_endpoint_serves_stats_and_config_dump(run_proxy: object) -> None:
    with RedisServer() as server:
        admin = free_port()
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"name": "all", "route": {"cluster": "c"}}])], [cluster("c", [server.port])])
        tree["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}}
        rp = run_proxy(tree)  # type: ignore[operator]
        import redis

        r = redis.Redis(port=rp.port("redis"), protocol=2)
        for i in range(5):
            r.set(f"k{i}", i)
        r.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as resp:
            text = resp.read().decode()
        assert 'metaprotocol_route_requests_total{listener="redis",route="all"} 5' in text
        assert 'metaprotocol_upstream_cx_total{cluster="c"} 1' in text
        assert 'metaprotocol_request_duration_seconds_count{listener="redis"} 5' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as resp:
            dump = json.loads(resp.read())
        assert dump["route_tables"]["redis"]["routes"][0]["name"] == "all"
        assert dump["clusters"][0]["endpoints"][0]["port"] == server.port


def test_live_route_update_keeps_connections(run_proxy: object) -> None:
    a, b = LenUpstream("a"), LenUpstream("b")
    try:
        tree = bootstrap_dict([listener("l", 0, "lenprefix", [{"route": {"cluster": "a"}}])], [cluster("a", [a.port]), cluster("b", [b.port])])
        rp = run_proxy(tree, REGISTRY)  # type: ignore[operator]
        with socket.create_connection(("127.0.0.1", rp.port("l"))) as c:
            call(c, 1, {"method": "echo"})
            assert read_frame(c)[2]["server"] == "a"
            from metaprotocol.config.model import RouteAction, RouteConfig, RouteRule

            rp.run(lambda: rp.proxy.update_routes("l", RouteConfig("r", (RouteRule("to-b", (), RouteAction(cluster="b")),))))  # type: ignore[attr-defined]
            call(c, 2, {"method": "echo"})
            assert read_frame(c)[2]["server"] == "b"
    finally:
        a.stop()
        b.stop()


