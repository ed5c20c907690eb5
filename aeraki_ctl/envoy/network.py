"""What every Envoy listener of a protocol filter shares: the network filters in front of the
protocol filter, the filter chain's TLS, and the listener-level features of the config model that
Envoy's protocol filters (thrift_proxy, redis_proxy) do not have, each decided once here:

- ``max_connections`` -> ``envoy.filters.network.connection_limit`` before the protocol filter
  (exact: Envoy closes a connection past the limit at once, as our proxy does).
- TLS -> the filter chain's ``transport_socket`` (``convert.listener_shell``, exact), TLS or
  plaintext as Istio shapes it (a ``tls_inspector`` and two chains); there the connection limit is
  counted per chain (approximated: up to the limit of each, reported).
- Authorization (``rbac``): rules that read only the connection (principals by peer identity or
  source address, permissions on the destination port) -> ``envoy.filters.network.rbac`` before the protocol filter: the same decision
  for every request of a connection, so the same allow/deny; approximated only in how a refusal
  shows (Envoy closes the connection, our proxy answers the protocol's error). Rules on a request
  attribute (method, header, key...) are fatal: Envoy's network RBAC filter cannot see requests, so
  the policy would not be enforced. Shadow-only (dry-run) filters on request attributes are
  approximated: nothing is enforced either way, only their counters are missing.
- ``local_rate_limit`` and ``global_rate_limit``: fatal; neither filter limits requests (Envoy's
  network ``local_ratelimit`` counts connections), so the limit would not hold.
- ``idle_timeout``, ``access_log``: approximated (served without them, reported).
- ``max_pending_per_connection`` and ``upstream_connections_per_endpoint`` other than the
  defaults: approximated (our proxy's pooling knobs; Envoy pools upstream connections its own way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.type.v3 import percent_pb2

from aeraki_ctl.envoy.common import Gap, typed
from metaprotocol.config.model import AttributeMatcher, ListenerConfig, MatchKind, RbacFilter, RbacOp, RbacRule
from metaprotocol.xds import convert, rbac

NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
MILLION = 1_000_000
_DEFAULT_PENDING = ListenerConfig.__dataclass_fields__["max_pending_per_connection"].default
_DEFAULT_UPSTREAM_CONNECTIONS = ListenerConfig.__dataclass_fields__["upstream_connections_per_endpoint"].default
_TREE_OPS = frozenset({RbacOp.ANY, RbacOp.AND, RbacOp.OR, RbacOp.NOT})
# What Python's re accepts and RE2 (Envoy's engine) refuses: look-around, back-references,
# possessive quantifiers, atomic groups.
_NOT_RE2 = re.compile(r"\(\?<?[=!]|\\[1-9]|\(\?P=|[*+?}]\+|\(\?>")


def percent(fraction: float) -> percent_pb2.FractionalPercent:
    """A fraction (0..1) as Envoy's FractionalPercent per million (the finest it has)."""
    return percent_pb2.FractionalPercent(numerator=round(fraction * MILLION), denominator=percent_pb2.FractionalPercent.MILLION)


def re2_gap(m: AttributeMatcher) -> str:
    """Why RE2 would refuse ``m``'s regex (Envoy would then reject the whole table); "" if not."""
    if m.kind is MatchKind.REGEX and _NOT_RE2.search(m.value):
        return f"regex {m.value!r} is not RE2 syntax (look-around, back-references, possessive or atomic groups): Envoy would reject the route table"
    return ""


def _connection_level(r: RbacRule, *, permission: bool) -> bool:
    """Whether a rule reads only what the connection tells: as a permission the destination port,
    as a principal the peer's identity or address (what Envoy's network RBAC filter can check)."""
    if r.op in _TREE_OPS:
        return all(_connection_level(c, permission=permission) for c in r.children)
    return r.op is RbacOp.DESTINATION_PORT if permission else r.op in (RbacOp.PEER, RbacOp.SOURCE_IP)


def _rbac_connection_level(f: RbacFilter) -> bool:
    return all(
        all(_connection_level(r, permission=True) for r in p.permissions) and all(_connection_level(r, permission=False) for r in p.principals)
        for p in f.policies
    )


def listener_gaps(lst: ListenerConfig, filter_name: str) -> list[Gap]:
    """The listener-level features ``filter_name`` (``thrift_proxy``...) cannot carry (see the
    module docstring for each decision)."""
    gaps: list[Gap] = []
    if lst.local_rate_limit is not None:
        gaps.append(Gap("spec.localRateLimit", f"{filter_name} has no per-request local rate limit (Envoy's network local_ratelimit counts connections): requests would not be limited"))
    if lst.global_rate_limit is not None:
        gaps.append(Gap("spec.globalRateLimit", f"the global rate limit is not translated for {filter_name}: requests would not be limited"))
    for f in lst.rbac:
        if _rbac_connection_level(f):
            continue
        names = ", ".join(p.name for p in f.policies)
        if f.enforced:
            gaps.append(Gap(f"authorization {f.stat_prefix}", f"policies {names} match request attributes, which Envoy's network RBAC filter cannot see in front of {filter_name}: they would not be enforced"))
        else:
            gaps.append(Gap(f"authorization {f.stat_prefix}", f"dry-run policies {names} match request attributes: not evaluated on Envoy (nothing is enforced either way; their counters are missing)", fatal=False))
    if any(_rbac_connection_level(f) and f.enforced for f in lst.rbac):
        gaps.append(Gap("authorization", "enforced by Envoy's network RBAC filter on the connection: a refused client's connection is closed instead of answered with the protocol's error", fatal=False))
    if lst.idle_timeout:
        gaps.append(Gap("spec.trafficPolicy.connectionPool.tcp.idleTimeout", f"{filter_name} has no idle timeout: idle client connections stay open (our proxy closes them after {lst.idle_timeout:g} s)", fatal=False))
    if lst.access_log:
        gaps.append(Gap("access_log", f"access logs are not translated for {filter_name}: Envoy writes none", fatal=False))
    if lst.max_connections and lst.tls is not None and lst.tls.allow_plaintext:
        gaps.append(Gap("max_connections", f"Envoy counts connections per filter chain: a TLS-or-plaintext listener admits {lst.max_connections} TLS "
                                           f"and {lst.max_connections} plaintext connections", fatal=False))  # fmt: skip
    if lst.max_pending_per_connection != _DEFAULT_PENDING:
        gaps.append(Gap("max_pending_per_connection", f"our proxy's read back-pressure bound ({lst.max_pending_per_connection}) has no {filter_name} equivalent", fatal=False))
    if lst.upstream_connections_per_endpoint != _DEFAULT_UPSTREAM_CONNECTIONS:
        gaps.append(Gap("upstream_connections_per_endpoint", f"Envoy sizes its upstream connection pool itself ({lst.upstream_connections_per_endpoint} per endpoint is not carried)", fatal=False))
    return gaps


def envoy_listener(lst: ListenerConfig, proxy: listener_components_pb2.Filter) -> listener_pb2.Listener:
    """The ``Listener`` of ``lst`` with ``proxy`` as its terminal filter: the connection limit and
    connection-level RBAC filters in front of it, TLS as for our proxy (``convert.listener_shell``:
    one chain, or Istio's TLS-or-plaintext pair)."""
    filters: list[listener_components_pb2.Filter] = []
    if lst.max_connections:
        filters.append(convert.connection_limit_filter(lst.stat_prefix, lst.max_connections))
    enforceable = tuple(f for f in lst.rbac if _rbac_connection_level(f))
    filters.extend(listener_components_pb2.Filter(name=NETWORK_RBAC_FILTER, typed_config=typed(m)) for m in rbac.rbac_filters_to_xds(enforceable))
    filters.append(proxy)
    return convert.listener_shell(lst, filters)


def fatal_first(gaps: Sequence[Gap]) -> list[Gap]:
    """Gaps with the fatal ones first (what stops the listener is read first)."""
    return sorted(gaps, key=lambda g: not g.fatal)
