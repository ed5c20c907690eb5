"""Per-resource acceptance on the proxy: the valid resources of an update are applied, the invalid
ones keep their previous version (or are not served when they never were valid), and the update is
NACKed naming each rejected resource with its reason, as Envoy does for CDS and LDS; over state
of the world and delta xDS alike."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from google.protobuf.message import Message

from aeraki_ctl.xds.server import AdsServer, start_server
from aeraki_ctl.xds.snapshot import Snapshot, make_snapshot
from metaprotocol.config.model import (
    Bootstrap,
    ClusterConfig,
    CodecRef,
    Endpoint,
    ListenerConfig,
    RouteAction,
    RouteConfig,
    RouteRule,
    WeightedCluster,
)
from metaprotocol.io.admin import _respond
from metaprotocol.io.proxy import Proxy
from metaprotocol.registry import CodecRegistry
from metaprotocol.xds import convert
from metaprotocol.xds.client import AdsClient


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def listener(name: str, codec: str, port: int = 0) -> ListenerConfig:
    return ListenerConfig(name, "127.0.0.1", port, CodecRef(codec), name, rds_name=f"{name}-routes")


def redis_routes(mutation: bool = False, timeout: float = 5.0) -> RouteConfig:
    rule = RouteRule("all", (), RouteAction(cluster="redis-c", timeout=timeout), request_mutation=(("x-team", "a"),) if mutation else ())
    return RouteConfig("redis-routes", (rule,))


def dubbo_routes(v1: int, v2: int) -> RouteConfig:
    action = RouteAction(weighted_clusters=tuple(WeightedCluster(n, w) for n, w in (("d1", v1), ("d2", v2)) if w))
    return RouteConfig("dubbo-routes", (RouteRule("split", (), action),))


def clusters(*names: str) -> list[ClusterConfig]:
    return [ClusterConfig(n, (Endpoint("127.0.0.1", 1000 + i),)) for i, n in enumerate(names)]


def snapshot(
    listeners: list[ListenerConfig],
    routes: list[RouteConfig],
    cluster_list: list[ClusterConfig],
    extra: dict[str, list[tuple[str, Message]]] | None = None,
) -> Snapshot:
    """A snapshot of these resources, plus raw (possibly invalid) messages per type."""
    resources: dict[str, list[tuple[str, Message]]] = {
        convert.LISTENER_TYPE: [(lst.name, convert.listener_to_xds(lst)) for lst in listeners],
        convert.ROUTE_TYPE: [(rc.name, convert.route_config_to_xds(rc)) for rc in routes],
        convert.CLUSTER_TYPE: [(c.name, convert.cluster_to_xds(c)) for c in cluster_list],
        convert.ENDPOINT_TYPE: [(c.name, convert.endpoints_to_xds(c)) for c in cluster_list],
    }
    for type_url, items in (extra or {}).items():
        resources[type_url] = [*(i for i in resources[type_url] if i[0] not in dict(items)), *items]
    return make_snapshot(resources)


GOOD_LISTENERS = [listener("redis", "redis"), listener("dubbo", "dubbo")]


@dataclass
class Setup:
    ads: AdsServer
    proxy: Proxy
    client: AdsClient

    def table(self, name: str) -> RouteConfig:
        t = self.proxy.contexts[name].table
        assert t is not None
        return t.config


@pytest_asyncio.fixture(params=[False, True], ids=["sotw", "delta"])
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    ads = AdsServer(snapshot(GOOD_LISTENERS, [redis_routes(), dubbo_routes(100, 0)], clusters("redis-c", "d1", "d2")))
    grpc_server, port = await start_server(ads, "127.0.0.1:0")
    proxy = Proxy(Bootstrap((), ()), CodecRegistry.from_entry_points())
    await proxy.start()
    client = AdsClient(proxy, f"127.0.0.1:{port}", "partial-test", delta=request.param)
    task = asyncio.ensure_future(client.run())
    try:
        await until(lambda: client.applied >= 1 and set(proxy.contexts) == {"redis", "dubbo"})
        yield Setup(ads, proxy, client)
    finally:
        task.cancel()
        await proxy.close()
        await grpc_server.stop(0)


def server_nacks(ads: AdsServer) -> list[str]:
    return [n for info in ads.streams.values() for n in info.nacks]


@pytest.mark.asyncio
async def test_one_bad_route_table_does_not_freeze_the_others(setup: Setup) -> None:
    s = setup
    # Concurrently: the Redis route table gains a mutation the redis codec cannot carry (invalid),
    # and the Dubbo split moves from 100/0 to 50/50 (valid). Both come in one RDS update.
    await s.ads.set_snapshot(snapshot(GOOD_LISTENERS, [redis_routes(mutation=True), dubbo_routes(50, 50)], clusters("redis-c", "d1", "d2")))
    await until(lambda: s.client.status.rejected[convert.ROUTE_TYPE] == 1)
    assert s.table("dubbo") == dubbo_routes(50, 50)  # the valid change is applied
    assert s.table("redis") == redis_routes()  # the invalid one keeps its previous version
    nack = s.client.status.last_nack[convert.ROUTE_TYPE]
    assert set(nack.reasons) == {"redis-routes"} and "the redis codec cannot carry request/response mutations" in nack.reasons["redis-routes"]
    await until(lambda: server_nacks(s.ads))
    (message,) = server_nacks(s.ads)
    assert message.startswith(convert.ROUTE_TYPE) and "redis-routes: " in message and "cannot carry" in message and "dubbo-routes" not in message
    # Visible on the proxy's admin endpoint.
    status, _, body = _respond(s.proxy, "/config_dump")
    rds = json.loads(body)["xds"]["types"]["RDS"]
    assert status.startswith("200") and rds["state"] == "NACKED" and rds["updates_rejected"] == 1
    assert rds["last_nack"]["nonce"] and "redis-routes" in rds["last_nack"]["rejected"] and rds["last_nack"]["version"] == nack.version
    stats = _respond(s.proxy, "/stats")[2].decode()
    assert 'metaprotocol_xds_update_rejected_total{type="RDS"} 1' in stats and 'metaprotocol_xds_update_rejected_total{type="LDS"} 0' in stats
    assert 'metaprotocol_xds_update_accepted_total{type="RDS"} 1' in stats
    # A later valid version of the Redis table is applied and ACKed.
    await s.ads.set_snapshot(snapshot(GOOD_LISTENERS, [redis_routes(timeout=2.0), dubbo_routes(50, 50)], clusters("redis-c", "d1", "d2")))
    await until(lambda: s.table("redis") == redis_routes(timeout=2.0))
    await until(lambda: convert.ROUTE_TYPE not in s.client.status.nacked_now)
    assert json.loads(_respond(s.proxy, "/config_dump")[2])["xds"]["types"]["RDS"]["state"] == "ACKED"


@pytest.mark.asyncio
async def test_never_valid_listeners_and_clusters_are_not_added(setup: Setup) -> None:
    s = setup
    no_chain = listener_pb2.Listener(name="broken")  # no filter chain: conversion fails
    bad_cluster = cluster_pb2.Cluster(name="bad-c", type=cluster_pb2.Cluster.EDS, lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED)
    await s.ads.set_snapshot(
        snapshot(
            [*GOOD_LISTENERS, listener("unknown", "no-such-codec"), listener("dubbo2", "dubbo")],
            [redis_routes(), dubbo_routes(100, 0), RouteConfig("unknown-routes", ()), RouteConfig("dubbo2-routes", dubbo_routes(0, 100).routes)],
            clusters("redis-c", "d1", "d2", "d3"),
            {convert.LISTENER_TYPE: [("broken", no_chain)], convert.CLUSTER_TYPE: [("bad-c", bad_cluster)]},
        )
    )
    await until(lambda: "dubbo2" in s.proxy.contexts and s.client.status.rejected[convert.CLUSTER_TYPE] == 1)
    lds = s.client.status.last_nack[convert.LISTENER_TYPE].reasons
    assert set(lds) == {"broken", "unknown"} and "unknown codec 'no-such-codec'" in lds["unknown"] and "filter chain" in lds["broken"]
    cds = s.client.status.last_nack[convert.CLUSTER_TYPE].reasons
    assert set(cds) == {"bad-c"} and "CLUSTER_PROVIDED" in cds["bad-c"]
    assert set(s.proxy.contexts) == {"redis", "dubbo", "dubbo2"}  # never-valid ones are not served
    assert s.table("dubbo2") == RouteConfig("dubbo2-routes", dubbo_routes(0, 100).routes)
    assert "d3" in s.proxy.bootstrap.cluster_map() and "bad-c" not in s.proxy.bootstrap.cluster_map()
    assert "bad-c" not in s.client.clusters and "unknown" not in s.client.listeners
    assert "unknown-routes" not in s.client._subscribed[convert.ROUTE_TYPE]
    await until(lambda: len(server_nacks(s.ads)) == 2)


@pytest.mark.asyncio
async def test_a_rejected_resource_keeps_its_previous_version(setup: Setup) -> None:
    s = setup
    # The Dubbo listener changes to a codec the proxy lacks (rejected: it keeps serving as before)
    # while the Redis listener gets a new stat prefix (applied); d2's endpoints arrive as the
    # wrong message type (rejected: previous endpoints kept) while d1's move (applied).
    changed_redis = ListenerConfig("redis", "127.0.0.1", 0, CodecRef("redis"), "redis-new", rds_name="redis-routes")
    endpoints_d1 = ClusterConfig("d1", (Endpoint("127.0.0.1", 1500),))
    wrong = cluster_pb2.Cluster(name="d2")
    await s.ads.set_snapshot(
        snapshot(
            [changed_redis, listener("dubbo", "no-such-codec")],
            [redis_routes(), dubbo_routes(100, 0)],
            clusters("redis-c", "d1", "d2"),
            {convert.ENDPOINT_TYPE: [("d1", convert.endpoints_to_xds(endpoints_d1)), ("d2", wrong)]},
        )
    )
    await until(lambda: s.client.status.rejected[convert.LISTENER_TYPE] == 1 and s.client.status.rejected[convert.ENDPOINT_TYPE] == 1)
    assert s.proxy.contexts["redis"].config.stat_prefix == "redis-new"
    assert s.proxy.contexts["dubbo"].factory.name == "dubbo"
    assert set(s.client.status.last_nack[convert.LISTENER_TYPE].reasons) == {"dubbo"}
    eds = s.client.status.last_nack[convert.ENDPOINT_TYPE].reasons
    assert list(eds) == ["resources[1]"] and "is not a envoy.config.endpoint.v3.ClusterLoadAssignment" in eds["resources[1]"]
    await until(lambda: s.proxy.bootstrap.cluster_map()["d1"].endpoints == endpoints_d1.endpoints)
    assert s.proxy.bootstrap.cluster_map()["d2"].endpoints == (Endpoint("127.0.0.1", 1002),)


@pytest.mark.asyncio
async def test_a_listener_that_cannot_bind_is_rejected_alone(setup: Setup) -> None:
    s = setup
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        await s.ads.set_snapshot(
            snapshot(
                [*GOOD_LISTENERS, listener("busy", "dubbo", port), listener("free", "dubbo")],
                [redis_routes(), dubbo_routes(100, 0), RouteConfig("busy-routes", dubbo_routes(0, 100).routes), RouteConfig("free-routes", dubbo_routes(0, 100).routes)],
                clusters("redis-c", "d1", "d2"),
            )
        )
        await until(lambda: "free" in s.proxy.contexts and convert.LISTENER_TYPE in s.client.status.nacked_now)
    reasons = s.client.status.last_nack[convert.LISTENER_TYPE].reasons
    assert list(reasons) == ["busy"]  # found when the listener arrives (LDS), as Envoy binds then
    assert f"cannot listen on 127.0.0.1:{port}" in next(iter(reasons.values()))
    assert "busy" not in s.proxy.contexts and "busy" not in s.client.listeners
    assert sorted(lst.name for lst in s.proxy.bootstrap.listeners) == ["dubbo", "free", "redis"]


@pytest.mark.asyncio
async def test_resources_removed_by_the_server_are_removed(setup: Setup) -> None:
    s = setup
    await s.ads.set_snapshot(snapshot([listener("dubbo", "dubbo")], [dubbo_routes(100, 0)], clusters("d1", "d2")))
    await until(lambda: set(s.proxy.contexts) == {"dubbo"} and "redis-c" not in s.proxy.bootstrap.cluster_map())
    assert [p["stream"] for p in s.ads.proxies()] == ["delta" if s.client.delta else "sotw"]
    assert not s.client.status.rejected


@pytest.mark.asyncio
@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_reconnect_resynchronises(delta: bool) -> None:
    first = AdsServer(snapshot(GOOD_LISTENERS, [redis_routes(), dubbo_routes(100, 0)], clusters("redis-c", "d1", "d2")))
    grpc_server, port = await start_server(first, "127.0.0.1:0")
    proxy = Proxy(Bootstrap((), ()), CodecRegistry.from_entry_points())
    await proxy.start()
    client = AdsClient(proxy, f"127.0.0.1:{port}", "reconnect-test", delta=delta)
    task = asyncio.ensure_future(client.run())
    try:
        await until(lambda: set(proxy.contexts) == {"redis", "dubbo"})
        await grpc_server.stop(0)
        await until(lambda: not client.connected.is_set())
        # A new control plane on the same port, with one listener gone and a new split.
        second = AdsServer(snapshot([listener("dubbo", "dubbo")], [dubbo_routes(50, 50)], clusters("d1", "d2")))
        grpc_server, _ = await start_server(second, f"127.0.0.1:{port}")
        await until(lambda: set(proxy.contexts) == {"dubbo"} and proxy.contexts["dubbo"].table is not None and proxy.contexts["dubbo"].table.config == dubbo_routes(50, 50), timeout=10)
        assert not client.status.rejected
    finally:
        task.cancel()
        await proxy.close()
        await grpc_server.stop(0)


def test_a_resource_whose_bytes_do_not_decode_is_rejected_alone() -> None:
    """Corrupt bytes in one packed resource (found by fuzzing the conversion) name that resource
    in the NACK; the others of the response are read."""
    from google.protobuf import any_pb2

    from metaprotocol.xds.client import _each

    good = any_pb2.Any()
    good.Pack(cluster_pb2.Cluster(name="fine"))
    corrupt = any_pb2.Any(type_url=good.type_url, value=b"\x0a\xff\xff\xff\xff\x0f")  # a length past the end
    reasons: dict[str, str] = {}
    out = _each([corrupt, good], cluster_pb2.Cluster, lambda m: m.name, reasons)
    assert out == {"fine": "fine"}
    assert list(reasons) == ["resources[0]"] and "cannot be decoded" in reasons["resources[0]"]
