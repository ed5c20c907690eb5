"""Envoy's RBAC messages <-> the RBAC filter model (part of the one protobuf mapping, ``convert``).

The MetaProtocol filter ``aeraki.meta_protocol.filters.rbac`` carries Envoy's network RBAC filter
config (``envoy.extensions.filters.network.rbac.v3.RBAC``): ``rules`` (enforced) and
``shadow_rules`` (counted only), each an ``envoy.config.rbac.v3.RBAC`` of named policies. What a
layer-7 request of any protocol can be matched on is supported; anything else is refused with
its field path, never ignored:

* permissions: ``any``, ``and_rules``, ``or_rules``, ``not_rule``, ``header`` (a request metadata
  attribute: ``method``, ``interface``, ``command``, ``key`` ...), ``destination_port``,
  ``destination_port_range``;
* principals: ``any``, ``and_ids``, ``or_ids``, ``not_id``, ``authenticated.principal_name`` (the
  client certificate's SPIFFE id: ``source.principal``), ``source_ip`` / ``direct_remote_ip`` /
  ``remote_ip`` (the client's address), ``header`` (a request attribute).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from metaprotocol.config.model import AttributeMatcher, MatchKind, RbacAction, RbacFilter, RbacOp, RbacPolicy, RbacRule
from metaprotocol.xds.convert import ConversionError, _only, attribute_matcher, header_matcher

RBAC_FILTER = "aeraki.meta_protocol.filters.rbac"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
PRINCIPAL = "source.principal"

_ACTIONS = {rbac_pb2.RBAC.ALLOW: RbacAction.ALLOW, rbac_pb2.RBAC.DENY: RbacAction.DENY, rbac_pb2.RBAC.LOG: RbacAction.LOG}


def rbac_filters_from_xds(msg: network_rbac_pb2.RBAC, where: str, path: str) -> list[RbacFilter]:
    """The enforced and shadow rules of one RBAC filter config."""
    _only(msg, where, path, {"rules", "shadow_rules", "stat_prefix", "shadow_rules_stat_prefix", "enforcement_type"})
    if msg.enforcement_type != network_rbac_pb2.RBAC.ONE_TIME_ON_FIRST_BYTE:
        raise ConversionError(where, "only ONE_TIME_ON_FIRST_BYTE: every request is checked anyway", f"{path}.enforcement_type")
    prefix = msg.stat_prefix or "rbac"
    out = []
    if msg.HasField("rules"):
        out.append(_filter(msg.rules, prefix, True, where, f"{path}.rules"))
    if msg.HasField("shadow_rules"):
        out.append(_filter(msg.shadow_rules, msg.shadow_rules_stat_prefix or prefix, False, where, f"{path}.shadow_rules"))
    if not out:
        raise ConversionError(where, "rules or shadow_rules is required (an RBAC filter without rules allows everything)", path)
    return out


def _filter(rules: rbac_pb2.RBAC, prefix: str, enforced: bool, where: str, path: str) -> RbacFilter:
    _only(rules, where, path, {"action", "policies"})
    action = _ACTIONS.get(rules.action)
    if action is None:
        raise ConversionError(where, "ALLOW, DENY or LOG", f"{path}.action")
    policies = tuple(_policy(name, rules.policies[name], where, f"{path}.policies[{name}]") for name in sorted(rules.policies))
    return RbacFilter(prefix, action, policies, enforced)


def _policy(name: str, p: rbac_pb2.Policy, where: str, path: str) -> RbacPolicy:
    _only(p, where, path, {"permissions", "principals"})
    if not p.permissions or not p.principals:
        raise ConversionError(where, "a policy needs at least one permission and one principal", path)
    permissions = tuple(_permission(x, where, f"{path}.permissions[{i}]") for i, x in enumerate(p.permissions))
    principals = tuple(_principal(x, where, f"{path}.principals[{i}]") for i, x in enumerate(p.principals))
    return RbacPolicy(name, permissions, principals)


# The boolean structure both trees share: oneof name -> (node kind, list field of the group).
_PERMISSION_TREE = {"and_rules": (RbacOp.AND, "rules"), "or_rules": (RbacOp.OR, "rules"), "not_rule": (RbacOp.NOT, "")}
_PRINCIPAL_TREE = {"and_ids": (RbacOp.AND, "ids"), "or_ids": (RbacOp.OR, "ids"), "not_id": (RbacOp.NOT, "")}


def _tree(msg: Message, which: str, shape: dict[str, tuple[RbacOp, str]], leaf: Callable[[Any, str, str], RbacRule], where: str, at: str) -> RbacRule | None:
    """``any``, and the and/or/not nodes of a permission or principal; None for a leaf."""
    if which == "any":
        return RbacRule(RbacOp.ANY)
    if which not in shape:
        return None
    op, items = shape[which]
    if op is RbacOp.NOT:
        return RbacRule(RbacOp.NOT, (leaf(getattr(msg, which), where, at),))
    children = tuple(leaf(x, where, f"{at}.{items}[{i}]") for i, x in enumerate(getattr(getattr(msg, which), items)))
    if not children:
        raise ConversionError(where, f"at least one of {items}", at)
    return RbacRule(op, children)


def _permission(p: rbac_pb2.Permission, where: str, path: str) -> RbacRule:
    which = p.WhichOneof("rule") or ""
    at = f"{path}.{which}"
    node = _tree(p, which, _PERMISSION_TREE, _permission, where, at)
    if node is not None:
        return node
    if which == "header":
        return RbacRule(RbacOp.REQUEST, matcher=_lower(attribute_matcher(p.header, where, at)))
    if which == "destination_port":
        return RbacRule(RbacOp.DESTINATION_PORT, ports=(p.destination_port, p.destination_port))
    if which == "destination_port_range":
        r = p.destination_port_range
        if r.end <= r.start:
            raise ConversionError(where, "end must be above start (the range is [start, end))", at)
        return RbacRule(RbacOp.DESTINATION_PORT, ports=(r.start, r.end - 1))
    raise ConversionError(where, f"permission {which} does not apply to a MetaProtocol request", at if which else path)


def _principal(p: rbac_pb2.Principal, where: str, path: str) -> RbacRule:
    which = p.WhichOneof("identifier") or ""
    at = f"{path}.{which}"
    node = _tree(p, which, _PRINCIPAL_TREE, _principal, where, at)
    if node is not None:
        return node
    if which == "authenticated":
        _only(p.authenticated, where, at, {"principal_name"})
        if not p.authenticated.HasField("principal_name"):  # any authenticated client
            return RbacRule(RbacOp.PEER, matcher=AttributeMatcher(PRINCIPAL, MatchKind.PRESENT))
        h = route_components_pb2.HeaderMatcher(name=PRINCIPAL, string_match=p.authenticated.principal_name)
        return RbacRule(RbacOp.PEER, matcher=attribute_matcher(h, where, f"{at}.principal_name"))
    if which in ("source_ip", "direct_remote_ip", "remote_ip"):
        return RbacRule(RbacOp.SOURCE_IP, cidr=_cidr(getattr(p, which), where, at))
    if which == "header":
        return RbacRule(RbacOp.REQUEST, matcher=_lower(attribute_matcher(p.header, where, at)))
    raise ConversionError(where, f"principal {which} does not apply to a MetaProtocol request", at if which else path)


def _cidr(cidr: address_pb2.CidrRange, where: str, at: str) -> tuple[str, int]:
    _only(cidr, where, at, {"address_prefix", "prefix_len"})
    full = 128 if ":" in cidr.address_prefix else 32
    try:
        net = ipaddress.ip_network(f"{cidr.address_prefix}/{cidr.prefix_len.value if cidr.HasField('prefix_len') else full}", strict=False)
    except ValueError as exc:
        raise ConversionError(where, f"bad CIDR range: {exc}", at) from None
    return str(net.network_address), net.prefixlen


def _lower(m: AttributeMatcher) -> AttributeMatcher:
    """Metadata keys are lower-case (as route matches compare them)."""
    return replace(m, name=m.name.lower())


# -- model -> xDS ---------------------------------------------------------------------------------


def rbac_filters_to_xds(filters: tuple[RbacFilter, ...]) -> list[network_rbac_pb2.RBAC]:
    """One network RBAC config per enforced filter; a shadow filter joins the enforced one before
    it (or stands alone)."""
    out: list[network_rbac_pb2.RBAC] = []
    for f in filters:
        rules = _rules_to_xds(f)
        if not f.enforced and out and not out[-1].HasField("shadow_rules"):
            out[-1].shadow_rules.CopyFrom(rules)
            out[-1].shadow_rules_stat_prefix = f.stat_prefix
            continue
        msg = network_rbac_pb2.RBAC(stat_prefix=f.stat_prefix)
        if f.enforced:
            msg.rules.CopyFrom(rules)
        else:
            msg.shadow_rules.CopyFrom(rules)
        out.append(msg)
    return out


def _rules_to_xds(f: RbacFilter) -> rbac_pb2.RBAC:
    action = {v: k for k, v in _ACTIONS.items()}[f.action]
    rules = rbac_pb2.RBAC(action=action)
    for p in f.policies:
        rules.policies[p.name].CopyFrom(
            rbac_pb2.Policy(permissions=[_permission_to_xds(r) for r in p.permissions], principals=[_principal_to_xds(r) for r in p.principals])
        )
    return rules


def _tree_to_xds(r: RbacRule, cls: Any, shape: dict[str, tuple[RbacOp, str]], leaf: Callable[[RbacRule], Message]) -> Any:
    """``any`` and the and/or/not nodes, as ``cls`` (Permission or Principal); None for a leaf."""
    if r.op is RbacOp.ANY:
        return cls(any=True)
    for which, (op, items) in shape.items():
        if r.op is op:
            if op is RbacOp.NOT:
                return cls(**{which: leaf(r.children[0])})
            return cls(**{which: cls.Set(**{items: [leaf(c) for c in r.children]})})
    return None


def _permission_to_xds(r: RbacRule) -> rbac_pb2.Permission:
    node = _tree_to_xds(r, rbac_pb2.Permission, _PERMISSION_TREE, _permission_to_xds)
    if node is not None:
        return node
    if r.op is RbacOp.REQUEST:
        assert r.matcher is not None  # noqa: S101
        return rbac_pb2.Permission(header=header_matcher(r.matcher))
    first, last = r.ports
    if first == last:
        return rbac_pb2.Permission(destination_port=first)
    return rbac_pb2.Permission(destination_port_range=range_pb2.Int32Range(start=first, end=last + 1))


def _principal_to_xds(r: RbacRule) -> rbac_pb2.Principal:
    node = _tree_to_xds(r, rbac_pb2.Principal, _PRINCIPAL_TREE, _principal_to_xds)
    if node is not None:
        return node
    if r.op is RbacOp.PEER:
        assert r.matcher is not None  # noqa: S101
        if r.matcher.kind is MatchKind.PRESENT:
            return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated())
        sm: string_pb2.StringMatcher = header_matcher(r.matcher).string_match
        return rbac_pb2.Principal(authenticated=rbac_pb2.Principal.Authenticated(principal_name=sm))
    if r.op is RbacOp.SOURCE_IP:
        return rbac_pb2.Principal(direct_remote_ip=address_pb2.CidrRange(address_prefix=r.cidr[0], prefix_len=wrappers_pb2.UInt32Value(value=r.cidr[1])))
    assert r.matcher is not None  # noqa: S101
    return rbac_pb2.Principal(header=header_matcher(r.matcher))
