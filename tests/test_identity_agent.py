"""The proxy's identity agent (metaprotocol.io.identity) against the CA service in this process:
files written atomically, renewal at half-life, failures counted and retried with back-off while
the old certificate stays in place."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from aeraki_ctl.authn import TokensFile
from aeraki_ctl.ca import CertificateAuthority, CertificateService, new_root
from aeraki_ctl.xds.server import AdsServer, start_server
from metaprotocol.io.identity import IdentityAgent, IdentityError

BILLING = "spiffe://cluster.local/ns/billing/sa/billing"


class CAServer:
    """aeraki-ctl's gRPC server with the CA, on an event loop in a thread."""

    def __init__(self, tokens: Path) -> None:
        key, cert = new_root("cluster.local")
        self.ca = CertificateAuthority(key, [cert])
        self.service = CertificateService(self.ca, TokensFile(tokens))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, self.port = asyncio.run_coroutine_threadsafe(start_server(AdsServer(), "127.0.0.1:0", [self.service.handler()]), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({BILLING: "good"}))
    return path


@pytest.fixture
def ca_server(tokens: Path) -> Iterator[CAServer]:
    server = CAServer(tokens)
    yield server
    server.close()


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_renew_writes_the_three_files(ca_server: CAServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("good\n")
    agent = IdentityAgent(f"127.0.0.1:{ca_server.port}", BILLING, tmp_path / "id", token_file=str(token), ttl=60)
    agent.renew()
    d = tmp_path / "id"
    assert sorted(p.name for p in d.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]  # no temporary file left
    assert (d / "ca.pem").read_text() == ca_server.ca.root_pem
    assert agent.not_after - agent.not_before == 60 and agent.renew_at() == agent.not_before + 30
    assert agent.ready.is_set() and agent.issued == 1
    agent.stop()


def test_refusal_is_an_identity_error_with_the_cas_reason(ca_server: CAServer, tmp_path: Path) -> None:
    agent = IdentityAgent(f"127.0.0.1:{ca_server.port}", BILLING, tmp_path / "id")  # no token at all
    with pytest.raises(IdentityError, match="UNAUTHENTICATED: no credentials"):
        agent.renew()
    agent.token_file = str(tmp_path / "missing")
    with pytest.raises(IdentityError, match="cannot read the token file"):
        agent.renew()
    assert not (tmp_path / "id").exists()
    agent.stop()


def test_failures_are_retried_with_back_off_and_the_old_certificate_stays(ca_server: CAServer, tokens: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("good")
    d = tmp_path / "id"
    agent = IdentityAgent(f"127.0.0.1:{ca_server.port}", BILLING, d, token_file=str(token), ttl=2, min_backoff=0.05, max_backoff=0.2)
    agent.start()
    try:
        assert agent.ready.wait(10)
        first = serial(d / "cert.pem")
        tokens.write_text(json.dumps({BILLING: "rotated-on-the-ca"}))  # the CA stops accepting our token
        wait_until(lambda: agent.failures >= 3)
        assert "not valid" in agent.last_error
        assert serial(d / "cert.pem") == first  # kept while it is refused
        issued = agent.issued
        token.write_text("rotated-on-the-ca")  # the new token reaches the proxy: the next retry succeeds
        wait_until(lambda: agent.issued > issued)
        assert serial(d / "cert.pem") != first and agent.last_error == ""
    finally:
        agent.stop()
    assert agent.stats()["failures"] == agent.failures


def test_a_ca_that_is_down_is_retried(tmp_path: Path, tokens: Path) -> None:
    from tests.servers import free_port

    token = tmp_path / "token"
    token.write_text("good")
    agent = IdentityAgent(f"127.0.0.1:{free_port()}", BILLING, tmp_path / "id", token_file=str(token), min_backoff=0.05, max_backoff=0.1, timeout=1)
    agent.start()
    try:
        wait_until(lambda: agent.failures >= 2)
        assert "UNAVAILABLE" in agent.last_error and not agent.ready.is_set()
    finally:
        agent.stop()
