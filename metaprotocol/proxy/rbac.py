"""L7 authorization: Envoy's RBAC rules as a stage of the listener's chain, for every codec.

A policy matches a request when one of its permissions matches the request (its metadata
attributes: interface, method, Redis command and key, a THeader header ...; the listener's port)
and one of its principals matches the client (``source.principal`` and ``source.namespace`` from
its certificate, its address, or request attributes). The filter's action applies to requests a
policy matches: ALLOW refuses every request no policy matches, DENY refuses the ones a policy
matches, LOG refuses nothing; shadow rules are evaluated and counted only. A refusal is the
protocol's own error reply (``ErrorKind.FORBIDDEN``), counted and access-logged.

The stage decides per request, so a listener with authorization never forwards pipelines: each
pipelined command is checked (the chain's rule, not a list to maintain). A request the codec split
(Redis MGET over shards) is checked whole and part by part, each part with its own attributes
over the whole's (MGET's parts are GETs): one refused part refuses the request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from metaprotocol.config.model import MatchKind, RbacAction, RbacFilter, RbacOp, RbacRule
from metaprotocol.proxy.chain import Stage
from metaprotocol.router.matchers import compile_matcher
from metaprotocol.spi import ErrorKind

if TYPE_CHECKING:
    from metaprotocol.proxy.context import Pending
    from metaprotocol.proxy.session import DownstreamSession

Check = Callable[[Mapping[str, str], Mapping[str, str]], bool]
"""A compiled rule: (request attributes, connection attributes) -> match."""

DENIED: Final = "RBAC: access denied"
_ADDRESSES: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address | None] = {}
_ADDRESSES_MAX: Final = 4096


class RbacStage(Stage):
    """One RBAC filter of a listener.

    Policies whose permissions are exact values of request attributes (the usual kind: an
    interface and a method, a Redis command) are found through a dict keyed by those values, so
    50 such policies cost one lookup per attribute set, not 50 evaluations; the others are
    evaluated in turn."""

    name = "rbac"

    def __init__(self, config: RbacFilter, port: int) -> None:
        self.config = config
        self.allow = config.action is RbacAction.ALLOW
        self.deny = config.action is RbacAction.DENY
        self.principals: list[Check] = []
        self.indexed: dict[tuple[str, ...], dict[tuple[str, ...], list[int]]] = {}
        self.linear: list[tuple[Check, int]] = []
        for i, p in enumerate(config.policies):
            self.principals.append(_any_of([compile_rule(r, port) for r in p.principals]))
            keys = [_exact_key(r) for r in p.permissions]
            if all(k is not None for k in keys):
                for key in keys:
                    assert key is not None  # noqa: S101 - checked just above
                    names, values = key
                    self.indexed.setdefault(names, {}).setdefault(values, []).append(i)
            else:
                self.linear.append((_any_of([compile_rule(r, port) for r in p.permissions]), i))

    def matches(self, request: Mapping[str, str], peer: Mapping[str, str]) -> bool:
        """Whether any policy matches a request with these attributes from this client."""
        principals = self.principals
        for names, table in self.indexed.items():
            found = table.get(tuple([request.get(n, "") for n in names]))
            if found:
                for i in found:
                    if principals[i](request, peer):
                        return True
        for permission, i in self.linear:
            if permission(request, peer) and principals[i](request, peer):
                return True
        return False

    def allows(self, request: Mapping[str, str], peer: Mapping[str, str]) -> bool:
        """Whether the action lets a request with these attributes through."""
        if self.allow:
            return self.matches(request, peer)
        if self.deny:
            return not self.matches(request, peer)
        return True

    def run(self, session: DownstreamSession, p: Pending, now: float) -> bool:
        msg = p.request
        peer = session.peer
        allowed = self.allows(msg.metadata, peer)
        parts = msg.parts
        if allowed and parts:
            whole = msg.metadata
            allowed = all(self.allows({**whole, **part.metadata}, peer) for part in parts)
        stats = session.ctx.stats
        if not self.config.enforced:
            if allowed:
                stats.rbac_shadow_allowed += 1
            else:
                stats.rbac_shadow_denied += 1
            return True
        if allowed:
            stats.rbac_allowed += 1
            return True
        stats.rbac_denied += 1
        session.local_error(p, ErrorKind.FORBIDDEN, DENIED)
        return False


def compile_rule(rule: RbacRule, port: int) -> Check:
    """A rule tree as nested closures, built once per configuration."""
    op = rule.op
    if op is RbacOp.ANY:
        return _always
    if op is RbacOp.AND:
        return _all_of([compile_rule(r, port) for r in rule.children])
    if op is RbacOp.OR:
        return _any_of([compile_rule(r, port) for r in rule.children])
    if op is RbacOp.NOT:
        inner = compile_rule(rule.children[0], port)
        return lambda request, peer: not inner(request, peer)
    if op is RbacOp.REQUEST:
        assert rule.matcher is not None  # noqa: S101 - the converter guarantees it
        on_request = compile_matcher(rule.matcher)
        return lambda request, peer: on_request(request)
    if op is RbacOp.PEER:
        assert rule.matcher is not None  # noqa: S101
        on_peer = compile_matcher(rule.matcher)
        return lambda request, peer: on_peer(peer)
    if op is RbacOp.SOURCE_IP:
        network = ipaddress.ip_network(f"{rule.cidr[0]}/{rule.cidr[1]}", strict=False)
        return lambda request, peer: _in_network(peer.get("source.address", ""), network)
    first, last = rule.ports
    inside = first <= port <= last
    return lambda request, peer: inside


def _exact_key(rule: RbacRule) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(attribute names, values) when ``rule`` is exact, case-sensitive, non-inverted request
    attribute matches (one, or an AND of them); None otherwise."""
    rules = rule.children if rule.op is RbacOp.AND else (rule,)
    pairs = []
    for r in rules:
        m = r.matcher
        if r.op is not RbacOp.REQUEST or m is None or m.kind is not MatchKind.EXACT or m.invert or m.ignore_case or not m.value:
            return None
        pairs.append((m.name, m.value))
    pairs.sort()
    if len({name for name, _ in pairs}) != len(pairs):
        return None  # two values for one attribute: never matches, leave it to the evaluator
    return tuple(name for name, _ in pairs), tuple(value for _, value in pairs)


def _always(request: Mapping[str, str], peer: Mapping[str, str]) -> bool:
    return True


def _any_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    return lambda request, peer: any(c(request, peer) for c in checks)


def _all_of(checks: list[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    return lambda request, peer: all(c(request, peer) for c in checks)


def _in_network(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether ``address`` (text, parsed once per distinct address) is in ``network``."""
    ip = _ADDRESSES.get(address)
    if ip is None and address not in _ADDRESSES:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if len(_ADDRESSES) < _ADDRESSES_MAX:
            _ADDRESSES[address] = ip
    return ip is not None and ip in network
