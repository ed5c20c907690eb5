"""The Kubernetes source against the contract server (tests/k8s_contract.py), through the real
client library (kubernetes_asyncio): list, watch events, a dropped watch, 410 and relist,
bookmarks, Services with EndpointSlices and Pod labels, and the object lifecycle in the controller."""

from __future__ import annotations

import asyncio
import json
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
from aeraki_ctl.sources.kubernetes import KINDS, KubernetesSource
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
    await eventually(lambda: server.watch_count() == len(KINDS))  # every kind watched
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
        assert len(watches) == len(KINDS) and all(q["resourceVersion"] == "2" and parse_bool(q["allowWatchBookmarks"]) for q in watches)

        before = changes[0]
        api.apply(destination_rule())
        await eventually(lambda: f"DestinationRule {NS}/demo-dr" in by_ref(source))
        api.apply(metarouter((50, 50)))
        await eventually(lambda: [d.weight for d in by_ref(source)[f"MetaRouter {NS}/route"].spec.routes[0].route] == [50, 50])
        api.delete(ISTIO_API, "ServiceEntry", NS, "demo-se")
        await eventually(lambda: f"ServiceEntry {NS}/demo-se" not in by_ref(source))
        assert changes[0] >= before + 3
        assert source.lists == len(KINDS) and source.relists == 0
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
        collections = [path for path, _ in api.requests if path.rstrip("/") not in ("/apis/networking.istio.io", "/apis/security.istio.io")]  # not discovery
        assert all(path.startswith(("/api/v1/namespaces/meta-dubbo/", "/apis/")) and "/namespaces/meta-dubbo/" in path for path in collections)
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
        await eventually(lambda: api.watch_count() == len(KINDS))
        assert source.reconnects >= 1
        assert source.lists == len(KINDS) and source.relists == 0  # resumed, not relisted
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
        await eventually(lambda: source.relists >= len(KINDS))
        await eventually(lambda: api.watch_count() == len(KINDS))
        refs = by_ref(source)
        assert set(refs) == {f"MetaRouter {NS}/route"}  # the deletion seen through the relist
        assert [d.weight for d in refs[f"MetaRouter {NS}/route"].spec.routes[0].route] == [90, 10]
        assert source.lists == 2 * len(KINDS)
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
        await eventually(lambda: api.watch_count() == len(KINDS))
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


# -- chunked lists (limit / continue) -----------------------------------------------------------------

MR_PATH = f"/apis/metaprotocol.aeraki.io/v1alpha1/namespaces/{NS}/metarouters"


def weights_of(source: KubernetesSource, name: str) -> list[int]:
    return [d.weight for d in by_ref(source)[f"MetaRouter {NS}/{name}"].spec.routes[0].route]


def server_state(server: ContractServer, plural: str) -> dict[str, Any]:
    return {name: obj["spec"] for (key, _, name), obj in server.objects.items() if key[1] == plural}


def cached_state(source: KubernetesSource, kind: str) -> dict[str, Any]:
    return {name: obj["spec"] for (k, _, name), obj in source.cache.items() if k == kind}


def page_log(server: ContractServer, plural: str) -> list[dict[str, Any]]:
    return [p for p in server.pages if p["path"].endswith("/" + plural)]


@pytest.mark.asyncio
async def test_contract_chunked_lists_are_one_snapshot_and_a_compacted_token_is_410_expired(api: ContractServer) -> None:
    """The contract server's limit/continue, through the client library: what the API reference
    says of ListMeta.continue, remainingItemCount and an expired token."""
    from kubernetes_asyncio.client.exceptions import ApiException

    for i in range(12):
        api.apply(metarouter((20, 80), name=f"route-{i:02}"))
    c = client.ApiClient(client.Configuration(host=api.url))
    crd = client.CustomObjectsApi(c)
    try:

        async def page(**kw: Any) -> dict[str, Any]:
            result: dict[str, Any] = await crd.list_namespaced_custom_object("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", **kw)
            return result

        first = await page(limit=5)
        assert [o["metadata"]["name"] for o in first["items"]] == [f"route-{i:02}" for i in range(5)]
        meta = first["metadata"]
        assert meta["resourceVersion"] == "12" and meta["remainingItemCount"] == 7 and meta["continue"]
        # writes between pages are not seen by the rest of the list: it is the snapshot at 12
        api.apply(metarouter((70, 30), name="route-00"))
        api.apply(metarouter((70, 30), name="route-07"))
        api.delete(MR_API, "MetaRouter", NS, "route-11")
        api.apply(metarouter((70, 30), name="route-99"))
        second = await page(limit=5, _continue=meta["continue"])
        assert [o["metadata"]["name"] for o in second["items"]] == [f"route-{i:02}" for i in range(5, 10)]
        assert second["metadata"]["resourceVersion"] == "12" and second["metadata"]["remainingItemCount"] == 2
        assert second["items"][2]["spec"]["routes"][0]["route"][0]["weight"] == 20  # route-07 as it was at 12
        last = await page(limit=5, _continue=second["metadata"]["continue"])
        assert [o["metadata"]["name"] for o in last["items"]] == ["route-10", "route-11"]  # route-11 deleted since; route-99 created since
        assert last["metadata"] == {"resourceVersion": "12"}  # no continue, no remainingItemCount on the last page
        whole = await page()
        assert len(whole["items"]) == 12 and "continue" not in whole["metadata"] and whole["metadata"]["resourceVersion"] == "16"
        assert len((await page(limit=0))["items"]) == 12

        token = second["metadata"]["continue"]
        for bad in ({"_continue": "not-a-token"}, {"_continue": token, "resource_version": "12"}):
            with pytest.raises(ApiException) as err:
                await page(limit=5, **bad)
            assert err.value.status == 400
        with pytest.raises(ApiException) as err:  # a token of another collection
            await crd.list_namespaced_custom_object("metaprotocol.aeraki.io", "v1alpha1", NS, "applicationprotocols", limit=5, _continue=token)
        assert err.value.status == 400

        api.compact()  # the snapshot at 12 is gone: its tokens expired
        with pytest.raises(ApiException) as err:
            await page(limit=5, _continue=token)
        gone = json.loads(err.value.body)
        assert err.value.status == 410 and (gone["kind"], gone["code"], gone["reason"]) == ("Status", 410, "Expired")
        # the Status offers a token that continues from the same key in the latest snapshot (inconsistent)
        rest = await page(limit=5, _continue=gone["metadata"]["continue"])
        assert [o["metadata"]["name"] for o in rest["items"]] == ["route-10", "route-99"] and rest["metadata"]["resourceVersion"] == "16"
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_a_list_longer_than_a_page_is_read_in_pages_and_the_watch_loses_and_repeats_nothing(api: ContractServer) -> None:
    for i in range(12):
        api.apply(metarouter((20, 80), name=f"route-{i:02}"))
    listed_at = str(api.revision)
    continued = []

    def between_pages(path: str, query: dict[str, str]) -> None:  # writes land while the list is being read
        if path != MR_PATH or "continue" not in query:
            return
        continued.append(query["continue"])
        if len(continued) == 1:
            api.apply(metarouter((60, 40), name="route-00"))  # in the page already read
            api.delete(MR_API, "MetaRouter", NS, "route-11")  # in a page still to come
        else:
            api.apply(metarouter((30, 70), name="route-10a"))  # created after the snapshot, in a page still to come

    api.before_list = between_pages
    source, changes = await started(api, namespaces=[NS], list_page_size=5)
    try:
        pages = page_log(api, "metarouters")
        assert [(p["query"].get("limit"), "continue" in p["query"], len(p["names"]), p["continue"]) for p in pages] == [
            ("5", False, 5, True), ("5", True, 5, True), ("5", True, 2, False)]  # fmt: skip
        assert {p["resourceVersion"] for p in pages} == {listed_at}  # one snapshot
        assert sum((p["names"] for p in pages), []) == [f"route-{i:02}" for i in range(12)]  # each once; route-10a not in it
        watch = [q for path, q in api.requests if path == MR_PATH and parse_bool(q.get("watch", ""))]
        assert watch[0]["resourceVersion"] == listed_at  # the watch starts where the pages were read
        await eventually(lambda: cached_state(source, "MetaRouter") == server_state(api, "metarouters"))
        assert weights_of(source, "route-00") == [60, 40] and weights_of(source, "route-10a") == [30, 70]
        assert "route-11" not in cached_state(source, "MetaRouter")
        # one change for the list (the other kinds are empty), one per write replayed by the watch:
        # an event lost or applied twice would be one fewer
        await eventually(lambda: changes[0] == 4)
        assert source.lists == len(KINDS) and source.pages == len(KINDS) + 2 and source.list_restarts == 0 and source.relists == 0
        api.apply(metarouter((10, 90), name="route-03"))  # and it follows on
        await eventually(lambda: weights_of(source, "route-03") == [10, 90])
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_an_expired_continue_token_mid_list_restarts_the_list_whole(api: ContractServer) -> None:
    for i in range(12):
        api.apply(metarouter((20, 80), name=f"route-{i:02}"))
    fired = []

    def expire(path: str, query: dict[str, str]) -> None:
        if path == MR_PATH and "continue" in query and not fired:
            fired.append(True)
            api.apply(metarouter((90, 10), name="route-07"))
            api.delete(MR_API, "MetaRouter", NS, "route-11")
            api.compact()  # the list's snapshot is compacted away before its second page: 410 Expired

    api.before_list = expire
    source, _ = await started(api, namespaces=[NS], list_page_size=5)
    try:
        pages = page_log(api, "metarouters")
        assert [(p["code"], p["query"].get("limit"), "continue" in p["query"]) for p in pages] == [
            (200, "5", False), (410, "5", True), (200, None, False)]  # fmt: skip
        assert source.list_restarts == 1  # (other kinds' watches, from before the compaction, relist: 410)
        whole_at = pages[-1]["resourceVersion"]
        assert whole_at == "14" and len(pages[-1]["names"]) == 11
        watch = [q for path, q in api.requests if path == MR_PATH and parse_bool(q.get("watch", ""))]
        assert watch[0]["resourceVersion"] == whole_at  # from the whole list's version, not the expired one
        assert cached_state(source, "MetaRouter") == server_state(api, "metarouters")
        assert weights_of(source, "route-07") == [90, 10] and "route-11" not in cached_state(source, "MetaRouter")
        api.apply(metarouter((40, 60), name="route-02"))
        await eventually(lambda: weights_of(source, "route-02") == [40, 60])
    finally:
        await source.close()


@pytest.mark.asyncio
async def test_the_default_page_is_500_items(api: ContractServer) -> None:
    for i in range(1001):
        api.apply(pod(f"p{i:04}", "v1"))
    source, _ = await started(api)
    try:
        pages = page_log(api, "pods")
        assert [(p["query"].get("limit"), len(p["names"])) for p in pages] == [("500", 500), ("500", 500), ("500", 1)]
        assert sum(1 for k in source.cache if k[0] == "Pod") == 1001
    finally:
        await source.close()


def test_serve_list_page_size_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--config-dir", ".", "--list-page-size", "100"])  # goes with --kubernetes
    assert "--list-page-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--kubernetes", "--list-page-size", "-1"])
    assert "--list-page-size" in capsys.readouterr().err


# -- networking.istio.io versions (discovery) -----------------------------------------------------------


def test_contract_version_priority_is_the_api_servers() -> None:
    got = sorted(["v1alpha3", "v1", "v2beta1", "v1beta1", "v2", "foo", "v10alpha1", "v1alpha10"], key=contract.version_priority)
    assert got == ["v2", "v1", "v2beta1", "v1beta1", "v10alpha1", "v1alpha10", "v1alpha3", "foo"]


@pytest.mark.asyncio
async def test_contract_discovery_documents() -> None:
    server = ContractServer(served={"networking.istio.io": ("v1beta1", "v1")})
    await server.start()
    c = client.ApiClient(client.Configuration(host=server.url))
    try:
        groups = await client.ApisApi(c).get_api_versions()
        istio = next(g for g in groups.groups if g.name == "networking.istio.io")
        assert [v.version for v in istio.versions] == ["v1", "v1beta1"] and istio.preferred_version.version == "v1"
        assert {g.name for g in groups.groups} >= {"metaprotocol.aeraki.io", "discovery.k8s.io", "coordination.k8s.io"}
        coordination = await client.CoordinationApi(c).get_api_group()  # GET /apis/coordination.k8s.io/
        assert coordination.preferred_version.group_version == "coordination.k8s.io/v1"
        # one object, served at every served version with the apiVersion of the request
        server.apply(service_entry())
        crd = client.CustomObjectsApi(c)
        for version in ("v1", "v1beta1"):
            listed = await crd.list_namespaced_custom_object("networking.istio.io", version, NS, "serviceentries")
            assert [o["apiVersion"] for o in listed["items"]] == [f"networking.istio.io/{version}"]
        from kubernetes_asyncio.client.exceptions import ApiException

        with pytest.raises(ApiException) as err:  # a version not served
            await crd.list_namespaced_custom_object("networking.istio.io", "v1alpha3", NS, "serviceentries")
        assert err.value.status == 404
        server.served["networking.istio.io"] = ()  # Istio not installed: the group is not served
        with pytest.raises(ApiException) as err:
            await c.call_api("/apis/networking.istio.io/", "GET", auth_settings=["BearerToken"], response_types_map={200: "V1APIGroup"})
        assert err.value.status == 404
    finally:
        await c.close()
        await server.close()


def test_choose_version() -> None:
    from aeraki_ctl.sources.kubernetes import ISTIO_VERSIONS, choose_version

    def group(preferred: str, *versions: str) -> dict[str, Any]:
        return {"versions": [{"version": v} for v in versions], "preferredVersion": {"version": preferred}}

    assert choose_version(group("v1", "v1", "v1beta1", "v1alpha3"), ISTIO_VERSIONS) == "v1"
    assert choose_version(group("v1beta1", "v1beta1", "v1"), ISTIO_VERSIONS) == "v1beta1"  # the server's preference first
    assert choose_version(group("v2", "v2", "v1beta1", "v1alpha3"), ISTIO_VERSIONS) == "v1beta1"  # v2 is not understood
    assert choose_version(group("v2", "v2"), ISTIO_VERSIONS) is None
    assert choose_version({"versions": [{"version": "v1alpha3"}]}, ISTIO_VERSIONS) == "v1alpha3"


@pytest.mark.parametrize(
    ("served", "watched"),
    [(("v1",), "v1"), (("v1beta1",), "v1beta1"), (("v1", "v1beta1", "v1alpha3"), "v1"), (("v2", "v1beta1"), "v1beta1")],
    ids=["v1-only", "v1beta1-only", "all", "preferred-not-understood"],
)
@pytest.mark.asyncio
async def test_istio_kinds_are_watched_at_the_version_the_cluster_serves(served: tuple[str, ...], watched: str) -> None:
    server = ContractServer(served={"networking.istio.io": served})
    await server.start()
    se = service_entry()
    se["apiVersion"] = f"networking.istio.io/{served[0]}"  # created at a served version
    server.apply(se)
    server.apply(destination_rule())
    source, _ = await started(server)
    try:
        assert source.group_versions == {"networking.istio.io": watched, "security.istio.io": "v1"}
        istio = [path for path, _ in server.requests if path.endswith(("/serviceentries", "/destinationrules"))]
        assert istio and all(path.startswith(f"/apis/networking.istio.io/{watched}/") for path in istio)
        assert {f"ServiceEntry {NS}/demo-se", f"DestinationRule {NS}/demo-dr"} <= set(by_ref(source))
        server.apply(service_entry((30001, 30002)))
        await eventually(lambda: sorted(e.ports["tcp-metaprotocol-dubbo"] for e in by_ref(source)[f"ServiceEntry {NS}/demo-se"].spec.endpoints) == [30001, 30002])
    finally:
        await source.close()
        await server.close()


@pytest.mark.asyncio
async def test_istio_installed_later_then_upgraded_to_v1_only() -> None:
    server = ContractServer(served={"networking.istio.io": ()})  # not installed
    await server.start()
    server.apply(metarouter((20, 80)))
    source = new_source(server)
    await source.start(lambda: None)
    try:
        assert await source.wait_synced(5)  # the missing group does not hold the first sync back
        assert set(by_ref(source)) == {f"MetaRouter {NS}/route"} and "networking.istio.io" not in source.group_versions
        server.served["networking.istio.io"] = ("v1beta1", "v1alpha3")  # installed (an older Istio)
        server.apply(service_entry())
        await eventually(lambda: f"ServiceEntry {NS}/demo-se" in by_ref(source))
        assert source.group_versions.get("networking.istio.io") == "v1beta1"
        await eventually(lambda: server.watch_count("serviceentries") == 1 and server.watch_count("destinationrules") == 1)

        server.served["networking.istio.io"] = ("v1",)  # upgraded: v1beta1 no longer served
        server.drop_watches()
        await eventually(lambda: source.group_versions.get("networking.istio.io") == "v1")
        await eventually(lambda: server.watch_count("serviceentries") == 1 and server.watch_count("destinationrules") == 1)
        assert f"ServiceEntry {NS}/demo-se" in by_ref(source)
        for plural in ("serviceentries", "destinationrules"):
            reopened = [path for path, q in server.requests if path.endswith(plural) and parse_bool(q.get("watch", ""))]
            assert reopened[-1] == f"/apis/networking.istio.io/v1/{plural}"
        server.delete("networking.istio.io/v1", "ServiceEntry", NS, "demo-se")
        server.apply(destination_rule())
        await eventually(lambda: f"ServiceEntry {NS}/demo-se" not in by_ref(source) and f"DestinationRule {NS}/demo-dr" in by_ref(source))

        server.served["networking.istio.io"] = ()  # uninstalled: its objects are gone with it
        server.drop_watches()
        await eventually(lambda: f"DestinationRule {NS}/demo-dr" not in by_ref(source))
        assert set(by_ref(source)) == {f"MetaRouter {NS}/route"}
    finally:
        await source.close()
        await server.close()


@pytest.mark.asyncio
async def test_sidecars_are_watched_and_read_by_the_typed_parser(api: ContractServer) -> None:
    """Istio Sidecars scope what each proxy receives: from Kubernetes as from a directory."""
    doc = {"apiVersion": ISTIO_API, "kind": "Sidecar", "metadata": {"name": "default", "namespace": NS},
           "spec": {"egress": [{"hosts": ["./*", "istio-system/*"]}]}}  # fmt: skip
    api.apply(doc)
    source, _ = await started(api)
    try:
        sidecar = by_ref(source)[f"Sidecar {NS}/default"]
        assert not sidecar.problems and list(sidecar.spec.egress[0].hosts) == ["./*", "istio-system/*"]
        bad = {**doc, "metadata": {"name": "bad", "namespace": NS}, "spec": {"egress": [{"hosts": 7}]}}
        api.apply(bad)
        await eventually(lambda: f"Sidecar {NS}/bad" in by_ref(source))
        assert by_ref(source)[f"Sidecar {NS}/bad"].problems  # reported on the object, never served
        api.delete(ISTIO_API, "Sidecar", NS, "default")
        await eventually(lambda: f"Sidecar {NS}/default" not in by_ref(source))
    finally:
        await source.close()
