"""aeraki-ctl serve --ca -> metaprotocol proxy --identity, as processes: the certificate files
appear, verify against the CA with the SPIFFE URI SAN, are renewed at half-life, and a proxy with
a wrong token gets none and says why."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BILLING = "spiffe://cluster.local/ns/billing/sa/billing"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def verify(directory: Path, root: x509.Certificate) -> x509.Certificate:
    """The files are a matching key and certificate for BILLING that verifies against ``root``."""
    leaf, *intermediates = load_chain(directory / "cert.pem")
    assert load_chain(directory / "ca.pem") == [root]
    PolicyBuilder().store(Store([root])).build_client_verifier().verify(leaf, intermediates)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [BILLING]
    key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert (directory / "key.pem").stat().st_mode & 0o077 == 0
    return leaf


def renewed(directory: Path, root: x509.Certificate, first: x509.Certificate) -> bool:
    try:  # the key is written just before the certificate: a reader may see one of them new
        return verify(directory, root).serial_number != first.serial_number
    except (AssertionError, ValueError):
        return False


def ca_status(admin: int) -> dict[str, object]:
    """The "ca" part of aeraki-ctl's /status."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())["ca"]  # type: ignore[no-any-return]


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[tuple[int, Path, int]]:
    """aeraki-ctl serve --ca: (xDS port, CA directory, admin port)."""
    config, ca_dir = tmp_path / "config", tmp_path / "ca"
    config.mkdir()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "billing-token", "spiffe://cluster.local/ns/shop/sa/cart": "cart-token"}))
    port, admin = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{port}",
                             "--admin", f"127.0.0.1:{admin}", "--ca", "--ca-dir", str(ca_dir), "--ca-tokens", str(tokens), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        wait_port(port, 60)
        wait_port(admin, 60)
        yield port, ca_dir, admin
    finally:
        proc.terminate()
        proc.wait(10)


def start_proxy(port: int, tmp_path: Path, name: str, token: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    directory, token_file, log = tmp_path / name, tmp_path / f"{name}.token", tmp_path / f"{name}.log"
    token_file.write_text(token + "\n")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{port}", "--node-id", name,
                                 "--identity", BILLING, "--identity-token-file", str(token_file), "--identity-dir", str(directory), *extra],
                                env=ENV, stderr=out)  # fmt: skip
    return proc, directory, log


def test_proxy_gets_its_certificate_and_renews_it_at_half_life(ctl: tuple[int, Path, int], tmp_path: Path) -> None:
    port, ca_dir, admin = ctl
    proxy_admin = free_port()
    proxy, directory, log = start_proxy(port, tmp_path, "billing", "billing-token", "--identity-ttl", "4", "--admin", f"127.0.0.1:{proxy_admin}")
    try:
        wait_until(lambda: (directory / "ca.pem").exists(), 60, "the certificate files")
        root = load_chain(ca_dir / "ca-cert.pem")[0]
        first = verify(directory, root)
        assert first.not_valid_after_utc - first.not_valid_before_utc == datetime.timedelta(seconds=4)
        # renewed at half-life (2 s): a new certificate and key, written whole
        wait_until(lambda: load_chain(directory / "cert.pem")[0].serial_number != first.serial_number, 60, "the renewed certificate")
        wait_until(lambda: renewed(directory, root, first), 5, "a matching key")
        second = verify(directory, root)
        assert second.not_valid_before_utc >= first.not_valid_before_utc
        assert proxy.poll() is None
        status = ca_status(admin)
        assert status["trust_domain"] == "cluster.local" and status["issued"][BILLING] >= 2 and status["refused"] == {}  # type: ignore[index]
        # the agent's counters are on the proxy's /stats
        wait_port(proxy_admin, 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy_admin}/stats", timeout=5) as resp:
            stats = resp.read().decode()
        issued = re.search(rf'^metaprotocol_identity_certificates_issued_total{{identity="{re.escape(BILLING)}"}} (\d+)$', stats, re.M)
        assert issued and int(issued.group(1)) >= 2, stats
        assert f'metaprotocol_identity_failures_total{{identity="{BILLING}"}} 0' in stats
        expiry = re.search(r"^metaprotocol_identity_certificate_expiry_seconds\{[^}]*\} (\d+)$", stats, re.M)
        assert expiry and abs(int(expiry.group(1)) - second.not_valid_after_utc.timestamp()) <= 4
    finally:
        proxy.terminate()
        proxy.wait(10)
    assert b"no certificate" not in log.read_bytes()


def test_a_wrong_token_gets_no_certificate_and_the_proxy_says_why(ctl: tuple[int, Path, int], tmp_path: Path) -> None:
    port, _, admin = ctl
    proxy, directory, log = start_proxy(port, tmp_path, "intruder", "cart-token", "--identity-wait", "0")
    try:
        wait_until(lambda: b"does not grant" in log.read_bytes(), 60, "the refusal in the log")
        text = log.read_bytes().decode()
        assert f"no certificate for {BILLING}" in text and "PERMISSION_DENIED" in text, text
        assert not (directory / "cert.pem").exists() and not (directory / "key.pem").exists()
        assert proxy.poll() is None  # it serves on, and keeps asking
    finally:
        proxy.terminate()
        proxy.wait(10)
    proxy, directory, log = start_proxy(port, tmp_path, "stranger", "guessed", "--identity-wait", "0")
    try:
        wait_until(lambda: b"UNAUTHENTICATED" in log.read_bytes(), 60, "the refusal in the log")
        assert "the token is not valid" in log.read_bytes().decode()
        assert not (directory / "cert.pem").exists()
        refused = ca_status(admin)["refused"]
        assert refused["denied"] >= 1 and refused["unauthenticated"] >= 1, refused  # type: ignore[index]
    finally:
        proxy.terminate()
        proxy.wait(10)


class ThreadedContract:
    """The Kubernetes contract server on a loop in a thread (aeraki-ctl runs as a process)."""

    def __init__(self) -> None:
        import asyncio
        import threading

        from tests.k8s_contract import ContractServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ContractServer()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def test_in_kubernetes_a_service_account_token_gets_its_identity(tmp_path: Path) -> None:
    """serve --kubernetes --ca: TokenReview by default; the proxy's projected token (audience istio-ca)."""
    api = ThreadedContract()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters: [{{name: t, cluster: {{server: '{api.server.url}'}}}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: u}}]\nusers: [{name: u, user: {token: abc}}]\n"
    )
    port = free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", "billing",
                            "--xds-address", f"127.0.0.1:{port}", "--ca", "--ca-dir", str(tmp_path / "ca"), "--log-level", "CRITICAL"], env=ENV)  # fmt: skip
    token = api.server.issue_token("billing", "billing", audiences=("istio-ca",))  # read by the server's loop only after this
    proxy, directory, _ = start_proxy(port, tmp_path, "k8s", token, "--identity-wait", "0")
    try:
        wait_port(port, 60)
        wait_until(lambda: (directory / "ca.pem").exists(), 60, "the certificate files")
        verify(directory, load_chain(tmp_path / "ca" / "ca-cert.pem")[0])
        assert api.server.reviews and api.server.reviews[0]["audiences"] == ["istio-ca"]
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
        api.stop()


# -- certificates from the CA reach TLS listeners through the files ----------------------------------


def test_ca_certificates_serve_an_mtls_listener_and_rotate_with_traffic_flowing(tmp_path: Path) -> None:
    """proxy -c (a Redis listener whose DownstreamTlsContext names the identity files) --identity:
    clients see the SPIFFE identity from the CA, and a renewal at half-life of a 4 s certificate
    is picked up by new handshakes while a connection made before goes on with no failure."""
    import socket
    import ssl
    import threading

    import redis
    import yaml
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from aeraki_ctl.ca import CertificateAuthority
    from tests.servers import RedisServer, bootstrap_dict, cluster, listener

    ca_dir, config, ids = tmp_path / "ca", tmp_path / "config", tmp_path / "id"
    config.mkdir()
    ca = CertificateAuthority.in_directory(ca_dir)  # made here, loaded by aeraki-ctl: the test signs its client with it
    client_key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(client_key, hashes.SHA256())
    (tmp_path / "client.pem").write_text("".join(ca.sign(csr.public_bytes(serialization.Encoding.PEM), "spiffe://cluster.local/ns/shop/sa/cart", 3600)[:-1]))
    (tmp_path / "client.key").write_bytes(client_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "root.pem").write_text(ca.root_pem)
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "billing-token"}))
    (tmp_path / "billing.token").write_text("billing-token")
    upstream = RedisServer()
    xds_port, port = free_port(), free_port()
    lst = listener("redis", port, "redis", [{"name": "all", "route": {"cluster": "r", "timeout": "3s"}}])
    lst["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {  # type: ignore[index]
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext", "require_client_certificate": True,
        "common_tls_context": {"tls_certificates": [{"certificate_chain": {"filename": str(ids / "cert.pem")}, "private_key": {"filename": str(ids / "key.pem")}}],
                               "validation_context": {"trusted_ca": {"filename": str(ids / "ca.pem")}}}}}  # fmt: skip
    (tmp_path / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap_dict([lst], [cluster("r", [upstream.port])])))
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--ca", "--ca-dir", str(ca_dir), "--ca-tokens", str(tokens), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    procs = [ctl]
    try:
        wait_port(xds_port, 60)
        with (tmp_path / "proxy.log").open("wb") as out:  # the listener is served once the first certificate is written
            procs.append(subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp_path / "bootstrap.yaml"),
                                           "--identity", BILLING, "--identity-ca", f"127.0.0.1:{xds_port}", "--identity-token-file", str(tmp_path / "billing.token"),
                                           "--identity-dir", str(ids), "--identity-ttl", "4", "--drain-timeout", "1", "--log-level", "WARNING"], env=ENV, stderr=out))  # fmt: skip
        wait_port(port, 60)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "root.pem"))
        ctx.check_hostname = False  # the identity is a URI SAN, checked here
        ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")

        def presented() -> x509.Certificate:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                assert s.recv(100) == b"+PONG\r\n"
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return x509.load_der_x509_certificate(der)

        first = presented()
        assert first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier) == [BILLING]
        persistent = redis.Redis(port=port, ssl=True, ssl_certfile=str(tmp_path / "client.pem"), ssl_keyfile=str(tmp_path / "client.key"),
                                 ssl_ca_certs=str(tmp_path / "root.pem"), ssl_check_hostname=False)  # fmt: skip
        assert persistent.incr("id:n") == 1
        failures: list[BaseException] = []
        done = threading.Event()
        count = [0]

        def traffic() -> None:
            while not done.is_set():
                try:
                    persistent.incr("id:n")
                    count[0] += 1
                except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                    failures.append(exc)
                    return

        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        wait_until(lambda: presented().serial_number != first.serial_number, 60, "the renewed certificate on new handshakes")
        before = count[0]
        wait_until(lambda: count[0] > before + 10 or failures, 10, "traffic after the rotation")
        done.set()
        worker.join(10)
        assert failures == [] and persistent.get("id:n") == str(count[0] + 1).encode()
        persistent.close()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        upstream.stop()


def test_over_xds_tls_and_with_worker_processes(tmp_path: Path) -> None:
    """serve --tls-cert/--tls-key --ca: the agent asks the CA with the ADS channel's TLS settings
    (--xds-ca, --xds-server-name); with --concurrency 2 one agent (in the parent) writes the files;
    without --xds-ca the plaintext request to a TLS port fails and the proxy says so."""
    from tests.tls_certs import CertAuthority

    server_ca = CertAuthority("xds server CA")
    server_cert = server_ca.write(tmp_path, "xds", "aeraki-ctl", dns=("aeraki-ctl.aeraki.svc",))
    server_ca_file = server_ca.write_ca(tmp_path, "xds-ca")
    config = tmp_path / "config"
    config.mkdir()
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({BILLING: "billing-token"}))
    port = free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{port}",
                            "--tls-cert", server_cert[0], "--tls-key", server_cert[1], "--ca", "--ca-dir", str(tmp_path / "ca"), "--ca-tokens", str(tokens),
                            "--log-level", "WARNING"], env=ENV)  # fmt: skip
    procs = [ctl]
    try:
        wait_port(port, 60)
        tls, directory, _ = start_proxy(port, tmp_path, "tls", "billing-token", "--xds-ca", server_ca_file, "--xds-server-name", "aeraki-ctl.aeraki.svc",
                                        "--concurrency", "2", "--identity-wait", "0")  # fmt: skip
        plain, plain_dir, plain_log = start_proxy(port, tmp_path, "plain", "billing-token", "--identity-wait", "0")
        procs += [tls, plain]
        wait_until(lambda: (directory / "ca.pem").exists(), 60, "the certificate files over TLS")
        verify(directory, load_chain(tmp_path / "ca" / "ca-cert.pem")[0])
        wait_until(lambda: b"no certificate for" in plain_log.read_bytes(), 60, "the plaintext proxy's failure")
        assert b"UNAVAILABLE" in plain_log.read_bytes() and not plain_dir.exists()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(15)
