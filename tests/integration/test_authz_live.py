"""Authorization policies end to end: aeraki-ctl serve reads a directory with a ServiceEntry, a
MetaRouter and an Istio AuthorizationPolicy, a metaprotocol proxy gets the RBAC filter over xDS,
real Dubbo calls are allowed and denied, and policy edits (an invalid one, then one that allows)
take effect live on the same connection."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from metaprotocol_codecs.dubbo import wire
from tests.integration.test_dubbo_proxy import DEMO, Providers
from tests.integration.test_xds_live import ENV
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
REF = "AuthorizationPolicy meta-dubbo/deny-goodbye"


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers(("v1",))
    p.providers["v1"].expose(DEMO, "sayGoodbye", lambda who: f"Goodbye {who}", version="1.0.0")
    yield p
    p.stop()


def _write(d: Path, name: str, docs: list[dict[str, Any]]) -> None:
    tmp = d / f".{name}.tmp"
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(d / name)  # atomic: the watcher never sees half a file


def _policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "deny-goodbye", "namespace": "meta-dubbo"}, "spec": spec}


DENY_GOODBYE = {"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayGoodbye"]}]}]}


def _config(d: Path, provider_port: int) -> None:
    service = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "dubbo-demoservice", "namespace": "meta-dubbo"},
               "spec": {"hosts": [HOST], "ports": [{"number": 20880, "name": "tcp-metaprotocol-dubbo", "protocol": "TCP"}], "resolution": "STATIC",
                        "endpoints": [{"address": "127.0.0.1", "ports": {"tcp-metaprotocol-dubbo": provider_port}, "labels": {"version": "v1"}}]}}  # fmt: skip
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": "dubbo-demoservice", "namespace": "meta-dubbo"},
            "spec": {"host": HOST, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}  # fmt: skip
    router = {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "demo", "namespace": "meta-dubbo"},
              "spec": {"hosts": [HOST], "routes": [{"name": "v1", "match": {"attributes": {"interface": {"exact": DEMO}}}, "route": [{"destination": {"host": HOST, "subset": "v1"}}]}]}}  # fmt: skip
    _write(d, "service.yaml", [service, rule, router])
    _write(d, "policy.yaml", [_policy(DENY_GOODBYE)])


def _status(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:  # noqa: S310 - loopback
        out: dict[str, Any] = json.loads(r.read())
        return out


def _wait_state(admin: int, state: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            last = _status(admin)["objects"].get(REF, {})
        except OSError:
            last = {}
        if last.get("state") == state:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{REF} never became {state}: {last}")


def test_policy_denies_live_and_an_edit_allows_again(tmp_path: Path, providers: Providers) -> None:
    _config(tmp_path, providers.port("v1"))
    xds_port, listen_port, admin = free_port(), free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(tmp_path), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--port-offset", str(listen_port - 20880), "--admin", f"127.0.0.1:{admin}", "--log-level", "WARNING"], env=ENV)  # fmt: skip
    proxy = None
    try:
        wait_port(xds_port, 20)
        proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "authz", "--log-level", "WARNING"], env=ENV)
        wait_port(listen_port, 20)
        assert _wait_state(admin, "accepted")["problems"] == []

        async def scenario() -> None:
            async with DubboConsumer("127.0.0.1", listen_port, timeout=10) as c:
                assert (await c.call(DEMO, "sayHello", ["x"], version="1.0.0")).startswith("Hello x")
                with pytest.raises(DubboError) as denied:
                    await c.call(DEMO, "sayGoodbye", ["x"], version="1.0.0")
                assert denied.value.status == wire.SERVICE_ERROR and "RBAC: access denied" in str(denied.value)
                assert not any(inv.method == "sayGoodbye" for inv in providers.providers["v1"].calls)
                # An invalid edit (an HTTP-only field) is rejected: the last valid version keeps denying.
                _write(tmp_path, "policy.yaml", [_policy({**DENY_GOODBYE, "rules": [{"to": [{"operation": {"methods": ["sayGoodbye"]}}]}]})])
                problems = await asyncio.to_thread(_wait_state, admin, "serving-last-valid")
                assert any("spec.rules[0].to[0].operation.methods" in p for p in problems["problems"]), problems
                with pytest.raises(DubboError, match="RBAC: access denied"):
                    await c.call(DEMO, "sayGoodbye", ["x"], version="1.0.0")
                # The policy is edited to allow it: allowed again, on the same connection, no restart.
                _write(tmp_path, "policy.yaml", [_policy({"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayNothing"]}]}]})])
                await asyncio.to_thread(_wait_state, admin, "accepted")
                deadline = time.monotonic() + 15
                result: str | None = None
                while result is None:
                    try:
                        result = await c.call(DEMO, "sayGoodbye", ["x"], version="1.0.0")
                    except DubboError as exc:
                        assert "RBAC: access denied" in str(exc)
                        assert time.monotonic() < deadline, "sayGoodbye still denied after the policy allowed it"
                        await asyncio.sleep(0.05)
                assert result == "Goodbye x"
                assert (await c.call(DEMO, "sayHello", ["y"], version="1.0.0")).startswith("Hello y")

        asyncio.run(scenario())
    finally:
        for p in (proxy, ctl):
            if p is not None:
                p.terminate()
                p.wait(10)
