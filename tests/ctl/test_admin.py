"""aeraki-ctl's admin API (/healthz, /readyz, /proxies, /status, /metrics) over real HTTP, what the
ADS server records per proxy (sent, ACKed, NACKed per type, SotW and delta), and the proxy-status
and status commands reading it."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from contextlib import redirect_stdout
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from aeraki_ctl.admin import AdminServer
from aeraki_ctl.admin_client import render_proxies, render_status
from aeraki_ctl.cli import EXIT_UNREACHABLE, main
from aeraki_ctl.xds.server import AdsServer, start_server
from aeraki_ctl.xds.snapshot import snapshot_of
from metaprotocol.config.model import (
    Bootstrap,
    ClusterConfig,
    CodecRef,
    Endpoint,
    ListenerConfig,
    RouteAction,
    RouteConfig,
    RouteRule,
)
from metaprotocol.io.proxy import Proxy
from metaprotocol.registry import CodecRegistry
from metaprotocol.xds import convert
from metaprotocol.xds.client import AdsClient


async def until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def config(redis_mutation: bool = False) -> Bootstrap:
    """Two listeners with their own route tables: Redis (no mutations allowed) and Dubbo."""
    rule = RouteRule("all", (), RouteAction(cluster="redis-c"), request_mutation=(("x-team", "a"),) if redis_mutation else ())
    return Bootstrap(
        (
            ListenerConfig("redis", "127.0.0.1", 0, CodecRef("redis"), "redis", route_config=RouteConfig("redis-routes", (rule,))),
            ListenerConfig("dubbo", "127.0.0.1", 0, CodecRef("dubbo"), "dubbo", route_config=RouteConfig("dubbo-routes", (RouteRule("all", (), RouteAction(cluster="d1")),))),
        ),
        (ClusterConfig("redis-c", (Endpoint("127.0.0.1", 1001),)), ClusterConfig("d1", (Endpoint("127.0.0.1", 1002),))),
    )


@dataclass
class Plane:
    ads: AdsServer
    admin: AdminServer
    port: int
    xds_port: int


@pytest_asyncio.fixture
async def plane() -> AsyncIterator[Plane]:
    ads = AdsServer()
    grpc_server, xds_port = await start_server(ads, "127.0.0.1:0")
    admin = AdminServer(ads)
    port = await admin.start("127.0.0.1", 0)
    try:
        yield Plane(ads, admin, port, xds_port)
    finally:
        await admin.close()
        await grpc_server.stop(0)


@pytest.mark.asyncio
async def test_health_readiness_status_and_metrics(plane: Plane) -> None:
    assert await get(plane.port, "/healthz") == (200, "ok\n")  # default: alive
    assert (await get(plane.port, "/readyz"))[0] == 503  # nothing published yet
    await plane.ads.set_snapshot(snapshot_of(config()))
    assert await get(plane.port, "/readyz") == (200, "ready\n")
    alive = [True]
    plane.admin.health = lambda: alive[0]
    alive[0] = False
    assert (await get(plane.port, "/healthz"))[0] == 503
    assert json.loads((await get(plane.port, "/status"))[1]) == {}  # default provider
    objects = {
        "MetaRouter ns/good": {"state": "accepted", "problems": []},
        "MetaRouter ns/bad": {"state": "rejected", "problems": ["routes[0]: unknown subset v9", "routes[1]: bad regex"]},
    }
    plane.admin.status_provider = lambda: {"objects": objects, "file_problems": []}
    code, body = await get(plane.port, "/status")
    assert code == 200 and json.loads(body)["objects"] == objects

    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    plane.admin.status_provider = broken
    code, body = await get(plane.port, "/status")
    assert code == 500 and "RuntimeError: boom" in body
    plane.admin.status_provider = lambda: objects
    code, metrics = await get(plane.port, "/metrics")
    assert code == 200
    for line in ("aeraki_ctl_connected_proxies 0", "aeraki_ctl_ready 1", "aeraki_ctl_healthy 0", 'aeraki_ctl_objects{state="rejected"} 1',
                 'aeraki_ctl_xds_pushes_total{type="CDS"} 0', "aeraki_ctl_snapshots_published_total 1", 'aeraki_ctl_xds_push_duration_seconds_bucket{le="+Inf"} 0'):  # fmt: skip
        assert line in metrics.splitlines(), line
    assert (await get(plane.port, "/nope"))[0] == 404 and (await get(plane.port, "/healthz", "POST"))[0] == 405
    assert "/proxies" in (await get(plane.port, "/"))[1]


@pytest.mark.asyncio
async def test_proxies_show_synced_stale_and_nacked_with_the_reason(plane: Plane, capsys: pytest.CaptureFixture[str]) -> None:
    await plane.ads.set_snapshot(snapshot_of(config()))
    proxy = Proxy(Bootstrap((), ()), CodecRegistry.from_entry_points())
    await proxy.start()
    client = AdsClient(proxy, f"127.0.0.1:{plane.xds_port}", "proxy-a")
    task = asyncio.ensure_future(client.run())
    try:
        await until(lambda: client.applied == 1)

        async def types() -> dict[str, dict[str, object]]:
            (p,) = json.loads((await get(plane.port, "/proxies"))[1])["proxies"]
            return p["types"]  # type: ignore[no-any-return]

        await until(lambda: all(w.state == "SYNCED" for i in plane.ads.streams.values() for w in i.watches.values()))
        t = await types()
        assert {k: v["state"] for k, v in t.items()} == {"CDS": "SYNCED", "EDS": "SYNCED", "LDS": "SYNCED", "RDS": "SYNCED"}
        assert all(v["acked_version"] == v["sent_version"] and v["nack"] is None for v in t.values())
        # The Redis route table becomes one the proxy rejects: RDS is NACKED with the reason.
        await plane.ads.set_snapshot(snapshot_of(config(redis_mutation=True)))
        await until(lambda: any(w.state == "NACKED" for i in plane.ads.streams.values() for w in i.watches.values()))
        (p,) = json.loads((await get(plane.port, "/proxies"))[1])["proxies"]
        t = p["types"]
        assert p["node_id"] == "proxy-a" and p["peer"] and p["stream"] == "sotw" and p["connected_since"].endswith("Z")
        assert t["RDS"]["state"] == "NACKED" and t["RDS"]["acked_version"] != t["RDS"]["sent_version"]
        assert "redis-routes: " in t["RDS"]["nack"]["message"] and "cannot carry request/response mutations" in t["RDS"]["nack"]["message"]
        assert t["RDS"]["nack"]["version"] == t["RDS"]["sent_version"]
        assert [t[k]["state"] for k in ("CDS", "LDS", "EDS")] == ["SYNCED"] * 3
        metrics = (await get(plane.port, "/metrics"))[1].splitlines()
        assert 'aeraki_ctl_xds_nacks_total{type="RDS"} 1' in metrics and "aeraki_ctl_connected_proxies 1" in metrics
        assert 'aeraki_ctl_xds_pushes_total{type="RDS"} 2' in metrics and "aeraki_ctl_proxies_nacked 1" in metrics
        # The commands, as a user runs them (urllib blocks: off the loop).
        out = io.StringIO()
        with redirect_stdout(out):
            code = await asyncio.to_thread(main, ["proxy-status", "--admin", f"127.0.0.1:{plane.port}"])
        lines = out.getvalue().splitlines()
        assert code == 0 and lines[0].split()[:6] == ["NAME", "DATA-PLANE", "CDS", "LDS", "EDS", "RDS"], lines
        assert lines[1].split()[:6] == ["proxy-a", "metaprotocol", "SYNCED", "SYNCED", "SYNCED", "NACKED"], lines
        assert lines[2].startswith("    RDS NACKED version ") and "redis-routes: " in lines[2] and "cannot carry" in lines[2]
        # A valid version is SYNCED again.
        await plane.ads.set_snapshot(snapshot_of(config()))
        await until(lambda: all(w.state == "SYNCED" for i in plane.ads.streams.values() for w in i.watches.values()))
    finally:
        task.cancel()
        await proxy.close()
    await until(lambda: not plane.ads.streams)
    assert json.loads((await get(plane.port, "/proxies"))[1]) == {"proxies": []}


@pytest.mark.asyncio
async def test_delta_streams_are_tracked_too(plane: Plane) -> None:
    await plane.ads.set_snapshot(snapshot_of(config()))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}")
    queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while True:
            yield await queue.get()

    call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources(requests())
    node = base_pb2.Node(id="delta-proxy")
    try:
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=convert.CLUSTER_TYPE, resource_names_subscribe=["*"]))
        r = await asyncio.wait_for(call.read(), 2)
        (p,) = plane.ads.proxies()
        assert p["stream"] == "delta" and p["types"]["CDS"]["state"] == "STALE"  # type: ignore[index]
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=convert.CLUSTER_TYPE, response_nonce=r.nonce,
                                                             error_detail=status_pb2.Status(code=3, message="CDS: d1: no")))  # fmt: skip
        await until(lambda: plane.ads.proxies()[0]["types"]["CDS"]["state"] == "NACKED")  # type: ignore[index]
        assert plane.ads.proxies()[0]["types"]["CDS"]["nack"]["message"] == "CDS: d1: no"  # type: ignore[index]
        await plane.ads.set_snapshot(snapshot_of(Bootstrap((), (ClusterConfig("d2", (Endpoint("127.0.0.1", 7),)),))))
        r = await asyncio.wait_for(call.read(), 2)
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=convert.CLUSTER_TYPE, response_nonce=r.nonce))
        await until(lambda: plane.ads.proxies()[0]["types"]["CDS"]["state"] == "SYNCED")  # type: ignore[index]
    finally:
        call.cancel()
        await channel.close()


def test_status_and_proxy_status_rendering_and_exit_codes() -> None:
    text, bad = render_status(
        {
            "objects": {
                "MetaRouter ns/b": {"state": "serving-last-valid", "problems": ["routes[0].route[0].destination.subset: unknown subset v3"]},
                "MetaRouter ns/a": {"state": "accepted", "problems": []},
                "DestinationRule ns/c": {"state": "rejected", "problems": [{"path": "spec.host", "reason": "required"}]},
            },
            "file_problems": ["broken.yaml: line 3: cannot parse"],
        }
    )
    lines = text.splitlines()
    assert bad == 2 and lines[0].split() == ["OBJECT", "STATE", "PROBLEMS"]
    assert lines[1].split() == ["DestinationRule", "ns/c", "rejected", "1"] and lines[2] == "    spec.host: required"
    assert lines[3].split() == ["MetaRouter", "ns/a", "accepted", "0"]
    assert lines[4].split() == ["MetaRouter", "ns/b", "serving-last-valid", "1"] and lines[5].startswith("    routes[0]")
    assert lines[-2:] == ["file problems:", "    broken.yaml: line 3: cannot parse"]
    assert render_status({"MetaRouter ns/a": {"state": "accepted", "problems": []}})[1] == 0  # the bare mapping form
    assert "(no proxy connected)" in render_proxies([])
    # Nothing listens on port 1: both commands say so and exit non-zero.
    assert main(["proxy-status", "--admin", "127.0.0.1:1"]) == EXIT_UNREACHABLE
    assert main(["status", "--admin", "127.0.0.1:1"]) == EXIT_UNREACHABLE


@pytest.mark.asyncio
async def test_status_command_exits_1_on_a_rejected_object(plane: Plane) -> None:
    plane.admin.status_provider = lambda: {"objects": {"MetaRouter ns/bad": {"state": "rejected", "problems": ["a", "b"]}}}
    out = io.StringIO()
    with redirect_stdout(out):
        code = await asyncio.to_thread(main, ["status", "--admin", f"127.0.0.1:{plane.port}"])
    assert code == 1 and out.getvalue().splitlines()[1:] == [out.getvalue().splitlines()[1], "    a", "    b"]
    assert out.getvalue().splitlines()[1].split() == ["MetaRouter", "ns/bad", "rejected", "2"]
    plane.admin.status_provider = lambda: {"objects": {"MetaRouter ns/ok": {"state": "accepted", "problems": []}}}
    with redirect_stdout(io.StringIO()):
        assert await asyncio.to_thread(main, ["status", "--admin", f"127.0.0.1:{plane.port}"]) == 0


def test_log_level_is_a_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--config-dir", ".", "--log-level", "verbose"])
    assert exc.value.code == 2 and "invalid choice: 'VERBOSE'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "not built" not in help_text and "proxy-status" in help_text and "--admin" in help_text
