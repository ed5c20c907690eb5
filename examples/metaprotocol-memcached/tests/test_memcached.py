"""The memcached plugin: the shipped conformance suite, and real memcached servers behind the proxy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pymemcache.client.base import Client

from metaprotocol.registry import CodecRegistry
from metaprotocol.spi import NEED_DATA, ReadBuffer
from metaprotocol.testing import CodecSamples, check_codec
from metaprotocol_memcached import MemcachedCodecFactory


def test_registered_as_a_plugin() -> None:
    assert CodecRegistry.from_entry_points().get("memcached") is MemcachedCodecFactory
    out = subprocess.run([sys.executable, "-m", "metaprotocol.cli", "codecs"], capture_output=True, text=True, check=True)
    assert any(line.startswith("memcached\tordered\tmetaprotocol_memcached:MemcachedCodecFactory") for line in out.stdout.splitlines())


def test_conformance() -> None:
    requests = [b"get user:1\r\n", b"set user:1 0 0 5\r\nhello\r\n", b"delete k noreply\r\n", b"incr n 5\r\n", b"gets a b c\r\n"]
    replies = [b"STORED\r\n", b"NOT_FOUND\r\n", b"42\r\n", b"CLIENT_ERROR bad\r\n"]
    check_codec(CodecSamples(MemcachedCodecFactory(), requests, replies))


def test_block_replies_are_framed_by_the_request_they_answer() -> None:
    f = MemcachedCodecFactory()
    server, client = f.server_codec(), f.client_codec()
    for req in (b"get a b\r\n", b"stats\r\n", b"set k 0 0 1\r\nx\r\n"):
        client.encode(server.decode(ReadBuffer(req)))  # type: ignore[arg-type]
    buf = ReadBuffer(b"VALUE a 0 3\r\nEND\r\nEND\r\nSTAT pid 1\r\nSTAT uptime 2\r\nEND\r\nSTORED\r\n")
    frames = []
    while (m := client.decode(buf)) is not NEED_DATA:
        frames.append(bytes(m.raw))  # type: ignore[union-attr]
    assert frames == [b"VALUE a 0 3\r\nEND\r\nEND\r\n", b"STAT pid 1\r\nSTAT uptime 2\r\nEND\r\n", b"STORED\r\n"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(port)


@pytest.fixture
def servers() -> Iterator[tuple[int, int, int]]:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    if not Path(binary).exists():
        pytest.fail("memcached is not installed: run scripts/install")
    a, b, proxy_port = _free_port(), _free_port(), _free_port()
    procs = [subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(p), "-U", "0", "-u", "root"]) for p in (a, b)]
    tmp = Path(tempfile.mkdtemp())

    def cluster(name: str, port: int) -> dict[str, object]:
        return {"name": name, "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}  # fmt: skip

    boot = {"static_resources": {
        "listeners": [{"name": "memcached", "address": {"socket_address": {"address": "127.0.0.1", "port_value": proxy_port}},
                       "filter_chains": [{"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
                           "stat_prefix": "memcached", "codec": {"name": "memcached"},
                           "route_config": {"name": "r", "routes": [
                               {"match": {"metadata": [{"name": "key", "prefix_match": "user:"}]}, "route": {"cluster": "users"}},
                               {"route": {"cluster": "main"}}]}}}]}]}],
        "clusters": [cluster("users", a), cluster("main", b)],
    }}  # fmt: skip
    (tmp / "boot.yaml").write_text(yaml.safe_dump(boot))
    procs.append(subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / "boot.yaml"), "--log-level", "WARNING"], env=dict(os.environ)))
    try:
        for p in (a, b, proxy_port):
            _wait(p)
        yield a, b, proxy_port
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_routes_by_key_prefix_to_two_real_servers(servers: tuple[int, int, int]) -> None:
    a, b, proxy_port = servers
    via = Client(("127.0.0.1", proxy_port), timeout=5)
    users, main = Client(("127.0.0.1", a)), Client(("127.0.0.1", b))
    assert via.set("user:1", b"alice", noreply=False)
    assert via.set("greeting", b"hello", noreply=False)
    assert users.get("user:1") == b"alice" and users.get("greeting") is None
    assert main.get("greeting") == b"hello" and main.get("user:1") is None
    assert via.get_many(["user:1", "greeting", "missing"]) == {"user:1": b"alice", "greeting": b"hello"}  # split and merged
    via.set("n", b"10", noreply=True)  # noreply: no response expected, none waited for
    assert via.incr("n", 5) == 15
    assert via.delete("user:1", noreply=False) is True
    assert via.get("user:1") is None
    big = os.urandom(500_000)
    assert via.set("user:big", big, noreply=False) and via.get("user:big") == big
    for c in (via, users, main):
        c.close()


def test_a_value_line_with_a_negative_or_huge_length_is_a_protocol_error_not_a_hang() -> None:
    import pytest

    from metaprotocol.spi import Message, MessageType, ReadBuffer, RemoteProtocolError
    from metaprotocol_memcached import MemcachedCodecFactory

    for line in (b"VALUE k 0 -7\r\nEND\r\n", b"VALUE k 0 99999999999\r\n", b"VALUE k 0 2\r\nabcEND\r\n"):
        client = MemcachedCodecFactory().client_codec()
        client.encode(Message(MessageType.REQUEST, b"get k\r\n", {}, None, [b"get", b"k"]))
        with pytest.raises(RemoteProtocolError):
            client.decode(ReadBuffer(line))
