"""PeerAuthentication on a live listener: the TLS aeraki-ctl makes for STRICT and PERMISSIVE
(``aeraki_ctl.peerauthn.listener_tls``, the workload identity files), served by the proxy to real
clients: redis-py in plaintext, Python ``ssl`` with and without a mesh certificate, in front of a
real redis-server."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from aeraki_ctl.peerauthn import PERMISSIVE, STRICT, listener_tls
from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.config.dump import to_bootstrap_tree
from metaprotocol.io import tls as tls_module
from metaprotocol.config.model import Bootstrap, ClusterConfig, CodecRef, Endpoint, ListenerConfig, RouteAction, RouteConfig, RouteRule
from tests.servers import RedisServer
from tests.tls_certs import CertAuthority

pytestmark = pytest.mark.integration
PING = b"*1\r\n$4\r\nPING\r\n"
TRUST_DOMAIN = "cluster.local"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, CertAuthority]]:
    """A workload identity directory as ``metaprotocol proxy --identity`` keeps it (cert.pem,
    key.pem, ca.pem) and the mesh CA that signed it."""
    folder = tmp_path_factory.mktemp("identity")
    ca = CertAuthority("mesh root")
    cert, key = ca.write(folder, "workload", "cache", uris=(f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/cache",))
    shutil.copy(cert, folder / "cert.pem")
    shutil.copy(key, folder / "key.pem")
    shutil.copy(ca.write_ca(folder), folder / "ca.pem")
    yield folder, ca


@pytest.fixture(scope="module")
def backend() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def proxy_tree(mode: str, identity_dir: Path, redis_port: int) -> dict[str, object]:
    tls = listener_tls(mode, str(identity_dir), TRUST_DOMAIN)
    routes = RouteConfig("cache", (RouteRule("all", (), RouteAction(cluster="redis")),))
    lst = ListenerConfig("cache", "127.0.0.1", 0, CodecRef("redis"), "cache", route_config=routes, tls=tls)
    return to_bootstrap_tree(Bootstrap((lst,), (ClusterConfig("redis", (Endpoint("127.0.0.1", redis_port),)),)))


def tls_client(identity: tuple[Path, CertAuthority], uri: str | None) -> ssl.SSLContext:
    folder, ca = identity
    ctx = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    ctx.check_hostname = False
    if uri is not None:
        stem = uri.rsplit("/", 1)[-1]
        ctx.load_cert_chain(*ca.write(folder, f"client-{stem}", stem, uris=(uri,)))
    return ctx


def tls_ping(port: int, ctx: ssl.SSLContext) -> bytes:
    """PING over TLS; b"" when the proxy refused the client (handshake or right after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as s:
                s.sendall(PING)
                return s.recv(100)
        except (ssl.SSLError, ConnectionError):
            return b""


def plain_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(PING)
        try:
            return s.recv(100)
        except ConnectionError:
            return b""


def stat(rp: object, name: str, reason: str = "") -> int:
    text = str(rp.run(rp.proxy.stats_text))  # type: ignore[attr-defined]
    labels = 'listener="cache"' + (f',reason="{reason}"' if reason else "")
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return int(line.rsplit(" ", 1)[1])
    return 0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


GOOD = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/client"


def test_permissive_serves_plaintext_and_mutual_tls_on_one_port(run_proxy: object, identity: tuple[Path, CertAuthority], backend: RedisServer) -> None:
    rp = run_proxy(proxy_tree(PERMISSIVE, identity[0], backend.port))  # type: ignore[operator]
    port = rp.port("cache")
    plain = redis.Redis(port=port)
    assert plain.set("pa:k", "v") and plain.get("pa:k") == b"v"
    pipe = plain.pipeline(transaction=False)
    for _ in range(50):
        pipe.incr("pa:n")
    assert pipe.execute()[-1] == 50
    folder, ca = identity
    client_cert = ca.write(folder, "redis-py", "client", uris=(GOOD,))
    secure = redis.Redis(port=port, ssl=True, ssl_certfile=client_cert[0], ssl_keyfile=client_cert[1], ssl_ca_certs=str(folder / "ca.pem"), ssl_check_hostname=False)
    assert secure.get("pa:k") == b"v" and secure.incr("pa:n") == 51  # the same backend, over mTLS
    assert tls_ping(port, tls_client(identity, GOOD)) == b"+PONG\r\n"
    # TLS clients are held to mTLS in the trust domain, whatever plaintext clients may do.
    assert tls_ping(port, tls_client(identity, None)) == b""
    assert tls_ping(port, tls_client(identity, "spiffe://elsewhere.org/ns/shop/sa/client")) == b""
    wait_for(lambda: stat(rp, "metaprotocol_downstream_tls_handshake_errors_total", "san_mismatch") == 1, "the SAN mismatch counted")
    assert stat(rp, "metaprotocol_downstream_plaintext_connections_total") == 1
    assert stat(rp, "metaprotocol_downstream_tls_handshakes_total") >= 1
    assert plain.get("pa:k") == b"v"  # the plaintext connection was never disturbed


def test_permissive_forgets_a_client_that_leaves_silently_and_serves_one_that_waits_in_plaintext(
    run_proxy: object, identity: tuple[Path, CertAuthority], backend: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_module, "SNIFF_TIMEOUT", 0.3)  # Istio's behaviour, sooner: a client silent past it is plaintext
    rp = run_proxy(proxy_tree(PERMISSIVE, identity[0], backend.port))  # type: ignore[operator]
    port = rp.port("cache")
    pending = lambda: len(rp.run(lambda: list(rp.proxy.handshaking.get("cache", ()))))  # type: ignore[attr-defined]  # noqa: E731
    leaving = socket.create_connection(("127.0.0.1", port))
    wait_for(lambda: pending() == 1, "the silent client waiting")
    leaving.close()
    wait_for(lambda: pending() == 0, "the silent client forgotten")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as waiting:
        wait_for(lambda: stat(rp, "metaprotocol_downstream_plaintext_connections_total") == 1, "the waiting client taken as plaintext")
        waiting.sendall(PING)
        assert waiting.recv(100) == b"+PONG\r\n"
    assert plain_ping(port) == b"+PONG\r\n"


def test_permissive_to_strict_drains_the_plaintext_connections_and_keeps_the_mutual_tls_ones(
    run_proxy: object, identity: tuple[Path, CertAuthority], backend: RedisServer
) -> None:
    folder, _ = identity
    rp = run_proxy(proxy_tree(PERMISSIVE, folder, backend.port))  # type: ignore[operator]
    port = rp.port("cache")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain, socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            tls_client(identity, GOOD).wrap_socket(raw) as secure:  # fmt: skip
        for s in (plain, secure):
            s.sendall(PING)
            assert s.recv(100) == b"+PONG\r\n"
        rp.call(rp.proxy.apply(parse_bootstrap(proxy_tree(STRICT, folder, backend.port), "strict")))  # type: ignore[attr-defined]
        assert plain.recv(100) == b""  # drained: closed once nothing was in flight
        secure.sendall(PING)
        assert secure.recv(100) == b"+PONG\r\n"  # the same certificate checks: kept
    assert plain_ping(port) == b""  # and new plaintext clients are refused


def test_strict_refuses_plaintext_and_serves_mutual_tls(run_proxy: object, identity: tuple[Path, CertAuthority], backend: RedisServer) -> None:
    rp = run_proxy(proxy_tree(STRICT, identity[0], backend.port))  # type: ignore[operator]
    port = rp.port("cache")
    assert plain_ping(port) == b""
    wait_for(lambda: stat(rp, "metaprotocol_downstream_tls_handshake_errors_total", "not_tls") == 1, "the plaintext client counted")
    assert tls_ping(port, tls_client(identity, GOOD)) == b"+PONG\r\n"
    assert tls_ping(port, tls_client(identity, None)) == b""
    assert stat(rp, "metaprotocol_downstream_plaintext_connections_total") == 0
