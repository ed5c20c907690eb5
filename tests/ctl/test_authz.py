"""Authorization policies (Istio's AuthorizationPolicy, Aeraki's DubboAuthorizationPolicy) translated
into the RBAC filters of the MetaProtocol listeners they select: every field, Istio's value
semantics, DENY then ALLOW, where each applies, and every problem with its path. Decisions are
the data plane's own (``RbacStage.allows`` on the translated filters, after an xDS round trip)."""

from __future__ import annotations

from typing import Any

import pytest

from aeraki_ctl.incremental import IncrementalTranslator
from aeraki_ctl.lifecycle import Ledger
from aeraki_ctl.resources import Resource, ResourceSet, add_object
from aeraki_ctl.translate import Options, Translation, translate
from aeraki_ctl.validation import validate_object
from metaprotocol.config.model import ListenerConfig, RbacAction
from metaprotocol.proxy.rbac import RbacStage
from metaprotocol.xds.convert import listener_from_xds, listener_to_xds
from metaprotocol.xds.rbac import rbac_filters_to_xds
from metaprotocol_api.dubbo_aeraki_io.v1alpha1 import dubbo_authorization_policy_pb2 as dap_pb2
from metaprotocol_api.istio.security.v1beta1 import authorization_policy_pb2 as ap_pb2

DEMO = "org.apache.dubbo.samples.basic.api.DemoService"
ALICE = {"source.principal": "spiffe://cluster.local/ns/foo/sa/alice", "source.namespace": "foo", "source.address": "10.1.2.3"}
BOB = {"source.principal": "spiffe://cluster.local/ns/bar/sa/bob", "source.namespace": "bar", "source.address": "192.168.0.7"}
PLAIN = {"source.address": "10.9.9.9"}  # no client certificate


def _read(doc: dict[str, Any]) -> Resource:
    out = ResourceSet()
    add_object(doc, "test.yaml", out)
    assert len(out.resources) == 1, out.problems
    return out.resources[0]


def service(name: str = "demo", ns: str = "shop", host: str = "demo.shop", port: int = 20880, protocol: str = "dubbo", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": name, "namespace": ns},
            "spec": {"hosts": [host], "ports": [{"number": port, "name": f"tcp-metaprotocol-{protocol}", "protocol": "TCP"}],
                     "endpoints": [{"address": "10.0.0.1", "labels": labels or {"app": "demo", "version": "v1"}}, {"address": "10.0.0.2", "labels": {"app": "demo", "version": "v2"}}]}}  # fmt: skip


def policy(spec: dict[str, Any], name: str = "p", ns: str = "shop", version: str = "v1", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": f"security.istio.io/{version}", "kind": "AuthorizationPolicy", "metadata": meta, "spec": spec}


def dubbo_policy(spec: dict[str, Any], name: str = "d", ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "dubbo.aeraki.io/v1alpha1", "kind": "DubboAuthorizationPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def run(*docs: dict[str, Any], options: Options | None = None) -> Translation:
    return translate(ResourceSet([_read(d) for d in docs]), options)


def listener(t: Translation, host: str = "demo.shop") -> ListenerConfig:
    assert not t.errors, [str(p) for p in t.errors]
    (lst,) = [x for x in t.bootstrap.listeners if x.name.startswith(host + "_")]
    back = listener_from_xds(listener_to_xds(lst))  # what the proxy reads over xDS
    assert back.rbac == lst.rbac
    return back


def allowed(lst: ListenerConfig, request: dict[str, str], peer: dict[str, str]) -> bool:
    """The data plane's decision: every enforced filter, in order, lets it through."""
    return all(RbacStage(f, lst.port).allows(request, peer) for f in lst.rbac if f.enforced)


def call(method: str, interface: str = DEMO, **more: str) -> dict[str, str]:
    return {"interface": interface, "method": method, **more}


def problems(t: Translation, ref: str) -> list[tuple[str, str, bool]]:
    return [(p.path, p.reason, p.fatal) for p in t.problems if p.obj == ref]


# -- protos ---------------------------------------------------------------------------------------


def test_field_numbers_are_istios_and_aerakis() -> None:
    def numbers(desc: Any) -> dict[str, int]:
        return {f.name: f.number for f in desc.fields}

    assert ap_pb2.AuthorizationPolicy.DESCRIPTOR.full_name == "istio.security.v1beta1.AuthorizationPolicy"
    assert numbers(ap_pb2.AuthorizationPolicy.DESCRIPTOR) == {"selector": 1, "targetRef": 5, "targetRefs": 6, "rules": 2, "action": 3, "provider": 4}
    assert numbers(ap_pb2.Rule.DESCRIPTOR) == {"from": 1, "to": 2, "when": 3}
    assert numbers(ap_pb2.Source.DESCRIPTOR) == {"principals": 1, "not_principals": 5, "request_principals": 2, "not_request_principals": 6, "namespaces": 3,
                                                 "not_namespaces": 7, "service_accounts": 11, "not_service_accounts": 12, "ip_blocks": 4, "not_ip_blocks": 8,
                                                 "remote_ip_blocks": 9, "not_remote_ip_blocks": 10, "trust_domains": 13, "not_trust_domains": 14}  # fmt: skip
    assert numbers(ap_pb2.Operation.DESCRIPTOR) == {"hosts": 1, "not_hosts": 5, "ports": 2, "not_ports": 6, "methods": 3, "not_methods": 7, "paths": 4, "not_paths": 8}
    assert numbers(ap_pb2.Condition.DESCRIPTOR) == {"key": 1, "values": 2, "not_values": 3}
    assert dict(ap_pb2.AuthorizationPolicy.Action.items()) == {"ALLOW": 0, "DENY": 1, "AUDIT": 2, "CUSTOM": 3}
    assert dap_pb2.DubboAuthorizationPolicy.DESCRIPTOR.full_name == "dubbo.aeraki.io.v1alpha1.DubboAuthorizationPolicy"
    assert numbers(dap_pb2.DubboAuthorizationPolicy.DESCRIPTOR) == {"rules": 2, "action": 3}
    assert numbers(dap_pb2.Source.DESCRIPTOR) == {"principals": 1, "not_principals": 2, "namespaces": 3, "not_namespaces": 4}
    assert numbers(dap_pb2.Operation.DESCRIPTOR) == {"interfaces": 1, "not_interfaces": 5, "methods": 3, "not_methods": 7}


# -- fields and value semantics -------------------------------------------------------------------


def test_deny_on_a_metadata_attribute() -> None:
    lst = listener(run(service(), policy({"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayGoodbye"]}]}]})))
    assert [f.action for f in lst.rbac] == [RbacAction.DENY]
    assert allowed(lst, call("sayHello"), PLAIN) and not allowed(lst, call("sayGoodbye"), PLAIN)
    assert lst.rbac[0].policies[0].name == "ns[shop]-policy[p]-rule[0]"


@pytest.mark.parametrize(("value", "yes", "no"), [
    ("sayHello", ["sayHello"], ["sayHelloAgain", "say", ""]),
    ("say*", ["sayHello", "say"], ["hello"]),
    ("*Hello", ["sayHello", "Hello"], ["sayHelloX"]),
    ("*", ["anything", "x"], []),
])  # fmt: skip
def test_istio_value_semantics_on_request_metadata(value: str, yes: list[str], no: list[str]) -> None:
    lst = listener(run(service(), policy({"rules": [{"when": [{"key": "request.metadata[method]", "values": [value]}]}]})))
    for m in yes:
        assert allowed(lst, call(m), PLAIN), m
    for m in no:
        assert not allowed(lst, call(m), PLAIN), m
    assert not allowed(lst, {"interface": DEMO}, PLAIN)  # no method at all: only "*" could match, and it needs one


def test_not_values_and_attribute_names_are_case_insensitive() -> None:
    lst = listener(run(service(), policy({"rules": [{"when": [{"key": "request.metadata[Method]", "values": ["say*"], "notValues": ["*Goodbye"]}]}]})))
    assert allowed(lst, call("sayHello"), PLAIN) and not allowed(lst, call("sayGoodbye"), PLAIN) and not allowed(lst, call("hello"), PLAIN)


@pytest.mark.parametrize(("source", "yes", "no"), [
    ({"principals": ["cluster.local/ns/foo/sa/alice"]}, [ALICE], [BOB, PLAIN]),
    ({"principals": ["cluster.local/ns/foo/*"]}, [ALICE], [BOB, PLAIN]),
    ({"principals": ["*/sa/bob"]}, [BOB], [ALICE, PLAIN]),
    ({"principals": ["*"]}, [ALICE, BOB], [PLAIN]),
    ({"notPrincipals": ["cluster.local/ns/foo/sa/alice"]}, [BOB, PLAIN], [ALICE]),
    ({"namespaces": ["foo"]}, [ALICE], [BOB, PLAIN]),
    ({"namespaces": ["b*"]}, [BOB], [ALICE]),
    ({"namespaces": ["*oo"]}, [ALICE], [BOB]),
    ({"namespaces": ["*"]}, [ALICE, BOB], [PLAIN]),
    ({"notNamespaces": ["foo"]}, [BOB, PLAIN], [ALICE]),
    ({"serviceAccounts": ["bar/bob"]}, [BOB], [ALICE, PLAIN]),
    ({"trustDomains": ["cluster.local"]}, [ALICE, BOB], [PLAIN]),
    ({"notTrustDomains": ["cluster.*"]}, [PLAIN], [ALICE, BOB]),
    ({"ipBlocks": ["10.0.0.0/8"]}, [ALICE, PLAIN], [BOB]),
    ({"ipBlocks": ["192.168.0.7"]}, [BOB], [ALICE, PLAIN]),
    ({"notIpBlocks": ["10.0.0.0/8"]}, [BOB], [ALICE, PLAIN]),
    ({"principals": ["*"], "ipBlocks": ["10.0.0.0/8"]}, [ALICE], [BOB, PLAIN]),  # fields of a source are AND'ed
])  # fmt: skip
def test_sources(source: dict[str, Any], yes: list[dict[str, str]], no: list[dict[str, str]]) -> None:
    lst = listener(run(service(), policy({"rules": [{"from": [{"source": source}]}]})))
    for peer in yes:
        assert allowed(lst, call("sayHello"), peer), peer
    for peer in no:
        assert not allowed(lst, call("sayHello"), peer), peer


def test_sources_and_operations_lists_are_ored_and_rule_parts_anded() -> None:
    spec = {"rules": [{"from": [{"source": {"namespaces": ["foo"]}}, {"source": {"ipBlocks": ["192.168.0.0/16"]}}],
                       "when": [{"key": "request.metadata[method]", "values": ["sayHello"]}]}]}  # fmt: skip
    lst = listener(run(service(), policy(spec)))
    assert allowed(lst, call("sayHello"), ALICE) and allowed(lst, call("sayHello"), BOB)
    assert not allowed(lst, call("sayHello"), PLAIN)  # neither source
    assert not allowed(lst, call("sayGoodbye"), ALICE)  # the condition fails


def test_ports_of_operations_and_conditions_with_the_port_offset() -> None:
    docs = [service(port=20880), service("other", host="other.shop", port=20990)]
    for spec in ({"rules": [{"to": [{"operation": {"ports": ["20880"]}}]}]}, {"rules": [{"when": [{"key": "destination.port", "values": ["20880"]}]}]},
                 {"rules": [{"to": [{"operation": {"notPorts": ["20990"]}}]}]}, {"rules": [{"when": [{"key": "destination.port", "notValues": ["20990"]}]}]}):  # fmt: skip
        t = run(*docs, policy(spec), options=Options(port_offset=1000))
        demo, other = listener(t, "demo.shop"), listener(t, "other.shop")
        assert demo.port == 21880 and allowed(demo, call("x"), PLAIN), spec
        assert not allowed(other, call("x"), PLAIN), spec


def test_connection_conditions() -> None:
    for cond, yes, no in (({"key": "source.principal", "values": ["cluster.local/ns/foo/sa/alice"]}, ALICE, BOB),
                          ({"key": "source.namespace", "values": ["bar"]}, BOB, ALICE),
                          ({"key": "source.ip", "values": ["10.0.0.0/8"]}, ALICE, BOB),
                          ({"key": "source.ip", "notValues": ["10.0.0.0/8"]}, BOB, ALICE)):  # fmt: skip
        lst = listener(run(service(), policy({"rules": [{"when": [cond]}]})))
        assert allowed(lst, call("x"), yes) and not allowed(lst, call("x"), no), cond


def test_empty_rules_semantics() -> None:
    allow_nothing = listener(run(service(), policy({})))
    assert [f.action for f in allow_nothing.rbac] == [RbacAction.ALLOW] and not allow_nothing.rbac[0].policies
    assert not allowed(allow_nothing, call("sayHello"), ALICE)
    allow_all = listener(run(service(), policy({"rules": [{}]})))
    assert allowed(allow_all, call("sayHello"), PLAIN)
    deny_nothing = listener(run(service(), policy({"action": "DENY"})))
    assert deny_nothing.rbac == () and allowed(deny_nothing, call("x"), PLAIN)
    deny_all = listener(run(service(), policy({"action": "DENY", "rules": [{}]})))
    assert not allowed(deny_all, call("x"), ALICE)


def test_deny_first_then_allow_then_audit_is_logged_only() -> None:
    t = run(service(), policy({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["bar"]}}]}]}, name="no-bar"),
            policy({"action": "ALLOW", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["say*"]}]}]}, name="greetings"),
            policy({"action": "ALLOW", "rules": [{"from": [{"source": {"ipBlocks": ["10.9.0.0/16"]}}]}]}, name="ops"),
            policy({"action": "AUDIT", "rules": [{}]}, name="audit"))  # fmt: skip
    lst = listener(t)
    assert [(f.stat_prefix, f.action) for f in lst.rbac] == [("authz_audit", RbacAction.LOG), ("authz_deny", RbacAction.DENY), ("authz_allow", RbacAction.ALLOW)]
    assert [p.name for p in lst.rbac[2].policies] == ["ns[shop]-policy[greetings]-rule[0]", "ns[shop]-policy[ops]-rule[0]"]  # all ALLOW policies in one filter
    assert allowed(lst, call("sayHello"), ALICE)  # an ALLOW matches
    assert allowed(lst, call("reboot"), PLAIN)  # the other ALLOW matches
    assert not allowed(lst, call("reboot"), ALICE)  # ALLOW policies apply and none matches
    assert not allowed(lst, call("sayHello"), BOB)  # DENY wins over a matching ALLOW


def test_v1beta1_is_the_same_schema() -> None:
    spec = {"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayGoodbye"]}]}]}
    assert listener(run(service(), policy(spec, version="v1beta1"))).rbac == listener(run(service(), policy(spec))).rbac


def test_dry_run_policies_are_shadow_rules_of_their_action() -> None:
    deny_goodbye = {"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayGoodbye"]}]}]}
    deny_reboot = {"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["reboot"]}]}]}
    dry = {"istio.io/dry-run": "true"}
    lst = listener(run(service(), policy(deny_goodbye, annotations=dry), policy(deny_reboot, name="q", annotations={"istio.io/dry-run": "false"})))
    assert [(f.stat_prefix, f.action, f.enforced) for f in lst.rbac] == [("authz_deny", RbacAction.DENY, True), ("authz_dry_run_deny", RbacAction.DENY, False)]
    (msg,) = rbac_filters_to_xds(lst.rbac)  # one RBAC filter: the dry run is its shadow_rules, as Istio makes it
    assert msg.HasField("rules") and msg.HasField("shadow_rules") and msg.shadow_rules_stat_prefix == "authz_dry_run_deny"
    assert allowed(lst, call("sayGoodbye"), PLAIN) and not allowed(lst, call("reboot"), PLAIN)  # the dry run is not enforced
    shadow = RbacStage(lst.rbac[1], lst.port)
    assert not shadow.allows(call("sayGoodbye"), PLAIN) and shadow.allows(call("sayHello"), PLAIN)  # it would deny (counted)
    only_dry = listener(run(service(), policy({}, annotations=dry)))  # a dry-run allow-nothing
    assert [(f.action, f.enforced, f.policies) for f in only_dry.rbac] == [(RbacAction.ALLOW, False, ())] and allowed(only_dry, call("x"), PLAIN)
    bad = run(service(), policy(deny_goodbye, annotations={"istio.io/dry-run": "yes"}))
    assert problems(bad, "AuthorizationPolicy shop/p") == [("metadata.annotations.istio.io/dry-run", 'istio.io/dry-run must be "true" or "false", not \'yes\'', True)]
    # Only the annotation changes: a change (the incremental translator redoes the listener).
    translator = IncrementalTranslator()
    objects = [_read(service()), _read(policy(deny_goodbye))]
    translator(ResourceSet(objects))
    translator.take_changes()
    result = translator(ResourceSet([objects[0], _read(policy(deny_goodbye, annotations=dry))]))
    assert translator.take_changes()[0] == {"demo.shop"} and not result.bootstrap.listeners[0].rbac[0].enforced


# -- where a policy applies -----------------------------------------------------------------------


def test_namespace_root_namespace_selector_and_target_refs() -> None:
    docs = [service("a", "shop", "a.shop", labels={"app": "a"}), service("b", "shop", "b.shop", 20881, labels={"app": "b"}), service("c", "blog", "c.blog", 20882)]
    deny = {"action": "DENY", "rules": [{}]}

    def denied(t: Translation) -> set[str]:
        return {lst.name.split("_")[0] for lst in t.bootstrap.listeners if not allowed(lst, call("x"), PLAIN)}

    assert denied(run(*docs, policy(deny, ns="shop"))) == {"a.shop", "b.shop"}
    assert denied(run(*docs, policy(deny, ns="istio-system"))) == {"a.shop", "b.shop", "c.blog"}
    assert denied(run(*docs, policy(deny, ns="mesh"), options=Options(root_namespace="mesh"))) == {"a.shop", "b.shop", "c.blog"}
    assert denied(run(*docs, policy({**deny, "selector": {"matchLabels": {"app": "b"}}}, ns="shop"))) == {"b.shop"}
    assert denied(run(*docs, policy({**deny, "selector": {"matchLabels": {"version": "v1"}}}, ns="istio-system"))) == {"c.blog"}
    assert denied(run(*docs, policy({**deny, "selector": {"matchLabels": {"app": "demo"}}}, ns="shop"))) == {"a.shop", "b.shop"}  # one endpoint carries them
    assert denied(run(*docs, policy({**deny, "selector": {"matchLabels": {"app": "b"}}}, ns="blog"))) == set()
    assert denied(run(*docs, policy({**deny, "targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "a"}]}, ns="shop"))) == {"a.shop"}
    assert denied(run(*docs, policy({**deny, "targetRefs": [{"kind": "Service", "group": "", "name": "c"}]}, ns="blog"))) == set()  # a ServiceEntry, not a Service
    assert denied(run(*docs, policy(deny, ns="other"))) == set()


def test_dubbo_authorization_policy() -> None:
    docs = [service(), service("t", host="thrift.shop", port=9090, protocol="thrift")]
    spec = {"action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["foo"], "not_principals": ["*/sa/mallory"]}}],
                                          "to": [{"operation": {"interfaces": ["org.apache.dubbo.*"], "notMethods": ["sayGoodbye"]}}]}]}  # fmt: skip
    t = run(*docs, dubbo_policy(spec))
    lst = listener(t)
    assert [p.name for p in lst.rbac[0].policies] == ["ns[shop]-dubbo-policy[d]-rule[0]"]
    assert allowed(lst, call("sayHello"), ALICE)
    assert not allowed(lst, call("sayGoodbye"), ALICE) and not allowed(lst, call("sayHello", interface="com.x.Y"), ALICE)
    assert not allowed(lst, call("sayHello"), BOB)
    assert not allowed(lst, call("sayHello"), {**ALICE, "source.principal": "spiffe://cluster.local/ns/foo/sa/mallory"})
    assert listener(t, "thrift.shop").rbac == ()  # Dubbo policies guard Dubbo listeners only
    deny = listener(run(*docs, dubbo_policy({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["sayGoodbye"], "not_interfaces": ["x.*"]}}]}]}, ns="istio-system")))
    assert not allowed(deny, call("sayGoodbye"), PLAIN) and allowed(deny, call("sayHello"), PLAIN) and allowed(deny, call("sayGoodbye", interface="x.Y"), PLAIN)
    assert listener(run(*docs, dubbo_policy({}))).rbac[0].policies == ()  # ALLOW with no rules: denies all


# -- problems -------------------------------------------------------------------------------------


def test_http_only_fields_and_unsupported_ones_are_errors_with_their_paths() -> None:
    spec = {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [
        {"from": [{"source": {"requestPrincipals": ["a/b"], "remoteIpBlocks": ["1.2.3.4"], "ipBlocks": ["300.1.1.1"], "principals": [""]}}],
         "to": [{"operation": {"methods": ["GET"], "paths": ["/x"], "hosts": ["h"], "notPorts": ["http"]}}],
         "when": [{"key": "request.headers[x-user]", "values": ["a"]}, {"key": "request.auth.claims[iss]", "values": ["a"]}, {"key": "destination.ip", "values": ["1.1.1.1"]},
                  {"key": "request.metadata[method]"}, {"values": ["a"]}]}]}  # fmt: skip
    t = run(service(), policy(spec))
    found = problems(t, "AuthorizationPolicy shop/p")
    paths = [p for p, _, fatal in found if fatal]
    assert paths == [
        "spec.action", "spec.provider",
        "spec.rules[0].from[0].source.principals[0]", "spec.rules[0].from[0].source.ipBlocks[0]",
        "spec.rules[0].from[0].source.requestPrincipals", "spec.rules[0].from[0].source.remoteIpBlocks",
        "spec.rules[0].to[0].operation.notPorts[0]", "spec.rules[0].to[0].operation.hosts", "spec.rules[0].to[0].operation.methods", "spec.rules[0].to[0].operation.paths",
        "spec.rules[0].when[0].key", "spec.rules[0].when[1].key", "spec.rules[0].when[2].key", "spec.rules[0].when[3]", "spec.rules[0].when[4].key",
    ]  # fmt: skip
    reasons = dict((p, r) for p, r, _ in found)
    assert "HTTP only" in reasons["spec.rules[0].to[0].operation.methods"] and "request.metadata[<attribute>]" in reasons["spec.rules[0].when[0].key"]
    assert "CUSTOM" in reasons["spec.action"] and "not supported" in reasons["spec.rules[0].when[2].key"]
    assert all(lst.rbac == () for lst in t.bootstrap.listeners)  # rejected: it applies nothing
    # Read errors (unknown fields, wrong types) with their lines, like every kind.
    bad = run(service(), policy({"action": "REFUSE", "rules": [{"to": [{"operation": {"interfaces": ["x"]}}]}]}))
    assert {p for p, _, _ in problems(bad, "AuthorizationPolicy shop/p")} == {"spec.action", "spec.rules[0].to[0].operation.interfaces"}


def test_selector_and_target_refs_problems() -> None:
    t = run(service(), policy({"selector": {"matchLabels": {"app": "demo"}}, "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"},
                                                                                         {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "x", "namespace": "blog"}]}))  # fmt: skip
    assert [p for p, _, _ in problems(t, "AuthorizationPolicy shop/p")] == ["spec.selector", "spec.targetRefs[0].kind", "spec.targetRefs[1].namespace"]


def test_service_accounts_rules() -> None:
    t = run(service(), policy({"rules": [{"from": [{"source": {"serviceAccounts": ["ns/*", "a/b/c"], "principals": ["x"]}}]}]}))
    assert [p for p, _, _ in problems(t, "AuthorizationPolicy shop/p")] == ["spec.rules[0].from[0].source.serviceAccounts", "spec.rules[0].from[0].source.serviceAccounts[0]",
                                                                            "spec.rules[0].from[0].source.serviceAccounts[1]"]  # fmt: skip
    own = listener(run(service(), policy({"rules": [{"from": [{"source": {"serviceAccounts": ["alice"]}}]}]}, ns="shop")))
    assert allowed(own, call("x"), {"source.principal": "spiffe://cluster.local/ns/shop/sa/alice"}) and not allowed(own, call("x"), ALICE)


def test_an_invalid_policy_is_rejected_alone_and_its_last_valid_version_serves() -> None:
    ledger = Ledger()
    good = policy({"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["sayGoodbye"]}]}]})
    other = policy({"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["reboot"]}]}]}, name="other")
    result = ledger.sync(ResourceSet([_read(service()), _read(good), _read(other)]), translate)
    before = listener(result.translation).rbac
    broken = policy({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]})
    other2 = policy({"action": "DENY", "rules": [{"when": [{"key": "request.metadata[method]", "values": ["halt"]}]}]}, name="other")
    result = ledger.sync(ResourceSet([_read(service()), _read(broken), _read(other2)]), translate)
    assert result.status["AuthorizationPolicy shop/p"].state == "serving-last-valid"
    assert result.status["AuthorizationPolicy shop/other"].state == "accepted"
    lst = listener(result.translation) if not result.translation.errors else next(x for x in result.translation.bootstrap.listeners if x.name.startswith("demo.shop_"))
    assert lst.rbac != before
    assert not allowed(lst, call("sayGoodbye"), PLAIN) and not allowed(lst, call("halt"), PLAIN) and allowed(lst, call("reboot"), PLAIN)


def test_admission_validates_a_policy_alone() -> None:
    verdict = validate_object(policy({"rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}))
    assert not verdict.allowed and [p.path for p in verdict.errors] == ["spec.rules[0].to[0].operation.paths"]
    assert validate_object(dubbo_policy({"rules": [{"to": [{"operation": {"methods": ["sayHello"]}}]}]})).allowed


# -- incremental ----------------------------------------------------------------------------------


def test_a_policy_edit_redoes_only_the_listeners_that_read_its_namespace() -> None:
    objects = {r.ref: r for r in map(_read, [service(f"s{i}", f"ns{i % 3}", f"s{i}.example", 20000 + i) for i in range(9)])}
    translator = IncrementalTranslator()
    translator(ResourceSet(list(objects.values())))
    translator.take_changes()
    deny = policy({"action": "DENY", "rules": [{}]}, ns="ns1")
    objects["AuthorizationPolicy ns1/p"] = _read(deny)
    result = translator(ResourceSet(list(objects.values())))
    assert translator.take_changes()[0] == {"s1.example", "s4.example", "s7.example"}
    assert result.bootstrap == translate(ResourceSet(list(objects.values()))).bootstrap
    # Re-read with the same content: nothing to redo. A root-namespace policy: every host.
    objects["AuthorizationPolicy ns1/p"] = _read(deny)
    translator(ResourceSet(list(objects.values())))
    assert translator.take_changes()[0] == set()
    objects["AuthorizationPolicy istio-system/p"] = _read(policy({"action": "AUDIT", "rules": [{}]}, ns="istio-system"))
    result = translator(ResourceSet(list(objects.values())))
    assert translator.take_changes()[0] == {f"s{i}.example" for i in range(9)}
    assert result.bootstrap == translate(ResourceSet(list(objects.values()))).bootstrap
    # An invalid edit changes nothing served by the translator's own output (the Ledger serves the last valid).
    objects["AuthorizationPolicy ns1/p"] = _read(policy({"action": "CUSTOM"}, ns="ns1"))
    result = translator(ResourceSet(list(objects.values())))
    assert translator.take_changes()[0] == {"s1.example", "s4.example", "s7.example"}
    assert [p.path for p in result.problems if p.obj == "AuthorizationPolicy ns1/p"] == ["spec.action"]
