"""Hot restart as processes: a second ``metaprotocol proxy --restart-from`` takes over the listening
sockets of the running one while clients keep sending, and the old one drains and exits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.io.hot_restart import Listening, take_over
from tests.integration.test_workers_live import ENV, get, metric, ready, wait_for
from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener

pytestmark = pytest.mark.integration
DRAIN = 5.0


class GatedUpstream:
    """A RESP server answering ``+OK`` to every command, except ``GET gate:*``, held until
    :meth:`release`: requests that stay in flight for as long as the test needs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.open = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.open.set()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while chunk := conn.recv(65536):
                buf += chunk
                while (command := _command(buf)) is not None:
                    args, buf = command
                    if args[:1] == [b"GET"] and args[1].startswith(b"gate:"):
                        self.open.wait(30)
                    conn.sendall(b"+OK\r\n")

    def stop(self) -> None:
        self.open.set()
        self.sock.close()


def _command(buf: bytes) -> tuple[list[bytes], bytes] | None:
    """One RESP array of bulk strings from ``buf`` and the rest, or None while incomplete."""
    end = buf.find(b"\r\n")
    if end < 0:
        return None
    count, pos, args = int(buf[1:end]), end + 2, []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        size = int(buf[pos + 1 : end])
        if len(buf) < end + 2 + size + 2:
            return None
        args.append(buf[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return args, buf[pos:]


class Traffic:
    """Clients sending ``INCR`` one at a time, each on its own connection and key, reconnecting
    when the proxy closes a connection between requests. A request whose connection closed before
    any byte of its reply was never read by the proxy (a draining proxy stops reading), so it is
    sent again on a new connection (``resent``); anything else that goes wrong is a failure."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.ok = [0] * clients
        self.resent = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def total(self) -> int:
        return sum(self.ok)

    def _run(self, i: int) -> None:
        request = f"*2\r\n$4\r\nINCR\r\n${len(f'hr:{i}')}\r\nhr:{i}\r\n".encode()
        sock: socket.socket | None = None
        while not self.stopping.is_set():
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                reply = _exchange(sock, request)
            except OSError as exc:  # connecting failed (refused, timed out): a failure
                self.failures.append(f"client {i}: {exc!r}")
                return
            if reply is None:  # closed before any byte of the reply
                sock.close()
                sock = None
                self.resent += 1
                continue
            if reply != f":{self.ok[i] + 1}\r\n".encode():
                self.failures.append(f"client {i}: {reply!r} after {self.ok[i]}")
                return
            self.ok[i] += 1
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(10)


def _exchange(sock: socket.socket, request: bytes) -> bytes | None:
    try:
        sock.sendall(request)
    except (BrokenPipeError, ConnectionResetError):
        return None
    reply = b""
    while not reply.endswith(b"\r\n"):
        try:
            chunk = sock.recv(100)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            if reply:
                raise OSError(f"closed after {reply!r}")
            return None
        reply += chunk
    return reply


@pytest.fixture
def upstreams() -> Iterator[tuple[RedisServer, GatedUpstream]]:
    with RedisServer() as server:
        gate = GatedUpstream()
        yield server, gate
        gate.stop()


def start_proxy(tmp_path: Path, name: str, config: Path, admin: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(config), "--admin", f"127.0.0.1:{admin}",
                                 "--drain-timeout", str(DRAIN), "--log-level", "INFO", *extra], env=ENV, stderr=out)  # fmt: skip
    return proc, log


def restart_under_traffic(tmp_path: Path, upstreams: tuple[RedisServer, GatedUpstream], old_args: list[str], new_args: list[str]) -> None:
    server, gate = upstreams
    port, gate_port, admin = free_port(), free_port(), free_port()
    tree = bootstrap_dict(
        [listener("redis", port, "redis", [{"route": {"cluster": "redis"}}]), listener("gate", gate_port, "redis", [{"route": {"cluster": "gate"}}])],
        [cluster("redis", [server.port]), cluster("gate", [gate.port])],
    )
    config = tmp_path / "bootstrap.yaml"
    config.write_text(yaml.safe_dump(tree))
    old, old_log = start_proxy(tmp_path, "old", config, admin, *old_args)
    new: subprocess.Popen[bytes] | None = None
    traffic = None
    held: list[socket.socket] = []
    try:
        wait_for(lambda: ready(admin), what="the first proxy")
        traffic = Traffic(port, 6)
        wait_for(lambda: traffic.total() >= 60, what="traffic through the first proxy")
        # Requests in flight on the old process, held upstream until it drains.
        for i in range(3):
            s = socket.create_connection(("127.0.0.1", gate_port), timeout=10)
            s.sendall(f"*2\r\n$3\r\nGET\r\n$6\r\ngate:{i}\r\n".encode())
            held.append(s)
        wait_for(lambda: metric(get(admin, "/stats"), 'metaprotocol_active_requests{listener="gate"') == 3, what="3 requests in flight")

        new, new_log = start_proxy(tmp_path, "new", config, admin, *new_args)
        wait_for(lambda: "draining" in old_log.read_text(), what="the old proxy to drain")
        at_takeover = traffic.total()
        assert old.poll() is None  # still answering what it holds
        gate.release()
        for s in held:
            data = b""
            with s:
                while chunk := s.recv(100):
                    data += chunk
            assert data == b"+OK\r\n"  # answered by the old process, then closed
        assert old.wait(DRAIN + 2) == 0
        # New connections land on the new process; the traffic never stopped.
        wait_for(lambda: traffic.total() >= at_takeover + 200, what="traffic through the new proxy")
        for _ in range(5):
            with redis.Redis(port=port, single_connection_client=True) as r:
                assert r.ping()
        stats = get(admin, "/stats")
        assert metric(stats, 'metaprotocol_downstream_cx_total{listener="redis"') >= 5, stats
        assert metric(stats, 'metaprotocol_active_requests{listener="gate"') == 0
        traffic.stop()
        assert traffic.failures == [], traffic.failures
        # Every INCR was executed exactly once: none lost, none run twice by a resend.
        with redis.Redis(port=server.port) as direct:
            assert [int(direct.get(f"hr:{i}") or 0) for i in range(6)] == traffic.ok, traffic.resent
        assert "took" in new_log.read_text()
        new.terminate()
        assert new.wait(10) == 0
    finally:
        if traffic is not None:
            traffic.stop()
        for p in (old, new):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.mark.parametrize(
    ("old_args", "new_args"),
    [
        (["--hot-restart-socket", "{sock}"], ["--restart-from", "{sock}", "--hot-restart-socket", "{sock}"]),
        (["--concurrency", "2"], ["--concurrency", "2", "--restart-from"]),  # the default socket, from the admin port
        ([], ["--concurrency", "2", "--restart-from"]),  # one process to two workers
    ],
    ids=["single-process", "two-workers", "single-to-workers"],
)
def test_hot_restart_under_traffic(tmp_path: Path, upstreams: tuple[RedisServer, GatedUpstream], old_args: list[str], new_args: list[str]) -> None:
    sock = str(tmp_path / "hot-restart.sock")
    restart_under_traffic(tmp_path, upstreams, [a.format(sock=sock) for a in old_args], [a.format(sock=sock) for a in new_args])


def test_refuses_another_version_and_hands_over_by_name(tmp_path: Path) -> None:
    """The protocol end to end in one process: the server hands sockets over by name, a peer of
    another version is refused cleanly, and the drain request reaches the old side."""
    import asyncio
    import json
    import struct

    from metaprotocol.io.hot_restart import HotRestartServer

    path = f"@mp-hot-restart-test-{os.getpid()}"
    listening = socket.create_server(("127.0.0.1", 0))
    drained: list[bool] = []

    async def scenario() -> None:
        server = HotRestartServer(path, lambda: [Listening("redis", "listener", "127.0.0.1", listening.getsockname()[1], listening.fileno())],
                                  lambda: drained.append(True))  # fmt: skip
        await server.start()

        def wrong_version() -> dict[str, object]:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect("\0" + path[1:])
                body = json.dumps({"v": 99, "type": "hello"}).encode()
                s.sendall(struct.pack("!I", len(body)) + body)
                head = s.recv(4)
                return dict(json.loads(s.recv(struct.unpack("!I", head)[0])))

        answer = await asyncio.to_thread(wrong_version)
        assert answer["type"] == "error" and "version" in str(answer["reason"])
        handover = await asyncio.to_thread(take_over, path)
        assert handover.pending() == ["redis"]
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [1])])
        claimed = handover.claim(parse_bootstrap(tree, "test").listeners)
        sock = claimed["redis"][0]
        assert sock.getsockname() == listening.getsockname() and handover.pending() == []
        assert await asyncio.to_thread(handover.drain) == 10.0
        for _ in range(500):  # called once the answer is sent
            if drained:
                break
            await asyncio.sleep(0.01)
        assert drained == [True]
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):  # the name is free for the next process
            await asyncio.to_thread(take_over, path)
        sock.close()

    try:
        asyncio.run(scenario())
    finally:
        listening.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a peer as another user")
def test_refuses_a_peer_of_another_user(tmp_path: Path) -> None:
    """``SO_PEERCRED``: a process of another uid gets no socket (the abstract namespace has no
    file permissions, so the check is what keeps other users out)."""
    import asyncio

    from metaprotocol.io.hot_restart import HotRestartServer

    path = f"@mp-hot-restart-uid-{os.getpid()}"
    listening = socket.create_server(("127.0.0.1", 0))
    peer = ("import os, socket, struct, json\n"
            "os.setuid(65534)\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            f"s.connect({chr(0) + path[1:]!r})\n"
            "body = json.dumps({'v': 1, 'type': 'hello'}).encode()\n"
            "try:\n"
            "    s.sendall(struct.pack('!I', len(body)) + body)\n"
            "    print(repr(s.recv(100)) == repr(b'') and 'closed')\n"
            "except (BrokenPipeError, ConnectionResetError):\n"
            "    print('closed')\n")  # fmt: skip

    async def scenario() -> str:
        server = HotRestartServer(path, lambda: [Listening("redis", "listener", "127.0.0.1", 1, listening.fileno())], lambda: None)
        await server.start()
        try:
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", peer], capture_output=True, text=True, timeout=10)
        finally:
            server.close()
        return done.stdout.strip() + done.stderr

    try:
        assert asyncio.run(scenario()) == "closed"  # closed without a word, no descriptor sent
    finally:
        listening.close()


@pytest.mark.parametrize("workers", [[], ["--concurrency", "2"]], ids=["single-process", "two-workers"])
def test_hot_restart_with_xds_waits_for_the_listener_then_drains(tmp_path: Path, workers: list[str]) -> None:
    """Under ``--xds`` the listeners arrive after start: the new process keeps the old one serving
    until its listener came from the control plane with the socket of the same name; Dubbo calls,
    each on a new connection, never fail across the restart."""
    import asyncio

    from metaprotocol_apps.dubbo import DubboConsumer
    from tests.integration.test_xds_live import Providers, calls, start_ctl, write_config

    providers = Providers()
    write_config(tmp_path, providers.ports, (50, 50))
    xds_port, listen_port, admin = free_port(), free_port(), free_port()
    ctl = start_ctl(tmp_path, xds_port, listen_port - 20880)
    xds = ["--xds", f"127.0.0.1:{xds_port}", "--node-id", "test", *workers]
    old, old_log = start_proxy_xds(tmp_path, "old", admin, *xds)
    new: subprocess.Popen[bytes] | None = None
    done, failures, served = threading.Event(), [], [0]

    def fresh_calls() -> None:
        async def loop() -> None:
            while not done.is_set():
                try:
                    async with DubboConsumer("127.0.0.1", listen_port) as c:
                        _, failed = await calls(listen_port, 1, c)
                except OSError as exc:
                    failures.append(repr(exc))
                    return
                if failed:
                    failures.append("call failed")
                served[0] += 1

        asyncio.run(loop())

    client = threading.Thread(target=fresh_calls, daemon=True)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", listen_port), timeout=1).close() or True, what="the listener from xDS")
        client.start()
        wait_for(lambda: served[0] >= 20, what="calls through the first proxy")
        new, new_log = start_proxy_xds(tmp_path, "new", admin, *xds, "--restart-from")
        assert old.wait(DRAIN + 5) == 0
        at_exit = served[0]
        wait_for(lambda: served[0] >= at_exit + 20, what="calls through the new proxy")
        done.set()
        client.join(10)
        assert failures == []
        text = new_log.read_text()
        assert "Address already in use" not in text
        assert text.index("listener org.apache.dubbo") < text.index("is draining")  # the old one served until then
    finally:
        done.set()
        for p in (old, new, ctl):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
        providers.stop()


def start_proxy_xds(tmp_path: Path, name: str, admin: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--admin", f"127.0.0.1:{admin}",
                                 "--drain-timeout", str(DRAIN), "--log-level", "INFO", *extra], env=ENV, stderr=out)  # fmt: skip
    return proc, log
