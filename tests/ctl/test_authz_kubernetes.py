"""Authorization policies from Kubernetes (the contract server): Istio's AuthorizationPolicy at the
security.istio.io version the cluster serves (v1, else v1beta1) and Aeraki's
DubboAuthorizationPolicy, selecting a Kubernetes Service's listener by its Pods' labels."""

from __future__ import annotations

from typing import Any

import pytest

from aeraki_ctl.resources import ResourceSet
from aeraki_ctl.translate import translate
from metaprotocol.config.model import RbacAction
from metaprotocol.proxy.rbac import RbacStage
from tests.ctl.test_kubernetes import NS, by_ref, endpoint_slice, eventually, k8s_service, pod, started
from tests.k8s_contract import ContractServer

pytest.importorskip("kubernetes_asyncio")


def authorization_policy(version: str, values: list[str], selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": values}]}]}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": f"security.istio.io/{version}", "kind": "AuthorizationPolicy", "metadata": {"name": "deny", "namespace": NS}, "spec": spec}


def dubbo_policy() -> dict[str, Any]:
    return {"apiVersion": "dubbo.aeraki.io/v1alpha1", "kind": "DubboAuthorizationPolicy", "metadata": {"name": "only-demo", "namespace": NS},
            "spec": {"action": "ALLOW", "rules": [{"to": [{"operation": {"interfaces": ["org.apache.*"]}}]}]}}  # fmt: skip


def denied_methods(resources: ResourceSet, methods: list[str]) -> set[str]:
    t = translate(resources)
    assert not t.errors, [str(p) for p in t.errors]
    (lst,) = t.bootstrap.listeners
    stages = [RbacStage(f, lst.port) for f in lst.rbac if f.enforced]
    return {m for m in methods if not all(s.allows({"interface": "org.apache.Demo", "method": m}, {}) for s in stages)}


@pytest.mark.asyncio
@pytest.mark.parametrize(("served", "watched"), [(("v1", "v1beta1"), "v1"), (("v1beta1",), "v1beta1")])
async def test_policies_are_watched_at_the_served_version_and_select_by_pod_labels(served: tuple[str, ...], watched: str) -> None:
    server = ContractServer(served={"security.istio.io": served})
    await server.start()
    for obj in (k8s_service(), pod("demo-1", "v1"), endpoint_slice("demo-a", 20881, [("10.0.0.1", "demo-1", True)]),
                authorization_policy(served[0], ["sayGoodbye"], {"app": "demo"}), dubbo_policy()):  # fmt: skip
        server.apply(obj)
    source, changes = await started(server)
    try:
        assert source.group_versions["security.istio.io"] == watched
        refs = by_ref(source)
        assert {f"AuthorizationPolicy {NS}/deny", f"DubboAuthorizationPolicy {NS}/only-demo"} <= set(refs)
        assert all(path.startswith(f"/apis/security.istio.io/{watched}/") for path, _ in server.requests if path.endswith("/authorizationpolicies"))
        resources = source.resources()[0]
        (lst,) = translate(ResourceSet(list(resources))).bootstrap.listeners
        assert [f.action for f in lst.rbac] == [RbacAction.DENY, RbacAction.ALLOW]
        assert denied_methods(ResourceSet(list(resources)), ["sayHello", "sayGoodbye"]) == {"sayGoodbye"}
        # An edit is seen: the policy now denies sayHello.
        before = changes[0]
        server.apply(authorization_policy(served[0], ["sayHello"], {"app": "demo"}))
        await eventually(lambda: changes[0] > before and denied_methods(ResourceSet(list(source.resources()[0])), ["sayHello", "sayGoodbye"]) == {"sayHello"})
        # Annotated istio.io/dry-run: evaluated and counted (shadow rules), not enforced.
        dry = authorization_policy(served[0], ["sayHello"], {"app": "demo"})
        dry["metadata"]["annotations"] = {"istio.io/dry-run": "true", "unrelated": "x"}
        server.apply(dry)
        await eventually(lambda: denied_methods(ResourceSet(list(source.resources()[0])), ["sayHello", "sayGoodbye"]) == set())
        (lst,) = translate(ResourceSet(list(source.resources()[0]))).bootstrap.listeners
        assert [(f.action, f.enforced) for f in lst.rbac] == [(RbacAction.DENY, False), (RbacAction.ALLOW, True)]
        assert by_ref(source)[f"AuthorizationPolicy {NS}/deny"].annotations == {"istio.io/dry-run": "true"}  # only what is read is kept
        # A selector the Pods do not match: the policy guards nothing.
        server.apply(authorization_policy(served[0], ["sayHello"], {"app": "other"}))
        await eventually(lambda: translate(ResourceSet(list(source.resources()[0]))).bootstrap.listeners[0].rbac[0].action is RbacAction.ALLOW)
        assert denied_methods(ResourceSet(list(source.resources()[0])), ["sayHello", "sayGoodbye"]) == set()
    finally:
        await source.close()
        await server.close()


@pytest.mark.asyncio
async def test_peer_authentication_is_watched_and_sets_the_listener_tls_by_pod_labels() -> None:
    server = ContractServer(served={"security.istio.io": ("v1beta1",)})
    await server.start()
    policy = {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication", "metadata": {"name": "demo", "namespace": NS},
              "spec": {"selector": {"matchLabels": {"app": "demo"}}, "mtls": {"mode": "STRICT"}}}  # fmt: skip
    for obj in (k8s_service(), pod("demo-1", "v1"), endpoint_slice("demo-a", 20881, [("10.0.0.1", "demo-1", True)]), policy):
        server.apply(obj)
    source, changes = await started(server)
    try:
        assert f"PeerAuthentication {NS}/demo" in by_ref(source)
        assert all(path.startswith("/apis/security.istio.io/v1beta1/") for path, _ in server.requests if path.endswith("/peerauthentications"))
        (lst,) = translate(ResourceSet(list(source.resources()[0]))).bootstrap.listeners
        assert lst.tls is not None and lst.tls.require_client_certificate and not lst.tls.allow_plaintext
        before = changes[0]
        server.apply({**policy, "spec": {"selector": {"matchLabels": {"app": "demo"}}, "mtls": {"mode": "PERMISSIVE"}}})
        await eventually(lambda: changes[0] > before and (translate(ResourceSet(list(source.resources()[0]))).bootstrap.listeners[0].tls or lst.tls).allow_plaintext)
    finally:
        await source.close()
        await server.close()
