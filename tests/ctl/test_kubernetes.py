"""The Kubernetes source against the contract server (tests/k8s_contract.py), through the real
client library (kubernetes_asyncio): list, watch events, a dropped watch, 410 and relist,
bookmarks, Services with EndpointSlices and Pod labels, and the object lifecycle in the controller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from aeraki_ctl import cli
from aeraki_ctl.controller import Controller
from aeraki_ctl.lifecycle import ACCEPTED, SERVING_LAST_VALID
from aeraki_ctl.resources import ResourceSet
from aeraki_ctl.sources.kubernetes import KubernetesSource
from aeraki_ctl.translate import translate
from aeraki_ctl.xds.server import AdsServer
from tests import k8s_contract as contract
from tests.k8s_contract import ContractServer, parse_bool

pytest.importorskip("kubernetes_asyncio")
from kubernetes_asyncio import client  # noqa: E402

NS = "meta-dubbo"
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
SVC_HOST = f"demo.{NS}.svc.cluster.local"
MR_API = "metaprotocol.aeraki.io/v1alpha1"
ISTIO_API = "networking.istio.io/v1beta1"


def metarouter(weights: tuple[int, int], host: str = HOST, name: str = "route") -> dict[str, Any]:
    route = [{"destination": {"host": host, "subset": s}, "weight": w} for s, w in zip(("v1", "v2"), weights, strict=True) if w]
    return {"apiVersion": MR_API, "kind": "MetaRouter", "metadata": {"name": name, "namespace": NS},
            "spec": {"hosts": [host], "routes": [{"name": "split", "match": {"attributes": {"method": {"exact": "sayHello"}}}, "route": route}]}}  # fmt: skip


def service_entry(ports: tuple[int, int] = (20881, 20882)) -> dict[str, Any]:
    return {"apiVersion": ISTIO_API, "kind": "ServiceEntry", "metadata": {"name": "demo-se", "namespace": NS},
            "spec": {"hosts": [HOST], "ports": [{"number": 20880, "name": "tcp-metaprotocol-dubbo", "protocol": "TCP"}], "resolution": "STATIC",
                     "endpoints": [{"address": "127.0.0.1", "ports": {"tcp-metaprotocol-dubbo": p}, "labels": {"version": v}} for v, p in zip(("v1", "v2"), ports, strict=True)]}}  # fmt: skip


def destination_rule(host: str = HOST, name: str = "demo-dr") -> dict[str, Any]:
    return {"apiVersion": ISTIO_API, "kind": "DestinationRule", "metadata": {"name": name, "namespace": NS},
            "spec": {"host": host, "subsets": [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]}}  # fmt: skip


def k8s_service(name: str = "demo", port_name: str = "tcp-metaprotocol-dubbo-demo") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": port_name, "port": 20880, "targetPort": 20880, "protocol": "TCP"},
                                                         {"name": "http-admin", "port": 8080, "protocol": "TCP"}]}}  # fmt: skip


def pod(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": "demo", "version": version}},
            "spec": {"containers": [{"name": "app", "image": "demo"}]}, "status": {"phase": "Running"}}  # fmt: skip


def endpoint_slice(name: str, port: int, endpoints: list[tuple[str, str, bool | None]], service: str = "demo", port_name: str = "tcp-metaprotocol-dubbo-demo") -> dict[str, Any]:
    eps = []
    for address, pod_name, ready in endpoints:
        e: dict[str, Any] = {"addresses": [address], "targetRef": {"kind": "Pod", "name": pod_name, "namespace": NS}}
        if ready is not None:
            e["conditions"] = {"ready": ready}
        eps.append(e)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port, "protocol": "TCP"}], "endpoints": eps}  # fmt: skip


async def eventually(pred: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never held")


@pytest_asyncio.fixture
async def api() -> AsyncIterator[ContractServer]:
    server = ContractServer()
    await server.start()
    yield server
    await server.close()


def new_source(server: ContractServer, **kw: Any) -> KubernetesSource:
    return KubernetesSource(client.ApiClient(client.Configuration(host=server.url)), backoff=0.05, max_backoff=0.2, **kw)


def by_ref(source: KubernetesSource) -> dict[str, Any]:
    return {r.ref: r for r in source.resources()[0]}


async def started(server: ContractServer, **kw: Any) -> tuple[KubernetesSource, list[int]]:
    source = new_source(server, **kw)
    changes = [0]

    def changed() -> None:
        changes[0] += 1

    await source.start(changed)
    assert await source.wait_synced(5)
    await eventually(lambda: server.watch_count() == 7)  # every kind watched
    return source, changes


@pytest.mark.asyncio
async def test_initial_list_then_add_modify_delete(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    api.apply(service_entry())
    source, changes = await started(api)
    try:
        refs = by_ref(source)
        assert set(refs) == {f"MetaRouter {NS}/route", f"ServiceEntry {NS}/demo-se"}
        mr = refs[f"MetaRouter {NS}/route"]
        assert mr.source == f"k8s://{NS}/MetaRouter/route" and not mr.problems
        assert [d.weight for d in mr.spec.routes[0].route] == [20, 80]
        # every watch starts at the version its list returned, with bookmarks allowed
        watches = [q for path, q in api.requests if parse_bool(q.get("watch", ""))]
        assert len(watches) == 7 and all(q["resourceVersion"] == "2" and parse_bool(q["allowWatchBookmarks"]) for q in watches)

        before = changes[0]
        api.apply(destination_rule())
        await eventually(lambda: f"DestinationRule {NS}/demo-dr" in by_ref(source))
        api.apply(metarouter((50, 50)))
        await eventually(lambda: [d.weight for d in by_ref(source)[f"MetaRouter {NS}/route"].spec.routes[0].route] == [50, 50])
        api.delete(ISTIO_API, "ServiceEntry", NS, "demo-se")
        await eventually(lambda: f"ServiceEntry {NS}/demo-se" not in by_ref(source))
        assert changes[0] >= before + 3
        assert source.lists == 7 and source.relists == 0
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_namespaced_watch_sees_only_its_namespace(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    other = metarouter((20, 80), name="elsewhere")
    other["metadata"]["namespace"] = "other"
    api.apply(other)
    source, _ = await started(api, namespaces=[NS])
    try:
        assert set(by_ref(source)) == {f"MetaRouter {NS}/route"}
        assert all(path.startswith(("/api/v1/namespaces/meta-dubbo/", "/apis/")) and "/namespaces/meta-dubbo/" in path for path, _ in api.requests)
        api.apply({**other, "spec": metarouter((50, 50))["spec"]})
        api.apply(metarouter((70, 30)))
        await eventually(lambda: [d.weight for d in by_ref(source)[f"MetaRouter {NS}/route"].spec.routes[0].route] == [70, 30])
        assert set(by_ref(source)) == {f"MetaRouter {NS}/route"}
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_a_kind_the_api_does_not_serve_does_not_hold_the_others_back(api: ContractServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(contract.COLLECTIONS, ("/apis/networking.istio.io/v1beta1", "destinationrules"))  # Istio not installed: 404
    api.apply(metarouter((20, 80)))
    source = new_source(api)
    await source.start(lambda: None)
    try:
        assert await source.wait_synced(5)
        assert set(by_ref(source)) == {f"MetaRouter {NS}/route"}
        await eventually(lambda: source.reconnects >= 2)  # and it is asked for again, with back-off
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_a_dropped_watch_resumes_from_its_resource_version(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    source, _ = await started(api)
    try:
        api.drop_watches()
        api.apply(metarouter((60, 40)))  # made while no watch is open: the resumed watch replays it
        await eventually(lambda: [d.weight for d in by_ref(source)[f"MetaRouter {NS}/route"].spec.routes[0].route] == [60, 40])
        await eventually(lambda: api.watch_count() == 7)
        assert source.reconnects >= 1
        assert source.lists == 7 and source.relists == 0  # resumed, not relisted
        resumed = [q for path, q in api.requests if path.endswith("/metarouters") and parse_bool(q.get("watch", ""))]
        assert [q["resourceVersion"] for q in resumed][:2] == ["1", "1"]
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_410_gone_means_a_relist(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    api.apply(service_entry())
    source, _ = await started(api)
    try:
        api.drop_watches()
        api.apply(metarouter((90, 10)))
        api.delete(ISTIO_API, "ServiceEntry", NS, "demo-se")
        api.compact()  # the history the watches would resume from is gone
        await eventually(lambda: source.relists >= 7)
        await eventually(lambda: api.watch_count() == 7)
        refs = by_ref(source)
        assert set(refs) == {f"MetaRouter {NS}/route"}  # the deletion seen through the relist
        assert [d.weight for d in refs[f"MetaRouter {NS}/route"].spec.routes[0].route] == [90, 10]
        assert source.lists == 14
        api.apply(metarouter((10, 90)))  # and the new watches follow
        await eventually(lambda: [d.weight for d in by_ref(source)[f"MetaRouter {NS}/route"].spec.routes[0].route] == [10, 90])
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_bookmarks_move_the_resume_point_so_a_quiet_kind_needs_no_relist(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    source, _ = await started(api)
    try:
        for i in range(3):  # other kinds change: the MetaRouter watch sees nothing of it
            api.apply(pod(f"p{i}", "v1"))
        api.bookmark()
        await eventually(lambda: all(v == "4" for v in source.versions.values()))  # the bookmark is read
        api.drop_watches()
        api.compact()  # up to revision 4: a resume from 1 would be 410, from the bookmark's 4 is not
        await eventually(lambda: api.watch_count() == 7)
        assert source.relists == 0
        resumed = [q["resourceVersion"] for path, q in api.requests if path.endswith("/metarouters") and parse_bool(q.get("watch", ""))]
        assert resumed[-1] == "4"
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_a_service_with_endpoint_slices_is_a_routable_host_with_pod_labels(api: ContractServer) -> None:
    api.apply(pod("demo-v1", "v1"))
    api.apply(pod("demo-v2", "v2"))
    api.apply(pod("demo-v2-starting", "v2"))
    api.apply(k8s_service())
    api.apply(k8s_service("plain", port_name="http"))  # not in the convention: not a MetaProtocol service
    api.apply(endpoint_slice("demo-a", 20881, [("10.0.0.1", "demo-v1", True)]))
    api.apply(endpoint_slice("demo-b", 20882, [("10.0.0.2", "demo-v2", None), ("10.0.0.3", "demo-v2-starting", False)]))
    api.apply(destination_rule(SVC_HOST, "demo-svc-dr"))
    api.apply(metarouter((30, 70), host=SVC_HOST))
    source, _ = await started(api)
    try:
        refs = by_ref(source)
        se = refs[f"ServiceEntry {NS}/demo.svc"]
        assert se.source == f"k8s://{NS}/Service/demo" and not se.problems
        assert list(se.spec.hosts) == [SVC_HOST]
        assert [(p.number, p.name) for p in se.spec.ports] == [(20880, "tcp-metaprotocol-dubbo-demo")]
        got = sorted((e.address, dict(e.ports), dict(e.labels)) for e in se.spec.endpoints)
        assert got == [("10.0.0.1", {"tcp-metaprotocol-dubbo-demo": 20881}, {"app": "demo", "version": "v1"}),
                       ("10.0.0.2", {"tcp-metaprotocol-dubbo-demo": 20882}, {"app": "demo", "version": "v2"})]  # fmt: skip
        assert f"ServiceEntry {NS}/plain.svc" not in refs

        result = translate(ResourceSet(resources=list(refs.values())))
        assert not result.errors, result.errors
        clusters = {c.name: c for c in result.bootstrap.clusters}
        v1 = clusters[f"outbound|20880|v1|{SVC_HOST}"]
        v2 = clusters[f"outbound|20880|v2|{SVC_HOST}"]
        assert [(e.address, e.port) for e in v1.endpoints] == [("10.0.0.1", 20881)]
        assert [(e.address, e.port) for e in v2.endpoints] == [("10.0.0.2", 20882)]

        # the starting pod becomes ready; a pod relabelled moves between subsets
        api.apply(endpoint_slice("demo-b", 20882, [("10.0.0.2", "demo-v2", None), ("10.0.0.3", "demo-v2-starting", True)]))
        relabelled = pod("demo-v1", "v2")
        api.apply(relabelled)

        def v2_addresses() -> list[str]:
            se = by_ref(source)[f"ServiceEntry {NS}/demo.svc"]
            return sorted(e.address for e in se.spec.endpoints if e.labels.get("version") == "v2")

        await eventually(lambda: v2_addresses() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        api.delete("discovery.k8s.io/v1", "EndpointSlice", NS, "demo-a")
        await eventually(lambda: v2_addresses() == ["10.0.0.2", "10.0.0.3"])
        api.delete("v1", "Service", NS, "demo")
        await eventually(lambda: f"ServiceEntry {NS}/demo.svc" not in by_ref(source))
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_controller_an_invalid_metarouter_serves_its_last_valid_version_until_fixed(api: ContractServer) -> None:
    api.apply(service_entry())
    api.apply(destination_rule())
    api.apply(metarouter((20, 80)))
    source = new_source(api)
    controller = Controller(None, AdsServer(), quiet=0.05, sources=[source])
    task = asyncio.ensure_future(controller.run())
    ref = f"MetaRouter {NS}/route"
    try:
        await eventually(lambda: controller.objects.get(ref) is not None and controller.objects[ref].state == ACCEPTED)
        first = controller.objects[ref]
        assert first.source == f"k8s://{NS}/MetaRouter/route"
        served = dict(controller.ads.snapshot.versions)

        bad = metarouter((20, 80))
        bad["spec"]["routes"][0]["route"][0]["weight"] = "heavy"
        api.apply(bad)
        await eventually(lambda: controller.objects[ref].state == SERVING_LAST_VALID)
        assert any("weight" in p for p in controller.objects[ref].problems)
        assert dict(controller.ads.snapshot.versions) == served  # what is served did not move

        api.apply(metarouter((50, 50)))
        await eventually(lambda: controller.objects[ref].state == ACCEPTED and controller.objects[ref].valid_versions == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert source._tasks == []  # the controller closed its source


def test_serve_needs_a_config_dir_or_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--xds-address", "127.0.0.1:0"])
    assert exc.value.code == 2
    assert "--config-dir, --kubernetes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--config-dir", ".", "--namespace", "x"])


def test_serve_kubernetes_names_the_extra_when_the_client_is_missing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real = builtins.__import__

    def fake(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "kubernetes_asyncio" or name.startswith("kubernetes_asyncio."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    assert cli.main(["serve", "--kubernetes", "--xds-address", "127.0.0.1:0"]) == 2
    assert "pip install 'metaprotocol[kubernetes]'" in capsys.readouterr().err


def test_kubeconfig_is_read(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = ContractServer()
        await server.start()
        config = tmp_path / "kubeconfig"
        config.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
            f"clusters: [{{name: t, cluster: {{server: '{server.url}'}}}}]\n"
            "contexts: [{name: t, context: {cluster: t, user: u}}]\nusers: [{name: u, user: {token: abc}}]\n"
        )
        server.apply(metarouter((20, 80)))
        source = KubernetesSource(kubeconfig=str(config))
        await source.start(lambda: None)
        try:
            assert await source.wait_synced(5)
            assert f"MetaRouter {NS}/route" in by_ref(source)
        finally:
            await source.close()
            await server.close()

    asyncio.run(scenario())
