"""MetaRouter status written back, and leader election on a Lease, against the contract server
(tests/k8s_contract.py) through the real client library (kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from aeraki_ctl.admin import AdminServer
from aeraki_ctl.controller import Controller
from aeraki_ctl.k8s_status import LeaderElector, StatusWriter, condition_of
from aeraki_ctl.lifecycle import ACCEPTED, REJECTED, SERVING_LAST_VALID, ObjectStatus
from aeraki_ctl.sources.kubernetes import KubernetesSource
from aeraki_ctl.xds.server import ENVOY, AdsServer
from tests.ctl.test_kubernetes import NS, destination_rule, eventually, metarouter, service_entry
from tests.k8s_contract import ContractServer

pytest.importorskip("kubernetes_asyncio")
from kubernetes_asyncio import client  # noqa: E402

MR = ("/apis/metaprotocol.aeraki.io/v1alpha1", "metarouters")
LEASE = ("/apis/coordination.k8s.io/v1", "leases")
LEASE_NS = "aeraki"


@pytest_asyncio.fixture
async def api() -> AsyncIterator[ContractServer]:
    server = ContractServer()
    await server.start()
    yield server
    await server.close()


def new_client(server: ContractServer) -> Any:
    return client.ApiClient(client.Configuration(host=server.url))


def stored(server: ContractServer, name: str = "route") -> dict[str, Any]:
    return server.objects[(MR, NS, name)]


def accepted(server: ContractServer, name: str = "route") -> dict[str, Any] | None:
    conditions = (stored(server, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Accepted"), None)


def status_writes(server: ContractServer, name: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    return [w for w in server.writes if w[1].endswith("/status") and (name is None or f"/metarouters/{name}/" in w[1])]


def bad_metarouter(name: str = "route") -> dict[str, Any]:
    bad = metarouter((20, 80), name=name)
    bad["spec"]["routes"][0]["route"][0]["weight"] = "heavy"
    return bad


# -- the contract server's status subresource and Leases, through the client ----------------------


@pytest.mark.asyncio
async def test_contract_status_subresource_put_and_merge_patch(api: ContractServer) -> None:
    api.apply(metarouter((20, 80)))
    before = json.loads(json.dumps(stored(api)))
    c = new_client(api)
    objects = client.CustomObjectsApi(c)
    try:
        body = {"metadata": {"name": "route", "resourceVersion": before["metadata"]["resourceVersion"]}, "spec": {"hosts": ["changed"]}, "status": {"x": 1}}
        answer = await objects.replace_namespaced_custom_object_status("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route", body)
        after = stored(api)
        assert answer["status"] == {"x": 1} and after["status"] == {"x": 1}
        assert after["spec"] == before["spec"]  # a status write never changes the spec
        assert after["metadata"]["generation"] == before["metadata"]["generation"]
        assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
        # a stale resourceVersion: 409 Conflict, a Status object
        response = await objects.replace_namespaced_custom_object_status("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route", body, _preload_content=False)
        assert response.status == 409
        assert (await response.json())["reason"] == "Conflict"
        # merge patch: only with its media type
        response = await objects.patch_namespaced_custom_object_status("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route", {"status": {"y": 2}}, _preload_content=False)
        assert response.status == 415  # the client's default content type for a dict is strategic merge
        await objects.patch_namespaced_custom_object_status(
            "metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route", {"status": {"y": 2, "x": None}}, _content_type="application/merge-patch+json"
        )
        assert stored(api)["status"] == {"y": 2}
        # a no-op write: no new version
        rv = stored(api)["metadata"]["resourceVersion"]
        await objects.patch_namespaced_custom_object_status("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route", {"status": {"y": 2}}, _content_type="application/merge-patch+json")
        assert stored(api)["metadata"]["resourceVersion"] == rv
        # a spec change bumps the generation
        api.apply(metarouter((50, 50)))
        assert stored(api)["metadata"]["generation"] == before["metadata"]["generation"] + 1
        missing = await objects.get_namespaced_custom_object("metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "nope", _preload_content=False)
        assert missing.status == 404
    finally:
        await c.close()


@pytest.mark.asyncio
async def test_contract_leases_get_create_update(api: ContractServer) -> None:
    c = new_client(api)
    leases = client.CoordinationV1Api(c)
    try:
        response = await leases.read_namespaced_lease("l", LEASE_NS, _preload_content=False)
        assert response.status == 404
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
        created = await leases.create_namespaced_lease(LEASE_NS, body)
        assert created.spec.holder_identity == "a"
        again = await leases.create_namespaced_lease(LEASE_NS, body, _preload_content=False)
        assert again.status == 409 and (await again.json())["reason"] == "AlreadyExists"
        rv = created.metadata.resource_version
        update = {"metadata": {"name": "l", "resourceVersion": rv}, "spec": {"holderIdentity": "b", "leaseDurationSeconds": 15}}
        updated = await leases.replace_namespaced_lease("l", LEASE_NS, update)
        assert updated.spec.holder_identity == "b" and updated.metadata.resource_version != rv
        stale = await leases.replace_namespaced_lease("l", LEASE_NS, update, _preload_content=False)
        assert stale.status == 409 and (await stale.json())["reason"] == "Conflict"
        absent = await leases.replace_namespaced_lease("m", LEASE_NS, {"metadata": {"name": "m"}, "spec": {}}, _preload_content=False)
        assert absent.status == 404
        assert (await leases.read_namespaced_lease("l", LEASE_NS)).spec.holder_identity == "b"
    finally:
        await c.close()


# -- the status writer -------------------------------------------------------------------------------


def test_condition_of_the_lifecycle_states() -> None:
    ok = condition_of(ObjectStatus("MetaRouter a/b", "k8s://a/MetaRouter/b", ACCEPTED), 3)
    assert ok == {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "accepted", "observedGeneration": 3}
    last = condition_of(ObjectStatus("r", "s", SERVING_LAST_VALID, ["weight: bad", "x"]), 4)
    assert (last["status"], last["reason"], last["message"]) == ("False", "ServingLastValid", "weight: bad; x")
    never = condition_of(ObjectStatus("r", "s", REJECTED, ["p" * 5000]), 1)
    assert (never["status"], never["reason"]) == ("False", "Invalid") and len(never["message"]) == 1024 and never["message"].endswith("...")


class Replica:
    """One aeraki-ctl replica: the Kubernetes source, the controller, the elector and the writer,
    wired as ``serve --kubernetes`` wires them."""

    def __init__(self, server: ContractServer, identity: str, lease_duration: int = 1, retry: float = 0.1) -> None:
        self.source = KubernetesSource(new_client(server), backoff=0.05, max_backoff=0.2)
        self.controller = Controller(None, AdsServer(), quiet=0.05, sources=[self.source])
        self.elector = LeaderElector(new_client(server), LEASE_NS, identity=identity, lease_duration=lease_duration, retry_period=retry)
        self.writer = StatusWriter(self.source.api_client, self.source.cache, lambda: self.elector.is_leader)
        self.elector.on_change(lambda leading: self.writer.wake() if leading else None)
        self.controller.on_sync.append(self.writer.observe)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self, elect: bool = True) -> Replica:
        self.tasks.append(asyncio.ensure_future(self.writer.run()))
        self.tasks.append(asyncio.ensure_future(self.controller.run()))
        if elect:
            self.elector.start()
        return self

    async def stop(self, release: bool = True) -> None:
        await self.elector.stop(release=release)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.elector.api_client.close()


@pytest_asyncio.fixture
async def world(api: ContractServer) -> ContractServer:
    api.apply(service_entry())
    api.apply(destination_rule())
    return api


@pytest.mark.asyncio
async def test_status_of_an_accepted_an_invalid_then_fixed_and_a_never_valid_metarouter(world: ContractServer) -> None:
    api = world
    api.apply(metarouter((20, 80)))
    api.apply(bad_metarouter("broken"))
    replica = await Replica(api, "a").start()
    try:
        await eventually(lambda: accepted(api) is not None and accepted(api, "broken") is not None)
        ok = accepted(api)
        assert ok is not None
        assert (ok["status"], ok["reason"], ok["observedGeneration"]) == ("True", "Accepted", 1)
        first_transition = ok["lastTransitionTime"]
        never = accepted(api, "broken")
        assert never is not None
        assert (never["status"], never["reason"]) == ("False", "Invalid") and "weight" in never["message"]
        assert stored(api)["spec"] == metarouter((20, 80))["spec"]  # the spec is untouched

        api.apply(bad_metarouter())  # generation 2, invalid: the last valid version serves
        await eventually(lambda: (accepted(api) or {}).get("observedGeneration") == 2)
        bad = accepted(api)
        assert bad is not None
        assert (bad["status"], bad["reason"]) == ("False", "ServingLastValid") and "weight" in bad["message"]
        assert replica.controller.objects[f"MetaRouter {NS}/route"].state == SERVING_LAST_VALID

        api.apply(metarouter((50, 50)))  # generation 3, fixed
        await eventually(lambda: (accepted(api) or {}).get("observedGeneration") == 3)
        fixed = accepted(api)
        assert fixed is not None
        assert (fixed["status"], fixed["reason"]) == ("True", "Accepted")
        assert stored(api)["metadata"]["generation"] == 3
        assert first_transition  # an RFC 3339 time was set

        # nothing changed: no more writes, even though our own writes came back as MODIFIED events
        await asyncio.sleep(0.5)
        count = len(status_writes(api))
        replica.controller.ledger  # noqa: B018 - (a sync with nothing changed)
        await replica.controller.sync()
        await asyncio.sleep(0.3)
        assert len(status_writes(api)) == count
        assert len(status_writes(api, "broken")) == 1  # written once, never again
        assert len(status_writes(api, "route")) == 3  # Accepted, ServingLastValid, Accepted
    finally:
        await replica.stop()


@pytest.mark.asyncio
async def test_last_transition_time_changes_only_when_the_status_flips(world: ContractServer) -> None:
    api = world
    api.apply(bad_metarouter())
    replica = await Replica(api, "a").start()
    try:
        await eventually(lambda: accepted(api) is not None)
        first = accepted(api)
        assert first is not None
        bad2 = bad_metarouter()
        bad2["spec"]["routes"][0]["route"][1]["weight"] = "heavier"
        await asyncio.sleep(1.1)  # lastTransitionTime has a one-second resolution
        api.apply(bad2)
        await eventually(lambda: (accepted(api) or {}).get("observedGeneration") == 2)
        second = accepted(api)
        assert second is not None
        assert second["lastTransitionTime"] == first["lastTransitionTime"]  # still False
        api.apply(metarouter((50, 50)))
        await eventually(lambda: (accepted(api) or {}).get("status") == "True")
        third = accepted(api)
        assert third is not None and third["lastTransitionTime"] != first["lastTransitionTime"]
    finally:
        await replica.stop()


@pytest.mark.asyncio
async def test_a_conflict_is_retried_after_reading_again(world: ContractServer) -> None:
    api = world
    api.apply(metarouter((20, 80)))
    api.conflicts = 2  # the next two checked writes lose a race
    replica = await Replica(api, "a").start()
    try:
        await eventually(lambda: accepted(api) is not None)
        assert replica.writer.conflicts >= 1
        assert any(path.endswith("/metarouters/route") for path, _ in api.requests)  # read again
        assert (accepted(api) or {}).get("status") == "True"
    finally:
        await replica.stop()


@pytest.mark.asyncio
async def test_another_writer_overwriting_the_status_is_corrected_on_the_next_sync(world: ContractServer) -> None:
    api = world
    api.apply(metarouter((20, 80)))
    replica = await Replica(api, "a").start()
    try:
        await eventually(lambda: accepted(api) is not None)
        c = new_client(api)
        try:  # someone else's status write
            await client.CustomObjectsApi(c).patch_namespaced_custom_object_status(
                "metaprotocol.aeraki.io", "v1alpha1", NS, "metarouters", "route",
                {"status": {"conditions": [{"type": "Accepted", "status": "False", "reason": "Whatever", "message": "x"}]}},
                _content_type="application/merge-patch+json",
            )  # fmt: skip
        finally:
            await c.close()
        assert (accepted(api) or {}).get("reason") == "Whatever"
        await eventually(lambda: replica.source.cache[("MetaRouter", NS, "route")].get("status", {}).get("conditions", [{}])[0].get("reason") == "Whatever")
        await replica.controller.sync()
        await eventually(lambda: (accepted(api) or {}).get("status") == "True")
    finally:
        await replica.stop()


# -- leader election ---------------------------------------------------------------------------------


def lease(server: ContractServer) -> dict[str, Any]:
    return server.objects[(LEASE, LEASE_NS, "aeraki-ctl")]


@pytest.mark.asyncio
async def test_one_replica_leads_the_other_takes_over_after_expiry_or_release(world: ContractServer) -> None:
    api = world
    api.apply(metarouter((20, 80)))
    a = await Replica(api, "a").start()
    await eventually(lambda: a.elector.is_leader)
    b = await Replica(api, "b").start()
    try:
        await eventually(lambda: accepted(api) is not None)
        await asyncio.sleep(0.5)
        assert a.elector.is_leader and not b.elector.is_leader and b.elector.holder == "a"
        assert lease(api)["spec"]["holderIdentity"] == "a"
        assert b.controller.objects  # the follower serves too (it synced)

        # only the leader writes
        b_before = b.writer.writes
        api.apply(bad_metarouter())
        await eventually(lambda: (accepted(api) or {}).get("reason") == "ServingLastValid")
        await eventually(lambda: b.controller.objects[f"MetaRouter {NS}/route"].state == SERVING_LAST_VALID)
        await asyncio.sleep(0.2)
        assert b.writer.writes == b_before == 0 and a.writer.writes == 2

        # a stops renewing (a crash: no release): b takes over only after the Lease expired
        renewed = lease(api)["spec"]["renewTime"]
        await a.stop(release=False)
        await asyncio.sleep(0.5)
        assert not b.elector.is_leader  # not expired yet (1 s)
        await eventually(lambda: b.elector.is_leader, timeout=5)
        spec = lease(api)["spec"]
        assert spec["holderIdentity"] == "b" and spec["renewTime"] != renewed and spec["leaseTransitions"] == 1

        api.apply(metarouter((50, 50)))
        await eventually(lambda: (accepted(api) or {}).get("observedGeneration") == 3)
        await eventually(lambda: b.writer.writes >= 1)  # the server may show the write before b counts it
        assert b.writer.writes == 1

        # b releases on shutdown: a new replica takes over at once, not after expiry
        c = await Replica(api, "c", lease_duration=30).start()
        await asyncio.sleep(0.3)
        assert not c.elector.is_leader
        await b.stop(release=True)
        assert "holderIdentity" not in lease(api)["spec"]
        await eventually(lambda: c.elector.is_leader, timeout=2)
        await c.stop()
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.asyncio
async def test_two_electors_racing_for_a_new_lease_get_one_leader(api: ContractServer) -> None:
    electors = [LeaderElector(new_client(api), LEASE_NS, identity=f"r{i}", lease_duration=5, retry_period=0.05) for i in range(4)]
    try:
        results = await asyncio.gather(*(e.try_once() for e in electors))
        assert sum(results) == 1
        for _ in range(3):
            results = await asyncio.gather(*(e.try_once() for e in electors))
            assert sum(results) == 1
        leader = next(e for e in electors if e.is_leader)
        assert lease(api)["spec"]["holderIdentity"] == leader.identity
    finally:
        for e in electors:
            await e.api_client.close()


@pytest.mark.asyncio
async def test_leadership_in_the_admin_status_and_metrics(api: ContractServer) -> None:
    elector = LeaderElector(new_client(api), LEASE_NS, identity="solo", lease_duration=5)
    try:
        admin = AdminServer(AdsServer(), status_provider=lambda: {"objects": {}, "leader_election": elector.status()})
        assert 'aeraki_ctl_leader{lease="aeraki/aeraki-ctl"} 0' in admin.metrics_text()
        assert await elector.try_once()
        assert 'aeraki_ctl_leader{lease="aeraki/aeraki-ctl"} 1' in admin.metrics_text()
        _, _, body = admin.respond("/status")
        assert json.loads(body)["leader_election"]["leader"] is True
        assert await elector.release()
        assert 'aeraki_ctl_leader{lease="aeraki/aeraki-ctl"} 0' in admin.metrics_text()
    finally:
        await elector.api_client.close()


def test_serve_lease_flags_go_with_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    from aeraki_ctl import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--config-dir", ".", "--lease-namespace", "x"])
    assert exc.value.code == 2
    assert "--lease-namespace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", "--kubernetes", "--lease-duration", "0"])


def test_identity_and_namespace_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from aeraki_ctl.k8s_status import default_identity, default_lease_namespace

    monkeypatch.setenv("POD_NAME", "aeraki-ctl-7d9-x")
    monkeypatch.setenv("POD_NAMESPACE", "mesh")
    assert default_identity() == f"aeraki-ctl-7d9-x_{os.getpid()}" and default_lease_namespace() == "mesh"
    monkeypatch.delenv("POD_NAMESPACE")
    assert default_lease_namespace() == "aeraki"


def envoy_condition(server: ContractServer, name: str = "route") -> dict[str, Any] | None:
    conditions = (stored(server, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "EnvoyAccepted"), None)


@pytest.mark.asyncio
async def test_once_envoy_nodes_are_served_the_metarouter_says_what_they_get(world: ContractServer) -> None:
    api = world
    api.apply(metarouter((20, 80)))
    replica = await Replica(api, "a").start()
    try:
        await eventually(lambda: accepted(api) is not None)
        assert envoy_condition(api) is None  # no Envoy node yet: nothing said about Envoy
        for hook in replica.controller.ads.on_data_plane:
            hook(ENVOY)  # what the ADS server does when the first Envoy node connects
        await eventually(lambda: envoy_condition(api) is not None)
        first = envoy_condition(api)
        assert first is not None and (first["status"], first["reason"]) == ("True", "Translated")

        mirrored = metarouter((20, 80))
        mirrored["spec"]["routes"][0]["mirror"] = {"host": mirrored["spec"]["hosts"][0], "subset": "v1"}
        api.apply(mirrored)  # dubbo_proxy serves it without the mirror
        await eventually(lambda: (envoy_condition(api) or {}).get("reason") == "Approximated")
        approximated = envoy_condition(api)
        assert approximated is not None and approximated["status"] == "True" and "spec.routes[0].mirror" in approximated["message"]

        mutated = metarouter((50, 50))
        mutated["spec"]["routes"][0]["requestMutation"] = [{"key": "x-mesh", "value": "1"}]
        api.apply(mutated)  # our proxy serves it; dubbo_proxy cannot: Envoy keeps the last one
        await eventually(lambda: (envoy_condition(api) or {}).get("reason") == "ServingLastTranslatable")
        kept = envoy_condition(api)
        assert kept is not None and kept["status"] == "False" and "requestMutation" in kept["message"] and kept["observedGeneration"] == 3
        ok = accepted(api)
        assert ok is not None and (ok["status"], ok["reason"], ok["observedGeneration"]) == ("True", "Accepted", 3)
        assert replica.controller.status()["objects"][f"MetaRouter {NS}/route"]["envoy"]["state"] == "serving-last-translatable"  # type: ignore[index]
    finally:
        await replica.stop()
    # A restarted aeraki-ctl that serves no Envoy node (yet) says nothing about Envoy: the condition goes.
    again = await Replica(api, "b").start()
    try:
        await eventually(lambda: envoy_condition(api) is None)
        ok = accepted(api)
        assert ok is not None and ok["status"] == "True"
    finally:
        await again.stop()
