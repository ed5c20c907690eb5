"""The validating admission webhook over real HTTPS: AdmissionReview (admission.k8s.io/v1) documents
POSTed to /validate with certificates made here (openssl), the webhook in-process, as
``aeraki-ctl webhook`` and inside ``aeraki-ctl serve --webhook-port``; and the validator it shares
with ``aeraki-ctl validate`` (an object alone, or beside the others)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from aeraki_ctl.resources import ResourceSet, load_text
from aeraki_ctl.validation import validate_object
from aeraki_ctl.webhook import INVALID_CODE, WebhookServer, review, tls_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test certificates")
HOST = "dubbo-demo.meta-dubbo.svc.cluster.local"


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, and a server certificate it signed for localhost and 127.0.0.1 (as a cluster's
    aeraki-ctl.<ns>.svc would have)."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=aeraki-ctl.aeraki.svc")
    (d / "san.cnf").write_text("subjectAltName=DNS:localhost,DNS:aeraki-ctl.aeraki.svc,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "tls.crt", "-days", "2", "-extfile", "san.cnf")
    return Certs(d / "ca.crt", d / "tls.crt", d / "tls.key")


def router(spec: dict[str, object], name: str = "route", namespace: str = "meta-dubbo") -> dict[str, object]:
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def admission(obj: dict[str, object] | None, uid: str = "7b0c-1", operation: str = "CREATE") -> dict[str, object]:
    """An AdmissionReview as the API server sends it (admission.k8s.io/v1)."""
    meta = obj["metadata"] if obj else {"name": "route", "namespace": "meta-dubbo"}
    assert isinstance(meta, dict)
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "metaprotocol.aeraki.io", "version": "v1alpha1", "kind": "MetaRouter"},
            "resource": {"group": "metaprotocol.aeraki.io", "version": "v1alpha1", "resource": "metarouters"},
            "requestKind": {"group": "metaprotocol.aeraki.io", "version": "v1alpha1", "kind": "MetaRouter"},
            "requestResource": {"group": "metaprotocol.aeraki.io", "version": "v1alpha1", "resource": "metarouters"},
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


GOOD = router({
    "hosts": [HOST],
    "routes": [{
        "name": "v1-v2",
        "match": {"attributes": {"interface": {"exact": "org.apache.dubbo.samples.basic.api.DemoService"}, "method": {"regex": "say.*"}}},
        "route": [{"destination": {"host": HOST, "subset": "v1"}, "weight": 20}, {"destination": {"host": HOST, "subset": "v2"}, "weight": 80}],
        "requestMutation": [{"key": "foo", "value": "bar"}],
    }],
    "localRateLimit": {"tokenBucket": {"maxTokens": 10, "tokensPerFill": 2, "fillInterval": "1m30s"}},
})  # fmt: skip
BAD = router({
    "hosts": [HOST],
    "routes": [
        {"match": {"attributes": {"method": {"regex": "say(("}}},
         "route": [{"destination": {"host": HOST, "subset": "v1"}, "weight": "twenty"}, {"destination": {"host": HOST, "subset": "v2"}, "weight": 80}]},
        {"name": "other", "timeout": "3s", "route": [{"destination": {"host": HOST}}]},
    ],
    "localRateLimit": {"tokenBucket": {"maxTokens": 0, "fillInterval": "10 seconds"}},
})  # fmt: skip
BAD_PATHS = {
    "spec.routes[0].route[0].weight",
    "spec.routes[0].match.attributes.method.regex",
    "spec.routes[1].timeout",
    "spec.localRateLimit.tokenBucket.fillInterval",
    "spec.localRateLimit.tokenBucket.maxTokens",
}
BAD_SUM = router({"hosts": [HOST], "routes": [{"route": [{"destination": {"host": HOST, "subset": "v1"}, "weight": 30}, {"destination": {"host": "other.svc", "subset": "v2"}, "weight": 60}]}]})


# -- the validator --------------------------------------------------------------------------------


def test_an_object_alone_needs_none_of_what_it_refers_to() -> None:
    verdict = validate_object(GOOD)
    assert verdict.allowed and verdict.ref == "MetaRouter meta-dubbo/route" and verdict.problems == []


def test_every_problem_of_an_object_alone_with_its_path() -> None:
    verdict = validate_object(BAD)
    assert not verdict.allowed
    assert {p.path for p in verdict.errors} >= BAD_PATHS
    assert all(p.obj == "MetaRouter meta-dubbo/route" for p in verdict.problems)


def test_weights_must_sum_to_100() -> None:
    verdict = validate_object(BAD_SUM)
    assert [(p.path, p.reason) for p in verdict.errors] == [("spec.routes[0].route", "weights sum to 90, not 100")]


def test_references_are_required_only_when_asked() -> None:
    verdict = validate_object(GOOD, require_references=True)
    assert not verdict.allowed and any("not a MetaProtocol service" in p.reason for p in verdict.errors)


REDIS_CONTEXT = f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {{name: redis, namespace: meta-dubbo}}
spec: {{protocol: redis, codec: redis}}
---
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {{name: cache, namespace: meta-dubbo}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 6379, name: tcp-metaprotocol-redis, protocol: TCP}}]
  endpoints: [{{address: 10.0.0.1, labels: {{version: v1}}}}, {{address: 10.0.0.2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: cache, namespace: meta-dubbo}}
spec:
  host: {HOST}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"""


def redis_context() -> ResourceSet:
    out = ResourceSet()
    load_text(REDIS_CONTEXT, "context.yaml", out)
    return out


def test_mutations_are_checked_against_the_codec_of_a_service_in_the_context() -> None:
    verdict = validate_object(GOOD, redis_context())
    assert [(p.path, p.reason) for p in verdict.errors] == [
        ("spec.routes[0].requestMutation", "the redis codec cannot carry request/response mutations (the proxy would reject the route table)")
    ]
    without = json.loads(json.dumps(GOOD))
    del without["spec"]["routes"][0]["requestMutation"]
    assert validate_object(without, redis_context()).allowed


def test_an_update_replaces_the_object_of_the_same_name_in_the_context() -> None:
    context = redis_context()
    load_text(yaml.safe_dump(BAD_SUM), "old.yaml", context)
    fixed = json.loads(json.dumps(BAD_SUM))
    fixed["spec"]["routes"][0]["route"][1]["weight"] = 70
    assert validate_object(fixed, context).allowed


def test_review_of_a_delete_or_another_kind_is_allowed() -> None:
    assert review(admission(None, operation="DELETE"))["response"] == {"uid": "7b0c-1", "allowed": True}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "x"}, "spec": {}}
    response = review(admission(pod))["response"]
    assert isinstance(response, dict) and response["allowed"] is True


def test_review_fills_a_generated_name_from_the_request() -> None:
    obj = json.loads(json.dumps(GOOD))
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "route-"
    doc = admission(obj)
    doc["request"]["name"] = "route-x7k2"  # type: ignore[index]
    assert review(doc)["response"] == {"uid": "7b0c-1", "allowed": True}


# -- over HTTPS -----------------------------------------------------------------------------------


def client_context(certs: Certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.set_alpn_protocols(["h2", "http/1.1"])  # as the API server offers
    return ctx


def post(conn: http.client.HTTPSConnection, body: object, path: str = "/validate") -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", "Accept": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest_asyncio.fixture
async def webhook(certs: Certs) -> AsyncIterator[int]:
    server = WebhookServer(tls_context(str(certs.cert), str(certs.key)))
    port = await server.start("127.0.0.1", 0)
    yield port
    await server.close()


@pytest.mark.asyncio
async def test_https_admission_reviews_on_one_kept_alive_connection(webhook: int, certs: Certs) -> None:
    def exchange() -> list[tuple[int, dict[str, object]]]:
        conn = http.client.HTTPSConnection("localhost", webhook, context=client_context(certs), timeout=10)
        try:
            out = [post(conn, admission(GOOD, uid="good-1")), post(conn, admission(BAD, uid="bad-2"))]
            assert conn.sock is not None and conn.sock.selected_alpn_protocol() == "http/1.1"
            return out
        finally:
            conn.close()

    (s1, good), (s2, bad) = await asyncio.to_thread(exchange)
    assert s1 == s2 == 200
    assert good == {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "good-1", "allowed": True}}
    response = bad["response"]
    assert isinstance(response, dict) and response["uid"] == "bad-2" and response["allowed"] is False
    status = response["status"]
    assert isinstance(status, dict) and status["code"] == INVALID_CODE == 422 and status["reason"] == "Invalid" and status["status"] == "Failure"
    message = status["message"]
    assert isinstance(message, str) and message.startswith("MetaRouter meta-dubbo/route: ")
    for path in BAD_PATHS:
        assert f"{path}: " in message
    causes = status["details"]["causes"]  # type: ignore[index]
    assert {c["field"] for c in causes} >= BAD_PATHS


@pytest.mark.asyncio
async def test_https_warnings_and_refusals_of_what_is_not_a_review(webhook: int, certs: Certs) -> None:
    warned = router({"hosts": [HOST, "second.host"], "exportTo": ["."], "routes": [{"route": [{"destination": {"host": HOST}}]}]})

    def exchange() -> list[tuple[int, dict[str, object]]]:
        conn = http.client.HTTPSConnection("127.0.0.1", webhook, context=client_context(certs), timeout=10)
        try:
            return [post(conn, admission(warned, uid="w")), post(conn, {"kind": "Pod"}), post(conn, admission(GOOD), path="/mutate")]
        finally:
            conn.close()

    (s1, ok), (s2, notreview), (s3, elsewhere) = await asyncio.to_thread(exchange)
    assert s1 == 200 and ok["response"] == {  # type: ignore[comparison-overlap]
        "uid": "w", "allowed": True,
        "warnings": ["spec.hosts[1]: only hosts[0] (dubbo-demo.meta-dubbo.svc.cluster.local) is used, as in Aeraki; the others are ignored",
                     "spec.exportTo: exportTo is not supported by aeraki-ctl; ignored"],
    }  # fmt: skip
    assert s2 == 400 and s3 == 404


@pytest.mark.asyncio
async def test_plain_http_and_untrusted_clients_get_nothing(webhook: int) -> None:
    def plain() -> bytes:
        with socket.create_connection(("127.0.0.1", webhook), timeout=5) as s:
            s.sendall(b"POST /validate HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
            return s.recv(1024)

    assert b"AdmissionReview" not in await asyncio.to_thread(plain)

    def untrusted() -> None:
        conn = http.client.HTTPSConnection("127.0.0.1", webhook, context=ssl.create_default_context(), timeout=5)
        try:
            post(conn, admission(GOOD))
        finally:
            conn.close()

    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(untrusted)


# -- the commands ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def command() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for_review(port: int, certs: Certs, doc: object, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPSConnection("localhost", port, context=client_context(certs), timeout=5)
            try:
                status, body = post(conn, doc)
            finally:
                conn.close()
            assert status == 200
            return body
        except (ConnectionRefusedError, ConnectionResetError):
            assert time.monotonic() < deadline, "the webhook never answered"
            time.sleep(0.1)


def aeraki_ctl(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from aeraki_ctl.cli import main; sys.exit(main())", *args]


def test_the_webhook_command(certs: Certs, command: list[subprocess.Popen[bytes]]) -> None:
    port = free_port()
    command.append(subprocess.Popen(aeraki_ctl("webhook", "--address", "127.0.0.1", "--port", str(port), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}))  # fmt: skip
    assert wait_for_review(port, certs, admission(GOOD, uid="a"))["response"] == {"uid": "a", "allowed": True}
    refused = wait_for_review(port, certs, admission(BAD_SUM, uid="b"))["response"]
    assert isinstance(refused, dict) and refused["allowed"] is False and "spec.routes[0].route: weights sum to 90, not 100" in refused["status"]["message"]  # type: ignore[index]


def test_serve_with_the_webhook_judges_beside_what_the_controller_sees(certs: Certs, command: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    (tmp_path / "redis.yaml").write_text(REDIS_CONTEXT)
    port = free_port()
    command.append(subprocess.Popen(aeraki_ctl("serve", "--config-dir", str(tmp_path), "--xds-address", f"127.0.0.1:{free_port()}",
                                               "--webhook-address", "127.0.0.1", "--webhook-port", str(port), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
    refused = wait_for_review(port, certs, admission(GOOD, uid="c"))["response"]
    assert isinstance(refused, dict) and refused["allowed"] is False
    assert "spec.routes[0].requestMutation: the redis codec cannot carry request/response mutations" in refused["status"]["message"]  # type: ignore[index]


def test_serve_webhook_port_needs_the_certificate() -> None:
    result = subprocess.run(aeraki_ctl("serve", "--config-dir", ".", "--webhook-port", "9443"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--webhook-port needs --tls-cert and --tls-key" in result.stderr
