"""Thrift listeners for stock Envoy: ``envoy.filters.network.thrift_proxy`` with its routes over
RDS (``trds``, resource type ``thrift_proxy.v3.RouteConfiguration`` on the ADS stream, named after
the listener), so that a route edit reaches connections already open, as on our proxy.

What maps exactly:

- transport and protocol: the codec's ``transport`` / ``protocol`` settings (framed, unframed,
  header / binary, binary-nonstrict (``LAX_BINARY``), compact), else ``AUTO``;
- route order (first match wins in both);
- ``method`` exact together with ``service`` exact: ``method_name: "<service>:<method>"`` (Envoy
  compares the whole message name, which carries the service under TMultiplexedProtocol);
  ``service`` exact alone: ``service_name`` (Envoy: the name starts with ``<service>:``);
  ``method`` present, or no method/service condition: ``method_name: ""`` (any);
  one exact method or service condition inverted: ``invert``;
- every other attribute is a THeader header: ``headers`` (Envoy's HeaderMatcher, every kind; a
  regex RE2 would refuse is fatal, as Envoy would reject the whole table);
- a single destination, a weighted split (weight-0 destinations left out: they get nothing),
  a subset (``metadata_match`` under ``envoy.lb``), mirrors with their fraction
  (``request_mirror_policies``, ``runtime_fraction`` per million);
- listener TLS, connection limit and connection-level authorization (``network.py``).

Approximated (served, reported as non-fatal gaps):

- ``method`` exact without a ``service`` condition: Envoy compares the whole message name, so a
  multiplexed call ``Svc:m`` does not match ``m`` there (our proxy matches the bare method);
  calls without a service prefix route the same;
- a route timeout other than the default: thrift_proxy has no request timeout (a request waits
  for its reply or its connection's end; our proxy answers ``upstream_timeout``); also true of the
  default 15 s, which is not reported per route;
- retries: thrift_proxy does not retry;
- ``hash_policy`` on a ring-hash/Maglev destination: thrift_proxy computes no hash key, so Envoy
  picks a random point on the ring (same cluster, no affinity);
- ``max_frame_size`` other than the default: Envoy's limit is fixed;
- the listener-level items of ``network.py`` (idle timeout, access log, pooling knobs).

Approximated without a report (nothing in the configuration shows it): ``service`` is the name
before the last ``:`` for our proxy, while Envoy's ``service_name`` is a prefix ``<service>:`` of the
whole name, so they differ only for names with several colons; Envoy's ``AUTO_PROTOCOL`` does not
detect non-strict binary (our proxy's ``auto`` does): set ``protocol: binary-nonstrict`` for it.

Rejected for Envoy (fatal: the route would mean something else there):

- ``method`` or ``service`` by prefix, regex, suffix, contains, ignoring case, or absent; ``service``
  present; several conditions on them with an inversion; ``message_type`` other than present
  (Envoy routes calls and one-ways alike);
- request or response mutations (thrift_proxy cannot set THeader headers: the upstream would not
  get them);
- fault injection (Envoy has no Thrift fault filter: the faults would not happen);
- rate limits and request-level authorization (``network.py``);
- a transport or protocol setting Envoy does not know;
- a listener whose table is not given (``rds_name`` only: our proxy's RDS shape).
"""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.extensions.filters.network.thrift_proxy.router.v3 import router_pb2
from envoy.extensions.filters.network.thrift_proxy.v3 import route_pb2, thrift_proxy_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from aeraki_ctl.envoy.common import THRIFT_ROUTE_TYPE, EnvoyListener, Gap, ads, route_path, typed
from aeraki_ctl.envoy.network import envoy_listener, fatal_first, listener_gaps, percent, re2_gap
from metaprotocol.config.model import DEFAULT_ROUTE_TIMEOUT, HASHING_POLICIES, AttributeMatcher, ClusterConfig, ListenerConfig, MatchKind, RouteRule
from metaprotocol.xds import convert

FILTER = "envoy.filters.network.thrift_proxy"
ROUTER = "envoy.filters.thrift.router"
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
TRANSPORTS = {
    "auto": thrift_proxy_pb2.AUTO_TRANSPORT,
    "framed": thrift_proxy_pb2.FRAMED,
    "unframed": thrift_proxy_pb2.UNFRAMED,
    "header": thrift_proxy_pb2.HEADER,
}
PROTOCOLS = {
    "auto": thrift_proxy_pb2.AUTO_PROTOCOL,
    "binary": thrift_proxy_pb2.BINARY,
    "binary-nonstrict": thrift_proxy_pb2.LAX_BINARY,
    "compact": thrift_proxy_pb2.COMPACT,
}
_NAME_ATTRIBUTES = frozenset({"method", "service", "message_type"})


def _exact(m: AttributeMatcher) -> bool:
    return m.kind is MatchKind.EXACT and not m.ignore_case


def _describe(m: AttributeMatcher) -> str:
    flags = (" inverted" if m.invert else "") + (" ignoring case" if m.ignore_case else "")
    return f"{m.name} {m.kind.value}{flags}"


def route_match(i: int, rule: RouteRule, gaps: list[Gap]) -> route_pb2.RouteMatch:
    """The thrift_proxy match of one rule (see the module docstring); what it cannot express is
    added to ``gaps``."""
    path = route_path(i, rule, "match")
    names = {m.name: m for m in rule.match if m.name in _NAME_ATTRIBUTES}
    headers = [convert.header_matcher(m) for m in rule.match if m.name not in _NAME_ATTRIBUTES]
    for m in rule.match:
        if m.name not in _NAME_ATTRIBUTES and re2_gap(m):
            gaps.append(Gap(f"{path}.attributes.{m.name}", re2_gap(m)))
    out = route_pb2.RouteMatch(headers=headers)
    method, service, mtype = names.get("method"), names.get("service"), names.get("message_type")
    if len([m for m in rule.match if m.name in _NAME_ATTRIBUTES]) != len(names):
        gaps.append(Gap(path, "several conditions on one of method/service/message_type: thrift_proxy has one name condition per route"))
    if mtype is not None and not (mtype.kind is MatchKind.PRESENT and mtype.value != "false" and not mtype.invert):
        gaps.append(Gap(f"{path}.attributes.message_type", f"thrift_proxy routes calls and one-ways alike: {_describe(mtype)} cannot be expressed"))
    if method is not None and method.kind is MatchKind.PRESENT and method.value != "false" and not method.invert:
        method = None  # every message has a method: no condition
    inexact = [m for m in (method, service) if m is not None and not _exact(m)]
    for m in inexact:
            gaps.append(Gap(f"{path}.attributes.{m.name}", f"thrift_proxy compares the message name exactly ({'method_name' if m.name == 'method' else 'service_name: a <service>: prefix'}): {_describe(m)} cannot be expressed"))
    if inexact:
        return out
    if method is not None and service is not None:
        if method.invert or service.invert:
            gaps.append(Gap(path, "thrift_proxy inverts a route's one name condition: an inverted method or service together with the other cannot be expressed"))
        out.method_name = f"{service.value}:{method.value}"
    elif method is not None:
        out.method_name = method.value
        out.invert = method.invert
        gaps.append(Gap(f"{path}.attributes.method", f"Envoy compares the whole message name: a multiplexed call '<service>:{method.value}' does not match this route there (our proxy matches the bare method); calls without a service prefix route the same", fatal=False))
    elif service is not None:
        out.service_name = service.value
        out.invert = service.invert
    else:
        out.method_name = ""  # any
    return out


def _metadata_match(subset: tuple[tuple[str, str], ...]) -> base_pb2.Metadata:
    fields = struct_pb2.Struct()
    fields.update(dict(subset))
    md = base_pb2.Metadata()
    md.filter_metadata["envoy.lb"].CopyFrom(fields)
    return md


def route_action(i: int, rule: RouteRule, clusters: Mapping[str, ClusterConfig], gaps: list[Gap]) -> route_pb2.RouteAction:
    """Where a rule sends, mirrors included; what thrift_proxy cannot do is added to ``gaps``."""
    a = rule.action
    out = route_pb2.RouteAction()
    served = [w for w in a.weighted_clusters if w.weight > 0]
    if a.cluster is not None:
        out.cluster = a.cluster
    elif len(served) == 1:
        out.cluster = served[0].name
    else:
        out.weighted_clusters.CopyFrom(
            route_pb2.WeightedCluster(clusters=[route_pb2.WeightedCluster.ClusterWeight(name=w.name, weight=wrappers_pb2.UInt32Value(value=w.weight)) for w in served])
        )
    if a.subset:
        out.metadata_match.CopyFrom(_metadata_match(a.subset))
    for m in rule.mirrors:
        out.request_mirror_policies.add(cluster=m.cluster).runtime_fraction.default_value.CopyFrom(percent(m.fraction))
    hashing = [n for n in a.cluster_names() if n in clusters and clusters[n].lb_policy in HASHING_POLICIES and len(clusters[n].endpoints) > 1]
    if a.hash_policy and hashing:
        gaps.append(Gap(route_path(i, rule, "route"), f"thrift_proxy computes no hash key: {', '.join(hashing)} ({clusters[hashing[0]].lb_policy.value}) picks endpoints at random there, not by {', '.join(a.hash_policy)}", fatal=False))
    if a.timeout != DEFAULT_ROUTE_TIMEOUT:
        gaps.append(Gap(route_path(i, rule, "timeout"), f"thrift_proxy has no request timeout ({a.timeout:g} s here): a request waits for its reply or its connection's end", fatal=False))
    if rule.retry is not None:
        gaps.append(Gap(route_path(i, rule, "retry"), "thrift_proxy does not retry: a failed request fails at once", fatal=False))
    if rule.fault is not None:
        gaps.append(Gap(route_path(i, rule, "fault"), "Envoy has no Thrift fault injection: the delays and aborts would not happen"))
    for fname, json in (("request_mutation", "requestMutation"), ("response_mutation", "responseMutation")):
        if getattr(rule, fname):
            gaps.append(Gap(route_path(i, rule, json), "thrift_proxy cannot set THeader headers: the peer would not get them"))
    return out


def route_config(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig], gaps: list[Gap]) -> route_pb2.RouteConfiguration:
    """The listener's route table as thrift_proxy's RouteConfiguration (named after the listener)."""
    rules = lst.route_config.routes if lst.route_config is not None else ()
    out = route_pb2.RouteConfiguration(name=lst.name)
    for i, rule in enumerate(rules):
        out.routes.add(match=route_match(i, rule, gaps), route=route_action(i, rule, clusters, gaps))
    return out


def codec_settings(lst: ListenerConfig, gaps: list[Gap]) -> tuple[int, int]:
    """Transport and protocol from the codec settings (AUTO when unset)."""
    cfg = lst.codec.config
    transport = TRANSPORTS.get(str(cfg.get("transport", "auto")))
    protocol = PROTOCOLS.get(str(cfg.get("protocol", "auto")))
    if transport is None:
        gaps.append(Gap("codec.transport", f"transport {cfg.get('transport')!r}: thrift_proxy knows {', '.join(TRANSPORTS)}"))
    if protocol is None:
        gaps.append(Gap("codec.protocol", f"protocol {cfg.get('protocol')!r}: thrift_proxy knows {', '.join(PROTOCOLS)}"))
    size = cfg.get("max_frame_size", DEFAULT_MAX_FRAME)
    if size != DEFAULT_MAX_FRAME:
        gaps.append(Gap("codec.max_frame_size", f"Envoy's frame size limit is fixed (about 16 MB), not {size}", fatal=False))
    return transport or 0, protocol or 0


def listener(lst: ListenerConfig, clusters: Mapping[str, ClusterConfig]) -> EnvoyListener:
    """``lst`` as a thrift_proxy listener with its route table over RDS, or its fatal gaps."""
    gaps = listener_gaps(lst, "thrift_proxy")
    if lst.route_config is None:
        gaps.append(Gap("", f"the listener's routes come over RDS ({lst.rds_name}) in our proxy's shape: aeraki-ctl must give the table itself to translate it"))
    transport, protocol = codec_settings(lst, gaps)
    routes = route_config(lst, clusters, gaps)
    gaps = fatal_first(gaps)
    if any(g.fatal for g in gaps):
        return EnvoyListener(None, gaps=gaps)
    proxy = thrift_proxy_pb2.ThriftProxy(
        stat_prefix=lst.stat_prefix,
        transport=transport,
        protocol=protocol,
        trds=thrift_proxy_pb2.Trds(config_source=ads(), route_config_name=routes.name),
        thrift_filters=[thrift_proxy_pb2.ThriftFilter(name=ROUTER, typed_config=typed(router_pb2.Router()))],
    )
    msg = envoy_listener(lst, listener_components_pb2.Filter(name=FILTER, typed_config=typed(proxy)))
    return EnvoyListener(msg, routes=[(THRIFT_ROUTE_TYPE, routes.name, routes)], gaps=gaps)
