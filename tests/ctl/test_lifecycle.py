"""A bad object never moves live traffic: the controller's per-object last-valid rules."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from aeraki_ctl.lifecycle import ACCEPTED, REJECTED, SERVING_LAST_VALID, Ledger
from aeraki_ctl.resources import ResourceSet, load_text
from aeraki_ctl.translate import translate
from metaprotocol.config.model import Bootstrap


def _service(i: int, port: int) -> list[dict[str, Any]]:
    host = f"svc{i}.example"
    return [
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry", "metadata": {"name": f"se{i}", "namespace": "ns"},
         "spec": {"hosts": [host], "ports": [{"number": port, "name": "tcp-metaprotocol-dubbo", "protocol": "TCP"}], "resolution": "STATIC",
                  "endpoints": [{"address": "127.0.0.1", "ports": {"tcp-metaprotocol-dubbo": port + 1}, "labels": {"version": "v1"}},
                                {"address": "127.0.0.1", "ports": {"tcp-metaprotocol-dubbo": port + 2}, "labels": {"version": "v2"}}]}},
        {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule", "metadata": {"name": f"dr{i}", "namespace": "ns"},
         "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}},
        {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": f"mr{i}", "namespace": "ns"},
         "spec": {"hosts": [host], "routes": [{"name": "split", "match": {"attributes": {"method": {"exact": "sayHello"}}},
                  "route": [{"destination": {"host": host, "subset": "v1"}, "weight": 20 + i},
                            {"destination": {"host": host, "subset": "v2"}, "weight": 80 - i}]}]}},
    ]  # fmt: skip


def _policy(i: int) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": {"name": f"ap{i}", "namespace": "ns"},
            "spec": {"action": "DENY", "targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": f"se{i}"}],
                     "rules": [{"when": [{"key": "request.metadata[method]", "values": [f"reboot{i}"]}]}]}}  # fmt: skip


def _load(files: dict[str, str]) -> ResourceSet:
    out = ResourceSet()
    for name in sorted(files):
        load_text(files[name], name, out)
    return out


def _files(objects: list[dict[str, Any]]) -> dict[str, str]:
    """One file per object, named after it (a GitOps layout)."""
    return {f"{o['kind']}-{o['metadata']['name']}.yaml": yaml.safe_dump(o) for o in objects}


def _sync(ledger: Ledger, files: dict[str, str]) -> tuple[Bootstrap, dict[str, str]]:
    result = ledger.sync(_load(files), translate)
    return result.translation.bootstrap, {ref: s.state for ref, s in result.status.items()}


def test_a_bad_edit_to_one_metarouter_serves_its_last_valid_version_and_nothing_moves() -> None:
    objects = _service(0, 20880) + _service(1, 20890)
    ledger = Ledger()
    before, states = _sync(ledger, _files(objects))
    assert set(states.values()) == {ACCEPTED}
    bad = copy.deepcopy(objects)
    bad[2]["spec"]["routes"][0]["route"][0]["destination"]["subset"] = "no-such-subset"  # mr0
    after, states = _sync(ledger, _files(bad))
    assert after == before  # mr0's routes are exactly as they were: no fail-open to a default route
    assert states["MetaRouter ns/mr0"] == SERVING_LAST_VALID
    assert states["MetaRouter ns/mr1"] == ACCEPTED
    # A later valid edit (of another object, and of mr0 itself) is applied.
    good = copy.deepcopy(objects)
    good[5]["spec"]["routes"][0]["route"][0]["weight"] = 50
    good[5]["spec"]["routes"][0]["route"][1]["weight"] = 50
    good[2]["spec"]["routes"][0]["route"][0]["weight"] = 100
    del good[2]["spec"]["routes"][0]["route"][1]
    after, states = _sync(ledger, _files(good))
    assert after != before and set(states.values()) == {ACCEPTED}
    weights = {r.name: [(w.name, w.weight) for w in r.route_config.routes[0].action.weighted_clusters] for r in after.listeners if r.route_config}  # type: ignore[union-attr]
    assert weights["svc1.example_20890"] == [("outbound|20890|v1|svc1.example", 50), ("outbound|20890|v2|svc1.example", 50)]


def test_a_never_valid_object_is_not_served_at_all() -> None:
    objects = _service(0, 20880)
    ledger = Ledger()
    base_objects = objects[:2]  # no MetaRouter yet: the default route
    before, _ = _sync(ledger, _files(base_objects))
    broken = copy.deepcopy(objects[2])
    broken["spec"]["routes"][0]["match"]["attributes"]["method"] = {"regex": "("}  # does not compile
    after, states = _sync(ledger, _files([*base_objects, broken]))
    assert after == before
    assert states["MetaRouter ns/mr0"] == REJECTED


def test_a_half_written_file_changes_nothing_and_its_objects_keep_serving() -> None:
    objects = _service(0, 20880) + _service(1, 20890)
    files = _files(objects)
    ledger = Ledger()
    before, _ = _sync(ledger, files)
    name = "MetaRouter-mr1.yaml"
    half = dict(files)
    half[name] = files[name][: len(files[name]) // 2] + "\n  - [unclosed"  # an editor saving mid-write
    after, states = _sync(ledger, half)
    assert after == before
    assert states["MetaRouter ns/mr1"] == SERVING_LAST_VALID
    gone = {k: v for k, v in files.items() if k != name}  # a real deletion is applied
    after, states = _sync(ledger, gone)
    assert "MetaRouter ns/mr1" not in states
    assert after != before


_CORRUPTIONS = (
    ("weight", lambda o: o["spec"]["routes"][0]["route"][0].__setitem__("weight", -5) if o["kind"] == "MetaRouter" else None),
    ("subset", lambda o: o["spec"]["routes"][0]["route"][0]["destination"].__setitem__("subset", "nope") if o["kind"] == "MetaRouter" else None),
    ("spec", lambda o: o.__setitem__("spec", "not a mapping")),
    ("hosts", lambda o: o["spec"].__setitem__("hosts", ["nowhere.example"]) if o["kind"] == "MetaRouter" else None),
    ("endpoint-port", lambda o: o["spec"]["endpoints"][0]["ports"].__setitem__("tcp-metaprotocol-dubbo", "2088x") if o["kind"] == "ServiceEntry" else None),
    ("labels", lambda o: o["spec"]["endpoints"][0].__setitem__("labels", ["v1"]) if o["kind"] == "ServiceEntry" else None),
    ("typo", lambda o: o["spec"]["routes"][0]["route"][0].__setitem__("wieght", 5) if o["kind"] == "MetaRouter" else None),
    ("lb", lambda o: o["spec"].__setitem__("trafficPolicy", {"loadBalancer": {"simple": "NO_SUCH_POLICY"}}) if o["kind"] == "DestinationRule" else None),
    ("authz-http-only", lambda o: o["spec"]["rules"][0].__setitem__("to", [{"operation": {"methods": ["GET"]}}]) if o["kind"] == "AuthorizationPolicy" else None),
    ("authz-custom", lambda o: o["spec"].__setitem__("action", "CUSTOM") if o["kind"] == "AuthorizationPolicy" else None),
)


@given(
    services=st.integers(min_value=1, max_value=4),
    victim=st.integers(min_value=0, max_value=15),
    corruption=st.sampled_from([name for name, _ in _CORRUPTIONS]),
)
def test_corrupting_one_object_changes_nothing_that_is_served(services: int, victim: int, corruption: str) -> None:
    objects = [o for i in range(services) for o in [*_service(i, 20000 + 10 * i), _policy(i)]]
    ledger = Ledger()
    before, _ = _sync(ledger, _files(objects))
    assert all(lst.rbac for lst in before.listeners)
    bad = copy.deepcopy(objects)
    target = bad[victim % len(bad)]
    dict(_CORRUPTIONS)[corruption](target)
    after, states = _sync(ledger, _files(bad))
    assert after == before
    changed = target != objects[victim % len(bad)]
    ref = f"{target['kind']} ns/{target['metadata']['name']}"
    if changed and states[ref] != ACCEPTED:
        assert states[ref] == SERVING_LAST_VALID
    assert all(state == ACCEPTED for r, state in states.items() if r != ref)
