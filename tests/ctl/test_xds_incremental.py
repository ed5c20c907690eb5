"""Pushes proportional to the change, and Sidecar scopes, over real gRPC: an edit sends only the
resources it changed, and proxies of different scopes receive different sets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.resources import Resource, ResourceSet, add_object
from aeraki_ctl.sidecar import ScopeRules
from aeraki_ctl.xds.server import AdsServer, start_server
from aeraki_ctl.xds.snapshot import SnapshotBuilder
from metaprotocol.xds import convert
from metaprotocol.xds.client import node_metadata

LDS, RDS, CDS, EDS = convert.LISTENER_TYPE, convert.ROUTE_TYPE, convert.CLUSTER_TYPE, convert.ENDPOINT_TYPE
NAMESPACES = ("shared", "team-a", "team-b")


def _read(doc: dict[str, Any]) -> Resource:
    out = ResourceSet()
    add_object(doc, "test", out)
    assert out.resources and not out.resources[0].rejected, out.resources[0].problems if out.resources else out.problems
    return out.resources[0]


def service(ns: str, i: int, weight: int = 50, address: str = "10.0.0.2") -> list[Resource]:
    host, port = f"svc{i}.{ns}.example", 9000 + i
    return [
        _read({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": f"svc{i}", "namespace": ns},
               "spec": {"hosts": [host], "ports": [{"number": port, "name": "tcp-metaprotocol-dubbo", "protocol": "TCP"}],
                        "endpoints": [{"address": "10.0.0.1", "labels": {"version": "v1"}}, {"address": address, "labels": {"version": "v2"}}]}}),
        _read({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": f"svc{i}", "namespace": ns},
               "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}),
        _read({"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": f"svc{i}", "namespace": ns},
               "spec": {"hosts": [host], "routes": [{"name": "split", "route": [{"destination": {"host": host, "subset": "v1"}, "weight": weight},
                                                                                 {"destination": {"host": host, "subset": "v2"}, "weight": 100 - weight}]}]}}),
    ]  # fmt: skip


def sidecar(ns: str, hosts: list[str]) -> Resource:
    return _read({"apiVersion": "networking.istio.io/v1beta1", "kind": "Sidecar", "metadata": {"name": "default", "namespace": ns}, "spec": {"egress": [{"hosts": hosts}]}})


class Plane:
    """Translator, snapshot builder and ADS server, fed whole object sets as the controller does."""

    def __init__(self) -> None:
        self.objects: dict[str, Resource] = {}
        self.translator = IncrementalTranslator()
        self.builder = SnapshotBuilder()
        self.ads = AdsServer()

    async def put(self, *objects: Resource) -> None:
        for r in objects:
            self.objects[r.ref] = r
        result = self.translator(ResourceSet(list(self.objects.values())))
        assert not result.errors, result.errors
        touched, sidecars = self.translator.take_changes()
        await self.ads.set_snapshot(self.builder.build(self.translator.outputs, touched, ScopeRules(result.sidecars) if sidecars else None))


class Proxy:
    """A raw SotW (or delta) ADS stream subscribing as the proxy does, ACKing every response."""

    def __init__(self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, node: base_pb2.Node, delta: bool = False) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.node, self.delta = node, delta
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.held: dict[str, dict[str, str]] = {t: {} for t in (LDS, RDS, CDS, EDS)}

        async def requests() -> AsyncIterator[object]:
            while True:
                yield await self.queue.get()

        self.call = stub.DeltaAggregatedResources(requests()) if delta else stub.StreamAggregatedResources(requests())
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for response in self.call:
            await self.responses.put(response)

    def request(self, type_url: str, names: list[str] | None = None, response: Any = None) -> None:  # noqa: ANN401 - a response of either kind
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=type_url, response_nonce=response.nonce if response else "")
            if response is None:
                req.resource_names_subscribe.extend(names or [])
            self.queue.put_nowait(req)
            return
        self.queue.put_nowait(discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url, resource_names=names or [],
                                                             version_info=response.version_info if response else "",
                                                             response_nonce=response.nonce if response else ""))  # fmt: skip

    async def recv(self) -> Any:  # noqa: ANN401
        return await asyncio.wait_for(self.responses.get(), 5.0)

    async def silent(self, seconds: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.responses.get(), seconds)
        except TimeoutError:
            return True
        return False

    async def ack(self) -> tuple[str, list[str]]:
        """Receive one response, remember what it carried, ACK it; (type, names carried)."""
        r = await self.recv()
        names = [_name(a if not self.delta else a.resource) for a in r.resources]
        self.held[r.type_url].update(dict.fromkeys(names, "x"))
        self.request(r.type_url, sorted(self.held[r.type_url]) if r.type_url in (RDS, EDS) else None, r)
        return r.type_url, names

    async def converge(self) -> None:
        """Subscribe like the proxy (wildcard listeners and clusters, then what they name)."""
        self.request(LDS, ["*"] if self.delta else None)
        self.request(CDS, ["*"] if self.delta else None)
        for _ in range(2):
            t, names = await self.ack()
            follow = RDS if t == LDS else EDS
            self.request(follow, names)
        for _ in range(2):
            await self.ack()


def _name(packed: any_pb2.Any) -> str:
    """The name of a packed listener, route table, cluster or load assignment."""
    for cls, field in ((listener_pb2.Listener, "name"), (route_pb2.RouteConfiguration, "name"), (cluster_pb2.Cluster, "name"),
                       (endpoint_pb2.ClusterLoadAssignment, "cluster_name")):  # fmt: skip
        msg = cls()
        if packed.Unpack(msg):
            return str(getattr(msg, field))
    raise AssertionError(packed.type_url)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for ``condition`` (checked every few milliseconds) or fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def node(name: str, namespace: str = "") -> base_pb2.Node:
    out = base_pb2.Node(id=name)
    if namespace:
        out.metadata.update(node_metadata({"NAMESPACE": namespace, "LABELS": "app=x"}))
    return out


@pytest_asyncio.fixture
async def plane() -> AsyncIterator[tuple[Plane, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    p = Plane()
    objects = [r for ns in NAMESPACES for i in range(3) for r in service(ns, i)]
    await p.put(*objects, sidecar("team-a", ["./*", "shared/*"]), sidecar("team-b", ["./*"]))
    grpc_server, port = await start_server(p.ads, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield p, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await grpc_server.stop(0)


@pytest.mark.asyncio
@pytest.mark.parametrize("delta", [False, True])
async def test_an_edit_pushes_only_the_resources_it_changed(plane: tuple[Plane, ads_pb2_grpc.AggregatedDiscoveryServiceStub], delta: bool) -> None:
    p, stub = plane
    proxy = Proxy(stub, node("everything"), delta)  # no namespace: no Sidecar applies, it sees all
    await proxy.converge()
    assert len(proxy.held[LDS]) == 9 and len(proxy.held[CDS]) == 27 and len(proxy.held[EDS]) == 27
    # A MetaRouter edit: one route table, nothing else.
    await p.put(service("shared", 1, weight=10)[2])
    assert await proxy.ack() == (RDS, ["svc1.shared.example_9001"])
    assert await proxy.silent()
    # An endpoint moves: the endpoints of the clusters that hold it (all, v2), nothing else.
    await p.put(service("team-b", 2, address="10.9.9.9")[0])
    t, names = await proxy.ack()
    assert (t, sorted(names)) == (EDS, ["outbound|9002|v2|svc2.team-b.example", "outbound|9002||svc2.team-b.example"])
    assert await proxy.silent()
    assert p.translator.retranslated == 9 + 2  # the first translation, then one host per edit
    info = next(iter(p.ads.streams.values()))
    assert {t: w.state for t, w in info.watches.items()} == dict.fromkeys((LDS, CDS, RDS, EDS), "SYNCED")


@pytest.mark.asyncio
async def test_proxies_of_different_scopes_receive_different_sets(plane: tuple[Plane, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    p, stub = plane
    a, b = Proxy(stub, node("a", "team-a")), Proxy(stub, node("sidecar~10.1.2.3~pod-b.team-b~team-b.svc.cluster.local"))
    everyone = Proxy(stub, node("c", "team-c"))  # no Sidecar in team-c nor in istio-system: everything
    b_delta = Proxy(stub, node("b-delta", "team-b"), delta=True)
    for proxy in (a, b, everyone, b_delta):
        await proxy.converge()
    assert b_delta.held[LDS].keys() == b.held[LDS].keys() and b_delta.held[EDS].keys() == b.held[EDS].keys()
    assert sorted(a.held[LDS]) == sorted(f"svc{i}.{ns}.example_{9000 + i}" for ns in ("shared", "team-a") for i in range(3))
    assert sorted(b.held[LDS]) == [f"svc{i}.team-b.example_{9000 + i}" for i in range(3)]
    assert len(everyone.held[LDS]) == 9 and len(a.held[EDS]) == 18 and len(b.held[CDS]) == 9
    assert {s["node_id"]: s["sidecar"] for s in p.ads.proxies()} == {"a": "Sidecar team-a/default", b.node.id: "Sidecar team-b/default", "c": "",
                                                                       "b-delta": "Sidecar team-b/default"}  # fmt: skip
    # A shared MetaRouter edit reaches the proxies that import the shared namespace only.
    await p.put(service("shared", 0, weight=30)[2])
    assert await a.ack() == (RDS, ["svc0.shared.example_9000"])
    assert await everyone.ack() == (RDS, ["svc0.shared.example_9000"])
    assert await b.silent() and await b_delta.silent()
    assert len(p.ads.views.views) == 2  # one view per Sidecar scope (the unscoped proxy needs none)
    # team-b's Sidecar now imports the shared namespace too: b receives its listeners and clusters.
    await p.put(sidecar("team-b", ["./*", "shared/*"]))
    got = dict([await b.ack(), await b.ack()])
    assert sorted(got[LDS]) == sorted(f"svc{i}.{ns}.example_{9000 + i}" for ns in ("shared", "team-b") for i in range(3)) and len(got[CDS]) == 18
    added = dict([await b_delta.ack(), await b_delta.ack()])  # delta: only what entered its scope
    assert sorted(added[LDS]) == [f"svc{i}.shared.example_{9000 + i}" for i in range(3)] and len(added[CDS]) == 9
    # The last proxy of team-a leaves: its view goes at the next snapshot.
    a.call.cancel()
    await _until(lambda: len(p.ads.streams) == 3)
    await p.put(service("team-b", 1, weight=70)[2])
    assert [s.ref for s in p.ads.views.views] == ["Sidecar team-b/default"]


def test_proxy_command_line_sends_node_metadata() -> None:
    from metaprotocol import cli
    from metaprotocol.xds import client

    args = cli._parser().parse_args(["proxy", "--xds", "127.0.0.1:15010", "--node-metadata", "NAMESPACE=shop", "--node-metadata", "LABELS=app=cart,version=v2"])
    assert args.node_metadata == [("NAMESPACE", "shop"), ("LABELS", "app=cart,version=v2")]
    assert client.node_metadata(dict(args.node_metadata)) == {"NAMESPACE": "shop", "LABELS": {"app": "cart", "version": "v2"}}
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["proxy", "--node-metadata", "no-equals-sign"])
