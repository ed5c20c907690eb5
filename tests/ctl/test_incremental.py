"""The incremental translator equals the whole-world translation after any sequence of edits, and
redoes only the hosts an edit reaches."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from aeraki_ctl.controller import Controller
from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.lifecycle import Ledger
from aeraki_ctl.resources import Resource, ResourceSet, add_object
from aeraki_ctl.translate import Translation, translate
from aeraki_ctl.xds.server import AdsServer
from aeraki_ctl.xds.snapshot import TYPES, SnapshotBuilder, snapshot_of
from metaprotocol.xds import convert

HOSTS = ["a.example", "b.example", "c.example", "d.example"]
NAMESPACES = ["ns1", "ns2"]


def _read(doc: dict[str, Any], source: str = "test") -> Resource:
    out = ResourceSet()
    add_object(doc, source, out)
    assert len(out.resources) == 1, out.problems
    return out.resources[0]


def _meta(name: str, ns: str) -> dict[str, str]:
    return {"name": name, "namespace": ns}


def service_entry(name: str, ns: str, host: str, ports: list[int], protocol: str = "dubbo", bad: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hosts": [host] if host else [],
        "ports": [{"number": p, "name": f"tcp-metaprotocol-{protocol}-{i}", "protocol": "TCP"} for i, p in enumerate(ports)],
        "endpoints": [{"address": "10.0.0.1", "labels": {"version": "v1"}}, {"address": "10.0.0.2", "labels": {"version": "v2"}}],
    }
    if bad:
        spec["nonsense"] = 1
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": _meta(name, ns), "spec": spec}


def destination_rule(name: str, ns: str, host: str, subsets: list[str], hash_key: str = "", bad: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": host, "subsets": [{"name": s, "labels": {"version": s}} for s in subsets]}
    if hash_key:
        spec["trafficPolicy"] = {"loadBalancer": {"consistentHash": {"httpHeaderName": hash_key}}}
    if bad:
        spec["subsets"].append({"labels": {"version": "x"}})  # no name
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule", "metadata": _meta(name, ns), "spec": spec}


def meta_router(name: str, ns: str, host: str, dests: list[tuple[str, str]], rls: str = "", bad: bool = False) -> dict[str, Any]:
    weight = 100 // len(dests) + (7 if bad and len(dests) > 1 else 0)
    route: dict[str, Any] = {"name": "r", "route": [{"destination": {"host": h, **({"subset": s} if s else {})}, "weight": weight} for h, s in dests]}
    spec: dict[str, Any] = {"hosts": [host], "routes": [route]}
    if rls:
        spec["globalRateLimit"] = {"domain": "d", "match": {}, "rateLimitService": f"outbound|9000||{rls}", "descriptors": [{"property": "method", "descriptorKey": "m"}]}
    if bad and len(dests) == 1:
        spec["routes"][0]["weightz"] = 3
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": _meta(name, ns), "spec": spec}


def sidecar(name: str, ns: str, hosts: list[str], selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"egress": [{"hosts": hosts}]}
    if selector:
        spec["workloadSelector"] = {"labels": selector}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": _meta(name, ns), "spec": spec}


def application_protocol(name: str, protocol: str) -> dict[str, Any]:
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol", "metadata": _meta(name, "ns1"),
            "spec": {"protocol": protocol, "codec": "aeraki.meta_protocol.codec.thrift"}}  # fmt: skip


_RULES: list[list[dict[str, Any]]] = [
    [],  # ALLOW: nothing; DENY: no effect
    [{}],  # everything
    [{"when": [{"key": "request.metadata[method]", "values": ["sayHello", "say*"], "notValues": ["*Bye"]}]}],
    [{"from": [{"source": {"principals": ["cluster.local/ns/ns1/sa/x"], "namespaces": ["ns2"]}}, {"source": {"ipBlocks": ["10.0.0.0/8"]}}]}],
    [{"to": [{"operation": {"ports": ["9000"]}}]}, {"when": [{"key": "source.namespace", "values": ["ns*"]}, {"key": "destination.port", "notValues": ["9001"]}]}],
]


def authorization_policy(name: str, ns: str, action: str, selector: dict[str, str] | None, rules: int, target: bool = False, bad: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action, "rules": _RULES[rules]}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if target:
        spec["targetRefs"] = [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": name}]
    if bad:
        spec["rules"] = [*spec["rules"], {"to": [{"operation": {"methods": ["GET"]}}]}]  # HTTP only: an error
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": _meta(name, ns), "spec": spec}


def dubbo_authorization_policy(name: str, ns: str, action: str, bad: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {"to": [{"operation": {"interfaces": ["org.*"], "notMethods": ["sayGoodbye"]}}], "from": [{"source": {"namespaces": ["ns1"]}}]}
    if bad:
        rule["to"][0]["operation"]["paths"] = ["/x"]  # unknown field: a read error
    return {"apiVersion": "dubbo.aeraki.io/v1alpha1", "kind": "DubboAuthorizationPolicy", "metadata": _meta(name, ns), "spec": {"action": action, "rules": [rule]}}


hosts = st.sampled_from(HOSTS)
names = st.sampled_from(["x", "y", "z"])
namespaces = st.sampled_from(NAMESPACES)
subsets = st.sampled_from(["", "v1", "v2", "v2", "v3"])
objects = st.one_of(
    st.builds(service_entry, names, namespaces, st.sampled_from([*HOSTS, ""]), st.lists(st.sampled_from([9000, 9000, 9001, 9002]), min_size=1, max_size=2),
              st.sampled_from(["dubbo", "dubbo", "thrift", "custom"]), st.sampled_from([False, False, True])),
    st.builds(destination_rule, names, namespaces, st.sampled_from([*HOSTS, ""]), st.lists(st.sampled_from(["v1", "v2", "v3"]), max_size=3, unique=True),
              st.sampled_from(["", "", "user"]), st.sampled_from([False, False, True])),
    st.builds(meta_router, names, namespaces, hosts, st.lists(st.tuples(hosts, subsets), min_size=1, max_size=2),
              st.sampled_from(["", "", *HOSTS]), st.sampled_from([False, False, True])),
    st.builds(sidecar, names, namespaces, st.lists(st.sampled_from(["./*", "*/a.example", "ns2/*", "~/*", "bad"]), min_size=1, max_size=2),
              st.sampled_from([None, {"app": "x"}])),
    st.builds(application_protocol, names, st.sampled_from(["custom", "other"])),
    st.builds(authorization_policy, names, st.sampled_from([*NAMESPACES, "base1", "istio-system"]), st.sampled_from(["ALLOW", "DENY", "AUDIT"]),
              st.sampled_from([None, {"version": "v1"}, {"version": "v3"}]), st.integers(0, len(_RULES) - 1), st.sampled_from([False, False, True]),
              st.sampled_from([False, False, True])),
    st.builds(dubbo_authorization_policy, names, st.sampled_from([*NAMESPACES, "istio-system"]), st.sampled_from(["ALLOW", "DENY"]), st.sampled_from([False, False, True])),
)
# An edit: put an object (add or replace by ref), delete the object at an index, or re-read one
# (same content, a new Python object).
edits = st.lists(st.one_of(st.tuples(st.just("put"), objects), st.tuples(st.just("delete"), st.integers(0, 30)), st.tuples(st.just("reread"), st.integers(0, 30))),
                 min_size=6, max_size=30)  # fmt: skip


def apply_edit(current: dict[str, Resource], op: str, arg: Any) -> None:
    """One edit of ``edits`` applied to the objects by ref."""
    if op == "put":
        r = _read(arg, source=f"{arg['kind']}.yaml")
        current[r.ref] = r
    elif current:
        ref = sorted(current)[arg % len(current)]
        if op == "delete":
            del current[ref]
        else:
            old = current[ref]
            current[ref] = Resource(old.kind, old.name, old.namespace, type(old.spec).FromString(old.spec.SerializeToString()), old.source, old.line, old.problems)


def base() -> dict[str, Resource]:
    """Every host served with subsets v1 and v2 (edits then break and mend them)."""
    out: dict[str, Resource] = {}
    for i, host in enumerate(HOSTS):
        for doc in (service_entry("x", f"base{i}", host, [9000]), destination_rule("x", f"base{i}", host, ["v1", "v2"])):
            r = _read(doc)
            out[r.ref] = r
    return out


def _by_object(t: Translation) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in t.problems:
        out.setdefault(p.obj, []).append(str(p))
    return out


def assert_same(incremental: Translation, full: Translation) -> None:
    assert incremental.bootstrap == full.bootstrap
    assert _by_object(incremental) == _by_object(full)  # each object's problems, in order
    assert sorted(map(str, incremental.problems)) == sorted(map(str, full.problems))
    assert [r.ref for r in incremental.sidecars] == [r.ref for r in full.sidecars]


@settings(max_examples=150, deadline=None)
@given(edits)
def test_incremental_equals_full_translation_after_any_edits(steps: list[tuple[str, Any]]) -> None:
    translator, builder = IncrementalTranslator(), SnapshotBuilder()
    current = base()
    for op, arg in steps:
        apply_edit(current, op, arg)
        resources = ResourceSet(list(current.values()))
        full = translate(resources)
        assert_same(translator(resources), full)
        # The snapshot made from the previous one and the redone hosts is the whole snapshot.
        made, whole = builder.build(translator.outputs, translator.take_changes()[0]), snapshot_of(full.bootstrap)
        assert {t: {n: r.version for n, r in made.of(t).items()} for t in TYPES} == {t: {n: r.version for n, r in whole.of(t).items()} for t in TYPES}
        assert made.versions == whole.versions


@settings(max_examples=60, deadline=None)
@given(edits)
def test_the_ledger_serves_the_same_through_either_path(steps: list[tuple[str, Any]]) -> None:
    full, incremental, translator = Ledger(), Ledger(), IncrementalTranslator()
    current = base()
    for op, arg in steps:
        if op == "put":
            r = _read(arg)
            current[r.ref] = r
        elif op == "delete" and current:
            del current[sorted(current)[arg % len(current)]]
        a = full.sync(ResourceSet(list(current.values())), translate)
        b = incremental.sync(ResourceSet(list(current.values())), translator)
        assert_same(b.translation, a.translation)
        assert {k: (s.state, s.problems) for k, s in a.status.items()} == {k: (s.state, s.problems) for k, s in b.status.items()}


def test_an_edit_redoes_only_the_hosts_it_reaches() -> None:
    objects = []
    for i in range(20):
        host = f"svc{i}.example"
        objects += [service_entry(f"se{i}", "ns1", host, [9000]), destination_rule(f"dr{i}", "ns1", host, ["v1", "v2"]),
                    meta_router(f"mr{i}", "ns1", host, [(host, "v1"), (host, "v2")])]  # fmt: skip
    objects.append(meta_router("caller", "ns1", "svc0.example", [("svc0.example", "v1"), ("svc7.example", "v2")]))
    objects.pop(2)  # mr0 is replaced by "caller", which also sends to svc7
    resources = {r.ref: r for r in map(_read, objects)}
    translator = IncrementalTranslator()
    translator(ResourceSet(list(resources.values())))
    assert translator.take_changes() == ({f"svc{i}.example" for i in range(20)}, False)
    before = dict(translator.outputs)
    edited = meta_router("mr3", "ns1", "svc3.example", [("svc3.example", "v1")])
    resources["MetaRouter ns1/mr3"] = _read(edited)
    translator(ResourceSet(list(resources.values())))
    assert translator.take_changes() == ({"svc3.example"}, False)
    assert all(translator.outputs[h] is before[h] for h in before if h != "svc3.example")  # untouched, object for object
    # A DestinationRule of svc7 loses subset v2: svc7 and the host whose routes name it are redone.
    resources["DestinationRule ns1/dr7"] = _read(destination_rule("dr7", "ns1", "svc7.example", ["v1"]))
    result = translator(ResourceSet(list(resources.values())))
    assert translator.take_changes() == ({"svc7.example", "svc0.example"}, False)
    assert any("unknown subset 'v2' of svc7.example" in p.reason for p in result.problems if p.obj == "MetaRouter ns1/caller")
    assert_same(result, translate(ResourceSet(list(resources.values()))))
    assert translator.full_passes == 1


@pytest.mark.asyncio
async def test_the_controller_rereads_and_retranslates_only_what_changed(tmp_path: Path) -> None:
    for i in range(5):
        host = f"svc{i}.example"
        docs = [service_entry(f"se{i}", "ns1", host, [9000 + i]), destination_rule(f"dr{i}", "ns1", host, ["v1", "v2"]),
                meta_router(f"mr{i}", "ns1", host, [(host, "v1"), (host, "v2")])]  # fmt: skip
        (tmp_path / f"svc{i}.yaml").write_text(yaml.safe_dump_all(docs))
    ads = AdsServer()
    controller = Controller(tmp_path, ads)
    await controller.sync()
    first = {r.ref: r for r in controller.resources().resources}
    assert controller.translator.retranslated == 5 and len(ads.snapshot.of(convert.ROUTE_TYPE)) == 5
    edited = [service_entry("se3", "ns1", "svc3.example", [9003]), destination_rule("dr3", "ns1", "svc3.example", ["v1", "v2"]),
              meta_router("mr3", "ns1", "svc3.example", [("svc3.example", "v1")])]  # fmt: skip
    path = tmp_path / "svc3.yaml"
    path.write_text(yaml.safe_dump_all(edited))
    os.utime(path, ns=(path.stat().st_mtime_ns + 1_000_000, path.stat().st_mtime_ns + 1_000_000))
    before = ads.snapshot
    await controller.sync()
    again = {r.ref: r for r in controller.resources().resources}
    assert [ref for ref in first if again[ref] is not first[ref]] == ["ServiceEntry ns1/se3", "DestinationRule ns1/dr3", "MetaRouter ns1/mr3"]
    assert controller.translator.retranslated == 6  # svc3 only
    assert ads.snapshot.changed == {convert.LISTENER_TYPE: frozenset(), convert.ROUTE_TYPE: {"svc3.example_9003"},
                                    convert.CLUSTER_TYPE: frozenset(), convert.ENDPOINT_TYPE: frozenset()}  # fmt: skip
    unchanged = "outbound|9001|v1|svc1.example"
    assert ads.snapshot.of(convert.CLUSTER_TYPE)[unchanged] is before.of(convert.CLUSTER_TYPE)[unchanged]  # the same packed resource
