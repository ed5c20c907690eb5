"""The ADS server over real gRPC on loopback: subscribe, ACK, NACK, push, named resources, delta."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import translate
from aeraki_ctl.xds.server import AdsServer, start_server
from aeraki_ctl.xds.snapshot import snapshot_of
from metaprotocol.config.model import Bootstrap, ClusterConfig, Endpoint
from metaprotocol.xds import convert

ROOT = Path(__file__).resolve().parents[2]
NODE = base_pb2.Node(id="test-proxy")


def demo_snapshot():  # type: ignore[no-untyped-def]
    return snapshot_of(translate(load_directory(ROOT / "examples/aeraki/dubbo-demo")).bootstrap)


def with_clusters(*names: str):  # type: ignore[no-untyped-def]
    return snapshot_of(Bootstrap((), tuple(ClusterConfig(n, (Endpoint("127.0.0.1", 1000 + i),)) for i, n in enumerate(names))))


class Stream:
    """A raw ADS client stream for tests."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, delta: bool = False) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()

        async def requests() -> AsyncIterator[object]:
            while True:
                yield await self.queue.get()

        self.call = stub.DeltaAggregatedResources(requests()) if delta else stub.StreamAggregatedResources(requests())
        self.responses: asyncio.Queue[object] = asyncio.Queue()
        # Cancelling a gRPC read cancels the call, so one task reads and tests wait on a queue.
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    def send(self, req: object) -> None:
        self.queue.put_nowait(req)

    async def recv(self, timeout: float = 2.0) -> object:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def silent(self, timeout: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.responses.get(), timeout)
        except TimeoutError:
            return True
        return False


@pytest_asyncio.fixture
async def ads() -> AsyncIterator[tuple[AdsServer, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    server = AdsServer(demo_snapshot())
    grpc_server, port = await start_server(server, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await grpc_server.stop(0)


@pytest.mark.asyncio
async def test_sotw_subscribe_ack_push_and_nack(ads: tuple[AdsServer, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    server, stub = ads
    s = Stream(stub)
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.CLUSTER_TYPE))
    r1 = await s.recv()
    names = set()
    for a in r1.resources:  # type: ignore[attr-defined]
        c = cluster_pb2.Cluster()
        a.Unpack(c)
        names.add(c.name)
    assert "outbound|20880|v1|org.apache.dubbo.samples.basic.api.demoservice" in names and r1.nonce and r1.version_info  # type: ignore[attr-defined]
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.CLUSTER_TYPE, version_info=r1.version_info, response_nonce=r1.nonce))  # type: ignore[attr-defined]
    assert await s.silent()  # ACKed: nothing new to send
    await server.set_snapshot(demo_snapshot())  # same content: no push
    assert await s.silent()
    await server.set_snapshot(with_clusters("a", "b"))
    r2 = await s.recv()
    assert r2.version_info != r1.version_info and len(r2.resources) == 2  # type: ignore[attr-defined]
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.CLUSTER_TYPE, version_info=r1.version_info, response_nonce=r2.nonce,  # type: ignore[attr-defined]
                                          error_detail=status_pb2.Status(code=3, message="bad cluster")))  # fmt: skip
    assert await s.silent()  # the NACKed version is not sent again
    info = next(iter(server.streams.values()))
    assert info.nacks == [f"{convert.CLUSTER_TYPE}: bad cluster"] and info.node_id == "test-proxy"
    await server.set_snapshot(with_clusters("a", "b", "c"))
    r3 = await s.recv()
    assert len(r3.resources) == 3  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_named_subscriptions_and_stale_nonces(ads: tuple[AdsServer, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    server, stub = ads
    s = Stream(stub)
    wanted = "outbound|20880|v2|org.apache.dubbo.samples.basic.api.demoservice"
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.ENDPOINT_TYPE, resource_names=[wanted]))
    r = await s.recv()
    assert len(r.resources) == 1  # type: ignore[attr-defined]
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.ENDPOINT_TYPE, resource_names=[wanted], version_info="old", response_nonce="999"))
    assert await s.silent()  # stale nonce: ignored
    s.send(discovery_pb2.DiscoveryRequest(node=NODE, type_url=convert.ROUTE_TYPE, resource_names=["org.apache.dubbo.samples.basic.api.demoservice_20880"]))
    r = await s.recv()
    assert r.type_url == convert.ROUTE_TYPE and len(r.resources) == 1  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_delta_sends_only_changes_and_removals(ads: tuple[AdsServer, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    server, stub = ads
    await server.set_snapshot(with_clusters("a", "b"))
    s = Stream(stub, delta=True)
    s.send(discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=convert.CLUSTER_TYPE, resource_names_subscribe=["*"]))
    r = await s.recv()
    assert sorted(x.name for x in r.resources) == ["a", "b"] and not r.removed_resources  # type: ignore[attr-defined]
    s.send(discovery_pb2.DeltaDiscoveryRequest(node=NODE, type_url=convert.CLUSTER_TYPE, response_nonce=r.nonce))  # type: ignore[attr-defined]
    assert await s.silent()
    changed = snapshot_of(Bootstrap((), (ClusterConfig("a", (Endpoint("127.0.0.1", 1000),)), ClusterConfig("c", (Endpoint("127.0.0.1", 7),)))))
    await server.set_snapshot(changed)
    r = await s.recv()
    assert [x.name for x in r.resources] == ["c"] and list(r.removed_resources) == ["b"]  # type: ignore[attr-defined]
