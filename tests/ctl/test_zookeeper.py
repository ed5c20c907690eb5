"""Dubbo providers registered in a real ZooKeeper become services, endpoints and subsets."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from aeraki_ctl.controller import Controller
from aeraki_ctl.sources.zookeeper import ZooKeeperSource, parse_provider
from aeraki_ctl.translate import Options, translate
from aeraki_ctl.xds.server import AdsServer, start_server
from metaprotocol.config.model import Bootstrap
from metaprotocol.io.proxy import Proxy
from metaprotocol.registry import CodecRegistry
from metaprotocol.xds.client import AdsClient
from metaprotocol_apps.dubbo import DubboConsumer, DubboProvider
from tests.servers import ZooKeeperServer, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
IFACE = "org.apache.dubbo.samples.basic.api.DemoService"
HOST = IFACE.lower()


def provider_url(port: int, version: str) -> str:
    return f"dubbo://127.0.0.1:{port}/{IFACE}?anyhost=true&application=demo-provider&interface={IFACE}&methods=sayHello&side=provider&version={version}"


def test_provider_urls_parse_as_dubbo2istio_reads_them() -> None:
    p = parse_provider(quote(provider_url(20881, "v1"), safe=""))
    assert p == {"interface": IFACE, "address": "127.0.0.1", "port": 20881, "labels": {"version": "v1", "side": "provider", "application": "demo-provider"}}
    assert parse_provider(quote("consumer://1.2.3.4/x", safe="")) is None


@pytest.fixture(scope="module")
def zk() -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer()
    yield server
    server.stop()


def test_registry_services_route_and_follow_changes(zk: ZooKeeperServer, tmp_path: Path) -> None:
    from kazoo.client import KazooClient

    # Only the DestinationRule and the MetaRouter are files: the service comes from the registry.
    service = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text().split("---")[1]
    (tmp_path / "dr.yaml").write_text(service)
    shutil.copy(ROOT / "examples/aeraki/dubbo-demo/metarouter.yaml", tmp_path / "metarouter.yaml")

    async def scenario() -> None:
        providers = []
        for v in ("v1", "v2"):
            p = DubboProvider(name=v)
            p.expose(IFACE, "sayHello", lambda who, v=v: f"Hello {who}, response from provider-{v}")
            await p.start()
            providers.append(p)
        registry = KazooClient(hosts=zk.hosts)
        registry.start(timeout=15)
        nodes = {}
        for p, v in zip(providers, ("v1", "v2"), strict=True):
            path = f"/dubbo/{IFACE}/providers/{quote(provider_url(p.port, v), safe='')}"
            registry.create(path, ephemeral=True, makepath=True)
            nodes[v] = path
        source = ZooKeeperSource(zk.hosts)
        ads = AdsServer()
        grpc_server, xds_port = await start_server(ads, "127.0.0.1:0")
        listen = free_port()
        controller = Controller(tmp_path, ads, Options(port_offset=listen - 20880), poll=0.1, quiet=0.05, zookeeper=source)
        proxy = Proxy(Bootstrap((), ()), CodecRegistry.from_entry_points())
        await proxy.start()
        client = AdsClient(proxy, f"127.0.0.1:{xds_port}", "zk-test")
        tasks = [asyncio.ensure_future(controller.run()), asyncio.ensure_future(client.run())]
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while client.applied == 0:
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            boot = translate(controller.resources()).bootstrap
            clusters = boot.cluster_map()
            assert [e.port for e in clusters[f"outbound|20880|v1|{HOST}"].endpoints] == [providers[0].port]
            assert [e.port for e in clusters[f"outbound|20880|v2|{HOST}"].endpoints] == [providers[1].port]
            async with DubboConsumer("127.0.0.1", listen) as c:
                replies = await asyncio.gather(*(c.call(IFACE, "sayHello", [f"z{i}"], attachments={"foo": "bar"}) for i in range(500)))
            split = Counter(r.rsplit("-", 1)[1] for r in replies)
            assert 50 <= split["v1"] <= 150, split  # 20 % of 500
            # A provider leaves the registry: its subset cluster empties.
            await loop.run_in_executor(None, registry.delete, nodes["v1"])
            deadline = loop.time() + 10
            while True:
                boot = translate(controller.resources()).bootstrap
                if not boot.cluster_map()[f"outbound|20880|v1|{HOST}"].endpoints or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert boot.cluster_map()[f"outbound|20880|v1|{HOST}"].endpoints == ()
        finally:
            for t in tasks:
                t.cancel()
            await proxy.close()
            await grpc_server.stop(0)
            source.close()
            registry.stop()
            registry.close()
            for p in providers:
                await p.close()

    asyncio.run(scenario())
