"""Istio's Sidecar: its proto is Istio's, it is checked with every problem, it applies to a proxy
by Istio's precedence, and a proxy's namespace and labels come from its node metadata."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from aeraki_ctl.resources import Resource, ResourceSet, add_object
from aeraki_ctl.sidecar import ScopeRules, node_identity
from aeraki_ctl.translate import translate
from metaprotocol.xds.client import node_metadata
from metaprotocol_api.istio.networking.v1alpha3 import sidecar_pb2


def _read(doc: dict[str, Any]) -> Resource:
    out = ResourceSet()
    add_object(doc, "test", out)
    assert out.resources and not out.resources[0].rejected
    return out.resources[0]


def sidecar(ns: str, hosts: list[str]) -> Resource:
    return _read(_sidecar_doc(ns, hosts))


def test_field_numbers_are_istios() -> None:
    fields = {d.name: {f.name: f.number for f in d.fields} for d in (sidecar_pb2.Sidecar.DESCRIPTOR, sidecar_pb2.IstioEgressListener.DESCRIPTOR,
                                                                     sidecar_pb2.IstioIngressListener.DESCRIPTOR, sidecar_pb2.SidecarPort.DESCRIPTOR)}  # fmt: skip
    assert sidecar_pb2.Sidecar.DESCRIPTOR.full_name == "istio.networking.v1alpha3.Sidecar"
    assert fields == {
        "Sidecar": {"workload_selector": 1, "ingress": 2, "egress": 3, "inbound_connection_pool": 7, "outbound_traffic_policy": 4},
        "IstioEgressListener": {"port": 1, "bind": 2, "capture_mode": 3, "hosts": 4},
        "IstioIngressListener": {"port": 1, "bind": 2, "capture_mode": 3, "default_endpoint": 4, "tls": 7, "connection_pool": 8},
        "SidecarPort": {"number": 1, "protocol": 2, "name": 3, "target_port": 4},
    }


def test_node_identity_as_istio_sidecars_send_it() -> None:
    meta = struct_pb2.Struct()
    meta.update(node_metadata({"NAMESPACE": "shop", "LABELS": '{"app": "cart", "version": "v2"}'}))
    assert node_identity("x", json_format.MessageToDict(meta)) == ("shop", {"app": "cart", "version": "v2"})
    assert node_identity("sidecar~10.0.0.1~cart-7d9.shop~shop.svc.cluster.local", {}) == ("shop", {})
    assert node_identity("plain", {"LABELS": "app=cart,tier=web"}) == ("", {"app": "cart", "tier": "web"})
    with pytest.raises(ValueError, match="LABELS"):
        node_metadata({"LABELS": "{not json"})


def test_scope_rules_follow_istio_precedence() -> None:
    selected = _read({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "cart", "namespace": "shop"},
                      "spec": {"workloadSelector": {"labels": {"app": "cart"}}, "egress": [{"port": {"number": 9001}, "hosts": ["*/svc1.shared.example"]}]}})  # fmt: skip
    rules = ScopeRules([selected, sidecar("shop", ["./*"]), sidecar("istio-system", ["./*", "istio-system/*"])])
    cart, web, other = rules.scope_of("shop", {"app": "cart"}), rules.scope_of("shop", {"app": "web"}), rules.scope_of("blog", {})
    assert cart is not None and cart.ref == "Sidecar shop/cart"
    assert cart.sees("shared", "svc1.shared.example", 9001) and not cart.sees("shared", "svc1.shared.example", 9000)
    assert web is not None and web.sees("shop", "a.example", 1) and not web.sees("blog", "a.example", 1)
    assert other is not None and other.ref == "Sidecar istio-system/default" and other.sees("blog", "a.example", 1)  # "." is the proxy's namespace
    assert ScopeRules().scope_of("shop", {}) is None


def test_sidecars_are_checked_with_every_problem() -> None:
    bad = ResourceSet()
    add_object({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": {"name": "bad", "namespace": "shop"},
                "spec": {"workloadSelector": {"labels": {"app": "x"}}, "ingress": [{"port": {"number": 80}}],
                         "egress": [{"hosts": ["no-slash", "Bad_NS/*", "./bad host"]}, {"port": {"number": 70000}, "hosts": []}, {"hosts": ["*/*"]}]}},
               "sidecar.yaml", bad)  # fmt: skip
    second = [sidecar("shop", ["./*"]), _read({**_sidecar_doc("shop", ["*/*"]), "metadata": {"name": "zz", "namespace": "shop"}})]
    result = translate(ResourceSet(bad.resources + second))
    found = {(p.obj, p.path, p.fatal) for p in result.problems}
    assert {("Sidecar shop/bad", "spec.egress[0].hosts[0]", True), ("Sidecar shop/bad", "spec.egress[0].hosts[1]", True),
            ("Sidecar shop/bad", "spec.egress[0].hosts[2]", True), ("Sidecar shop/bad", "spec.egress[1].hosts", True),
            ("Sidecar shop/bad", "spec.egress[1].port.number", True), ("Sidecar shop/bad", "spec.egress[2].port", True),
            ("Sidecar shop/bad", "spec.ingress", False), ("Sidecar shop/zz", "spec.workloadSelector", True)} <= found  # fmt: skip
    assert [r.ref for r in result.sidecars] == ["Sidecar shop/default"]


def _sidecar_doc(ns: str, hosts: list[str]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Sidecar", "metadata": {"name": "default", "namespace": ns}, "spec": {"egress": [{"hosts": hosts}]}}
