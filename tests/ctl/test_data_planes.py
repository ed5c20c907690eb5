"""One aeraki-ctl, two data planes: each node is served its own rendering of the same resources.

The Envoy translators are replaced here by a stand-in that rejects any route with a mirror, so
that these tests pin the wiring (which node gets which snapshot, last translatable version kept
for Envoy alone, status, ``validate --data-plane envoy``) whatever the real translators decide.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from contextlib import redirect_stdout
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from hypothesis import given, settings
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import struct_pb2

from aeraki_ctl import cli
from aeraki_ctl.admin_client import render_proxies, render_status
from aeraki_ctl.controller import Controller
from aeraki_ctl.envoy import translate as envoy_translate
from aeraki_ctl.envoy.common import EnvoyListener, Gap, route_path
from aeraki_ctl.envoy.snapshot import SERVING_LAST, EnvoySnapshotBuilder
from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.resources import ResourceSet, load_directory
from aeraki_ctl.sidecar import ScopeRules
from aeraki_ctl.xds.snapshot import version_of
from aeraki_ctl.xds.server import ENVOY, METAPROTOCOL, AdsServer, data_plane_of, start_server
from metaprotocol.config.model import ClusterConfig, CodecRef, ListenerConfig
from metaprotocol.xds import convert
from tests.ctl.test_incremental import apply_edit, base, edits
from tests.ctl.test_xds_server import Stream

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples/aeraki/dubbo-demo"
LISTENER = "org.apache.dubbo.samples.basic.api.demoservice_20880"
MIRROR = """
    mirror:
      host: org.apache.dubbo.samples.basic.api.demoservice
      subset: v1
"""


def standin(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """Envoy's Dubbo translation, reduced to what these tests need: a plain listener whose stat
    prefix carries the route names and weights, and a fatal gap for a mirror."""
    gaps = [Gap(route_path(i, r, "mirror"), "no mirroring here") for i, r in enumerate(lst.route_config.routes if lst.route_config else ()) if r.mirrors]
    names = "+".join(f"{r.name}:{'/'.join(str(w.weight) for w in r.action.weighted_clusters)}" for r in lst.route_config.routes) if lst.route_config else ""
    msg = listener_pb2.Listener(name=lst.name, stat_prefix=names)
    msg.address.socket_address.port_value = lst.port
    return EnvoyListener(msg, gaps=gaps)


@pytest.fixture(autouse=True)
def envoy_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(envoy_translate.FILTERS, "dubbo", ("standin", standin))


def node(node_id: str, metadata: dict[str, str] | None = None, user_agent: str = "") -> base_pb2.Node:
    n = base_pb2.Node(id=node_id, user_agent_name=user_agent)
    if metadata:
        n.metadata.update(metadata)
    return n


@pytest.mark.parametrize(
    ("metadata", "agent", "plane"),
    [
        ({"DATA_PLANE": "envoy"}, "", ENVOY),
        ({"DATA_PLANE": "Envoy"}, "metaprotocol", ENVOY),
        ({"DATA_PLANE": "metaprotocol"}, "envoy", METAPROTOCOL),
        (None, "envoy", ENVOY),
        (None, "metaprotocol", METAPROTOCOL),
        (None, "", METAPROTOCOL),
        ({"DATA_PLANE": "nginx"}, "envoy", ENVOY),  # unknown value: the user agent decides
    ],
)
def test_the_data_plane_comes_from_node_metadata_then_the_user_agent(metadata: dict[str, str] | None, agent: str, plane: str) -> None:
    assert data_plane_of(node("n", metadata, agent)) == plane


def test_our_proxy_says_it_is_metaprotocol() -> None:
    from metaprotocol.xds.client import AdsClient

    class Target:
        xds = None

    client = AdsClient(proxy=Target(), address="127.0.0.1:1", node_id="p")  # type: ignore[arg-type]
    assert data_plane_of(client.node) == METAPROTOCOL and client.node.user_agent_name == "metaprotocol"


@pytest.fixture
def demo_dir(tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(DEMO, tmp_path / "demo")
    yield tmp_path / "demo"


@pytest_asyncio.fixture
async def served(demo_dir: Path) -> AsyncIterator[tuple[Controller, ads_pb2_grpc.AggregatedDiscoveryServiceStub]]:
    ads = AdsServer()
    controller = Controller(demo_dir, ads)
    await controller.sync()
    grpc_server, port = await start_server(ads, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield controller, ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    await channel.close()
    await grpc_server.stop(0)


async def listeners(stream: Stream, who: base_pb2.Node, nonce: str = "", version: str = "") -> discovery_pb2.DiscoveryResponse:
    stream.send(discovery_pb2.DiscoveryRequest(node=who, type_url=convert.LISTENER_TYPE, response_nonce=nonce, version_info=version))
    return await stream.recv()  # type: ignore[return-value]


def unpack(resp: discovery_pb2.DiscoveryResponse) -> dict[str, listener_pb2.Listener]:
    out = {}
    for a in resp.resources:
        msg = listener_pb2.Listener()
        a.Unpack(msg)
        out[msg.name] = msg
    return out


def add_mirror(demo_dir: Path) -> None:
    path = demo_dir / "metarouter.yaml"
    path.write_text(path.read_text().rstrip("\n") + "\n" + MIRROR.lstrip("\n"))
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns + 1_000_000, st.st_mtime_ns + 1_000_000))


@pytest.mark.asyncio
async def test_each_node_gets_its_data_planes_rendering_and_a_route_envoy_cannot_express_stays_on_its_last_version(
    served: tuple[Controller, ads_pb2_grpc.AggregatedDiscoveryServiceStub], demo_dir: Path
) -> None:
    controller, stub = served
    ours, envoy = Stream(stub), Stream(stub)
    first_ours = await listeners(ours, node("proxy-1"))
    first_envoy = await listeners(envoy, node("envoy-1", {"DATA_PLANE": "envoy"}))
    # Our proxy gets the MetaProtocol listener, Envoy the stand-in's rendering of the same route.
    assert convert.FILTER_NAME in str(unpack(first_ours)[LISTENER])
    assert unpack(first_envoy)[LISTENER].stat_prefix == "traffic-split:20/80"
    assert {p["node_id"]: p["data_plane"] for p in controller.ads.proxies()} == {"proxy-1": METAPROTOCOL, "envoy-1": ENVOY}

    add_mirror(demo_dir)  # valid for our proxy; the stand-in cannot express it
    await controller.sync()
    routes = Stream(stub)  # our proxy's routes come over RDS: the mirror reaches it there
    routes.send(discovery_pb2.DiscoveryRequest(node=node("proxy-1"), type_url=convert.ROUTE_TYPE, resource_names=[LISTENER]))
    got = await routes.recv()
    table = route_pb2.RouteConfiguration()
    got.resources[0].Unpack(table)  # type: ignore[attr-defined]
    assert convert.route_config_from_xds(table).routes[0].mirrors
    # Envoy: nothing moved (its last translatable version keeps serving), and the author is told.
    envoy.send(discovery_pb2.DiscoveryRequest(node=node("envoy-1"), type_url=convert.LISTENER_TYPE, response_nonce=first_envoy.nonce, version_info=first_envoy.version_info))
    assert await envoy.silent()
    status = controller.status()
    ref = "MetaRouter meta-dubbo/test-metaprotocol-dubbo-route"
    assert status["objects"][ref]["state"] == "accepted"  # type: ignore[index]
    [problem] = status["envoy"][ref]  # type: ignore[index]
    assert "spec.routes[0].mirror" in problem and "no mirroring here" in problem and "keep its last translatable version" in problem
    text, bad = render_status(status)
    assert "for Envoy nodes:" in text and "no mirroring here" in text and bad == 0
    table = render_proxies(controller.ads.proxies())
    assert "DATA-PLANE" in table.splitlines()[0] and "envoy-1  envoy" in table

    path = demo_dir / "metarouter.yaml"  # the mirror removed: Envoy moves again
    path.write_text((DEMO / "metarouter.yaml").read_text().replace("weight: 20", "weight: 30").replace("weight: 80", "weight: 70"))
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns + 2_000_000, st.st_mtime_ns + 2_000_000))
    await controller.sync()
    third_envoy = await envoy.recv()
    assert unpack(third_envoy)[LISTENER].stat_prefix == "traffic-split:30/70"  # type: ignore[arg-type]
    assert controller.status()["envoy"] == {}
    for s in (ours, envoy, routes):
        s.call.cancel()


@pytest.mark.asyncio
async def test_no_envoy_rendering_until_an_envoy_node_connects(served: tuple[Controller, ads_pb2_grpc.AggregatedDiscoveryServiceStub]) -> None:
    controller, stub = served
    ours = Stream(stub)
    await listeners(ours, node("proxy-1", user_agent="metaprotocol"))
    assert controller.envoy_builder is None and controller.ads.snapshots[ENVOY].of(convert.LISTENER_TYPE) == {}
    envoy = Stream(stub)
    got = await listeners(envoy, node("envoy-1", user_agent="envoy"))  # no metadata: Envoy's user agent
    assert LISTENER in unpack(got) and controller.envoy_builder is not None
    ours.call.cancel()
    envoy.call.cancel()
    await asyncio.sleep(0)


def run_validate(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["validate", *args])
    return code, out.getvalue()


def test_validate_reports_what_envoy_cannot_express_with_its_place(demo_dir: Path) -> None:
    assert run_validate([str(demo_dir), "--data-plane", "envoy"])[0] == 0
    add_mirror(demo_dir)
    code, text = run_validate([str(demo_dir)])
    assert code == 0, text  # our proxy can serve it
    code, text = run_validate([str(demo_dir), "--data-plane", "envoy"])
    assert code == 1
    assert "metarouter.yaml:" in text and "MetaRouter meta-dubbo/test-metaprotocol-dubbo-route: spec.routes[0].mirror: Envoy" in text
    assert "rejected for Envoy nodes: they do not get this listener" in text


def test_a_protocol_envoy_has_no_filter_for_is_named() -> None:
    lst = ListenerConfig("m_1", "127.0.0.1", 1, CodecRef("memcached"), "m")
    out = envoy_translate.translate_listener(lst, {})
    assert out.rejected and "no filter for the memcached protocol" in out.gaps[0].reason


def test_node_metadata_struct_reads_any_case() -> None:
    md = struct_pb2.Struct()
    md.update({"DATA_PLANE": " ENVOY "})
    assert data_plane_of(base_pb2.Node(id="x", metadata=md)) == ENVOY


@settings(max_examples=60, deadline=None)
@given(edits)
def test_the_envoy_snapshot_made_from_the_previous_one_is_the_whole_one(steps: list[tuple[str, Any]]) -> None:
    """Host by host, with the names that changed: equal to a fresh rendering of every host, except
    the listeners an incremental builder keeps at their last translatable version (history)."""
    translator, builder = IncrementalTranslator(), EnvoySnapshotBuilder()
    current = base()
    previous = builder.snapshot
    for op, arg in steps:
        apply_edit(current, op, arg)
        translator(ResourceSet(list(current.values())))
        made = builder.build(translator.outputs, translator.take_changes()[0])
        whole = EnvoySnapshotBuilder()
        fresh = whole.build(translator.outputs, list(translator.outputs))
        kept = {name for verdicts in builder.verdicts.values() for name, v in verdicts.items() if v.state == SERVING_LAST}
        for t in {*made.resources, *fresh.resources}:
            mine = {n: r.version for n, r in made.of(t).items() if n not in kept}
            theirs = {n: r.version for n, r in fresh.of(t).items() if n not in kept}
            assert mine == theirs, t
            assert made.versions[t] == version_of(sum(r.token for r in made.of(t).values()))
            moved = {n for n in {*made.of(t), *previous.of(t)} if (made.of(t).get(n) or previous.of(t).get(n)) and
                     getattr(made.of(t).get(n), "version", None) != getattr(previous.of(t).get(n), "version", None)}  # fmt: skip
            assert made.changed.get(t, frozenset()) == moved, t
        assert made.base == previous.serial
        previous = made


def test_envoy_port_offset_moves_envoy_listeners_only(demo_dir: Path) -> None:
    """Both data planes on one host (demo, tests, benchmarks): Envoy listens N ports higher."""
    translator = IncrementalTranslator()
    translator(load_directory(demo_dir))
    snapshot = EnvoySnapshotBuilder(port_offset=1000).build(translator.outputs, list(translator.outputs))
    [msg] = [listener_pb2.Listener.FromString(r.packed.value) for r in snapshot.of(convert.LISTENER_TYPE).values()]
    assert msg.address.socket_address.port_value == 20880 + 1000
    assert translator.outputs["org.apache.dubbo.samples.basic.api.demoservice"].listeners[0].port == 20880


@pytest.mark.asyncio
async def test_sidecar_scoping_applies_to_envoy_nodes_too() -> None:
    from tests.ctl.test_xds_incremental import NAMESPACES, Plane, service, sidecar

    class BothPlanes(Plane):
        def __init__(self) -> None:
            super().__init__()
            self.envoy = EnvoySnapshotBuilder()

        async def put(self, *objects: Any) -> None:
            for r in objects:
                self.objects[r.ref] = r
            result = self.translator(ResourceSet(list(self.objects.values())))
            touched, sidecars = self.translator.take_changes()
            scopes = ScopeRules(result.sidecars) if sidecars else None
            await self.ads.set_snapshot(self.builder.build(self.translator.outputs, touched, scopes))
            await self.ads.set_snapshot(self.envoy.build(self.translator.outputs, touched, scopes), ENVOY)

    p = BothPlanes()
    await p.put(*[r for ns in NAMESPACES for i in range(3) for r in service(ns, i)], sidecar("team-b", ["./*"]))
    grpc_server, port = await start_server(p.ads, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            scoped = node("gw-b", {"DATA_PLANE": "envoy", "NAMESPACE": "team-b", "LABELS": "app=x"})
            everything = node("gw-all", {"DATA_PLANE": "envoy"})
            b, all_ = Stream(stub), Stream(stub)
            got_b, got_all = await listeners(b, scoped), await listeners(all_, everything)
            assert sorted(unpack(got_b)) == [f"svc{i}.team-b.example_{9000 + i}" for i in range(3)]
            assert len(unpack(got_all)) == 9
            assert {s["node_id"]: s["sidecar"] for s in p.ads.proxies()} == {"gw-b": "Sidecar team-b/default", "gw-all": ""}
            # an edit in another namespace reaches the unscoped Envoy only
            b.send(discovery_pb2.DiscoveryRequest(node=scoped, type_url=convert.LISTENER_TYPE, response_nonce=got_b.nonce, version_info=got_b.version_info))
            all_.send(discovery_pb2.DiscoveryRequest(node=everything, type_url=convert.LISTENER_TYPE, response_nonce=got_all.nonce, version_info=got_all.version_info))
            await p.put(service("shared", 0, weight=30)[2])
            moved = await all_.recv()
            assert "svc0.shared.example_9000" in unpack(moved)  # type: ignore[arg-type]
            assert await b.silent()
            assert len(p.ads.envoy_views.views) == 1 and not p.ads.views.views  # Envoy's own views
            b.call.cancel()
            all_.call.cancel()
    finally:
        await grpc_server.stop(0)
