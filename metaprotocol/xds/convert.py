"""The one module that converts between the config model and protobuf: xDS resources and the bootstrap.

A static bootstrap file is Envoy's ``envoy.config.bootstrap.v3.Bootstrap`` (read by
``metaprotocol.config.bootstrap`` with :mod:`metaprotocol.xds.typed`), converted here by
:func:`bootstrap_from_xds` with the same functions as xDS resources; ``metaprotocol.config.dump``
writes one with :func:`bootstrap_to_xds`. Fields a message has that this proxy does not honour
are refused with their path (:class:`ConversionError`), except those accepted and ignored as in
docs/configuration.md.

Routes travel as Envoy's HTTP ``RouteConfiguration`` (one virtual host; header matchers are
attribute matchers; ``request_headers_to_add`` are request mutations), exactly as Aeraki serves
MetaProtocol routes, so stock Envoy accepts them. Listeners carry the MetaProtocol filter config
(``aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy``) with RDS over ADS. Clusters are EDS
clusters; our extensions (key hash function, hash tag, consecutive timeouts) ride in the cluster's
metadata. A listener's connection bound is Envoy's connection_limit filter before the MetaProtocol
one; TCP keepalive and the health check are Envoy's own cluster fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Final

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2 as _raw_buffer  # noqa: F401 - known to the descriptor pool
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from udpa.type.v1 import typed_struct_pb2 as _udpa_typed_struct  # noqa: F401 - known to the descriptor pool (TypedStruct)
from xds.type.v3 import typed_struct_pb2 as _xds_typed_struct  # noqa: F401
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, message, struct_pb2, wrappers_pb2

from metaprotocol.config.model import (  # TLS
    ECDH_CURVES,
    TLS_VERSIONS,
    CommonTls,
    DataSource,
    DownstreamTls,
    SanMatcher,
    SanType,
    TlsParams,
    UpstreamTls,
)
from metaprotocol.config.model import (
    DEFAULT_ROUTE_TIMEOUT as _DEFAULT_ROUTE_TIMEOUT,
    HASH_FUNCTIONS,
    AdminConfig,
    Bootstrap,
    OverloadConfig,
    DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
    DEFAULT_MIN_RETRY_CONCURRENCY,
    DEFAULT_RETRY_BUDGET_PERCENT,
    parse_retry_on,
    AccessLog,
    CircuitBreakers,
    FaultPolicy,
    GlobalRateLimit,
    RbacFilter,
    HealthCheck,
    HealthCheckKind,
    OutlierDetection,
    TcpKeepalive,
    LocalRateLimit,
    MirrorPolicy,
    RateLimitCondition,
    RetryPolicy,
    TokenBucket,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
    AttributeMatcher,
    ClusterConfig,
    CodecRef,
    Endpoint,
    LbPolicy,
    ListenerConfig,
    MatchKind,
    RouteAction,
    RouteConfig,
    RouteRule,
    WeightedCluster,
)
from metaprotocol_api.aeraki.meta_protocol_proxy.config.route.v1alpha import route_pb2 as mp_route
from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2 as rls_config_pb2
from metaprotocol_api.aeraki.meta_protocol_proxy.filters.local_ratelimit.v1alpha import local_ratelimit_pb2
from metaprotocol_api.aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha import ratelimit_pb2
from metaprotocol_api.aeraki.meta_protocol_proxy.v1alpha import meta_protocol_proxy_pb2 as mpp
from metaprotocol_api.metaprotocol.resource_monitors.v1 import pending_requests_pb2

LOCAL_RATELIMIT_FILTER = "aeraki.meta_protocol.filters.local_ratelimit"
GLOBAL_RATELIMIT_FILTER = "aeraki.meta_protocol.filters.ratelimit"
ROUTER_FILTER = "aeraki.meta_protocol.filters.router"
FAULT_METADATA = "metaprotocol.fault"
_MILLION = 1_000_000

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
FILTER_NAME = "aeraki.meta_protocol_proxy"
FILTER_NAMES: Final = frozenset({FILTER_NAME, "envoy.filters.network.meta_protocol_proxy", "metaprotocol.proxy"})
PROXY_TYPE: Final = "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
CONNECTION_LIMIT_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
LOCAL_RATELIMIT_TYPE: Final = "type.googleapis.com/aeraki.meta_protocol_proxy.filters.local_ratelimit.v1alpha.LocalRateLimit"
GLOBAL_RATELIMIT_TYPE: Final = "type.googleapis.com/aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha.RateLimit"
STRUCT_TYPE: Final = "type.googleapis.com/google.protobuf.Struct"
FILE_ACCESS_LOG_TYPE: Final = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_ACCESS_LOG_TYPE: Final = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
FIXED_HEAP_MONITOR: Final = "envoy.resource_monitors.fixed_heap"
CONNECTIONS_MONITOR: Final = "envoy.resource_monitors.global_downstream_max_connections"
PENDING_REQUESTS_MONITOR: Final = "metaprotocol.resource_monitors.pending_requests"
OVERLOAD_MONITORS: Final = {
    # monitor name -> (the message of its typed_config, the field read)
    FIXED_HEAP_MONITOR: (fixed_heap_pb2.FixedHeapConfig, "max_heap_size_bytes"),
    CONNECTIONS_MONITOR: (downstream_connections_pb2.DownstreamConnectionsConfig, "max_active_downstream_connections"),
    PENDING_REQUESTS_MONITOR: (pending_requests_pb2.PendingRequestsConfig, "max_pending_requests"),
}
OVERLOAD_ACTIONS: Final = frozenset({"envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.stop_accepting_connections"})
FAULT_KINDS: Final = frozenset(
    {"route_not_found", "cluster_not_found", "no_healthy_upstream", "upstream_timeout", "upstream_reset", "connect_failure", "bad_request", "bad_response", "over_limit", "unsupported", "internal"}
)
CONNECTION_LIMIT_FILTER = "envoy.filters.network.connection_limit"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
CODEC_HEALTH_CHECKER = "metaprotocol.health_checkers.codec"
EXT_METADATA = "metaprotocol"
# Health check fields read; those accepted and ignored (as in a bootstrap); any other set field is refused.
_HEALTH_CHECK_FIELDS = frozenset({"timeout", "interval", "unhealthy_threshold", "healthy_threshold", "tcp_health_check", "custom_health_check"})
_HEALTH_CHECK_IGNORED = frozenset(
    {
        "initial_jitter", "interval_jitter", "interval_jitter_percent", "reuse_connection", "event_log_path",
        "event_logger", "always_log_health_check_failures", "always_log_health_check_success",
    }
)  # fmt: skip
_LB = {
    LbPolicy.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    LbPolicy.RANDOM: cluster_pb2.Cluster.RANDOM,
    LbPolicy.LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
    LbPolicy.RING_HASH: cluster_pb2.Cluster.RING_HASH,
    LbPolicy.MAGLEV: cluster_pb2.Cluster.MAGLEV,
}
_LB_BACK = {v: k for k, v in _LB.items()}


def type_url(desc: object) -> str:
    """``type.googleapis.com/<full name>`` of a message class or descriptor."""
    d = getattr(desc, "DESCRIPTOR", desc)
    return f"type.googleapis.com/{d.full_name}"  # type: ignore[attr-defined]


class ConversionError(ValueError):
    """A resource cannot be expressed in the config model (an update to NACK; a bootstrap error).

    ``where`` names the resource (``cluster c``), ``path`` the field inside it
    (``health_checks[0].interval``; empty: the resource as a whole) and ``reason`` what is wrong.
    """

    def __init__(self, where: str, reason: str = "", path: str = "") -> None:
        if not reason:  # one sentence
            where, reason = "", where
        parts = [p for p in (where, path) if p]
        super().__init__(": ".join([*parts, reason]))
        self.where, self.path, self.reason = where, path, reason


def _join(path: str, key: str) -> str:
    if key.startswith("["):
        return f"{path}{key}"
    return f"{path}.{key}" if path else key


def _unpack(packed: any_pb2.Any, msg: message.Message, where: str, path: str) -> bool:
    """``packed.Unpack(msg)`` (False: another type), with bytes that do not decode a
    ConversionError at ``path``, never a protobuf DecodeError."""
    try:
        return bool(packed.Unpack(msg))
    except message.DecodeError as exc:
        raise ConversionError(where, f"cannot be decoded ({exc})", path) from None


def _only(msg: message.Message, where: str, path: str, read: Iterable[str], ignored: Iterable[str] = ()) -> None:
    """Refuse every field set in ``msg`` that is neither read nor accepted-and-ignored."""
    allowed = {*read, *ignored}
    for field, _ in msg.ListFields():
        if field.name not in allowed:
            raise ConversionError(where, f"{field.name} is not supported by this proxy", _join(path, field.name))


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _seconds(d: duration_pb2.Duration) -> float:
    return float(d.ToNanoseconds()) / 1e9


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3)


def _address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


# -- model -> xDS ---------------------------------------------------------------------------------


def header_matcher(m: AttributeMatcher) -> route_components_pb2.HeaderMatcher:
    """An Envoy HeaderMatcher for an attribute matcher."""
    h = route_components_pb2.HeaderMatcher(name=m.name, invert_match=m.invert)
    if m.kind is MatchKind.PRESENT:
        h.present_match = m.value != "false"
        return h
    sm = string_pb2.StringMatcher(ignore_case=m.ignore_case)
    if m.kind is MatchKind.EXACT:
        sm.exact = m.value
    elif m.kind is MatchKind.PREFIX:
        sm.prefix = m.value
    elif m.kind is MatchKind.SUFFIX:
        sm.suffix = m.value
    elif m.kind is MatchKind.CONTAINS:
        sm.contains = m.value
    else:
        sm.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=m.value))  # google_re2 is deprecated (RE2 is the default engine)
    h.string_match.CopyFrom(sm)
    return h


def _percent(fraction: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(numerator=round(fraction * _MILLION), denominator=percent_pb2.FractionalPercent.MILLION)


def _fraction(p: percent_pb2.FractionalPercent) -> float:
    scale = {percent_pb2.FractionalPercent.HUNDRED: 100, percent_pb2.FractionalPercent.TEN_THOUSAND: 10_000, percent_pb2.FractionalPercent.MILLION: _MILLION}
    return min(1.0, float(p.numerator) / scale[p.denominator])


def _bucket_to_xds(b: TokenBucket) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(max_tokens=b.max_tokens, tokens_per_fill=wrappers_pb2.UInt32Value(value=b.tokens_per_fill), fill_interval=_duration(b.fill_interval))


def _bucket_from_xds(b: token_bucket_pb2.TokenBucket) -> TokenBucket:
    return TokenBucket(b.max_tokens, b.tokens_per_fill.value if b.HasField("tokens_per_fill") else 1, _seconds(b.fill_interval))


def route_config_to_xds(rc: RouteConfig) -> route_pb2.RouteConfiguration:
    """A route table as Envoy's HTTP RouteConfiguration (Aeraki's RDS shape)."""
    routes = []
    for rule in rc.routes:
        a = rule.action
        action = route_components_pb2.RouteAction()
        if a.cluster is not None:
            action.cluster = a.cluster
        else:
            action.weighted_clusters.CopyFrom(
                route_components_pb2.WeightedCluster(
                    clusters=[route_components_pb2.WeightedCluster.ClusterWeight(name=w.name, weight=wrappers_pb2.UInt32Value(value=w.weight)) for w in a.weighted_clusters]
                )
            )
        for key in a.hash_policy:
            action.hash_policy.add(header=route_components_pb2.RouteAction.HashPolicy.Header(header_name=key))
        if a.subset:
            fields = struct_pb2.Struct()
            fields.update(dict(a.subset))
            action.metadata_match.filter_metadata["envoy.lb"].CopyFrom(fields)
        action.timeout.CopyFrom(_duration(a.timeout))
        for m in rule.mirrors:
            policy = action.request_mirror_policies.add(cluster=m.cluster)
            policy.runtime_fraction.default_value.CopyFrom(_percent(m.fraction))
        if rule.retry is not None:
            action.retry_policy.CopyFrom(
                route_components_pb2.RetryPolicy(
                    retry_on=rule.retry.retry_on_text(),
                    num_retries=wrappers_pb2.UInt32Value(value=rule.retry.num_retries),
                    per_try_timeout=_duration(rule.retry.per_try_timeout),
                )
            )
        route = route_components_pb2.Route(
            name=rule.name,
            match=route_components_pb2.RouteMatch(prefix="/", headers=[header_matcher(m) for m in rule.match]),
            route=action,
        )
        for k, v in rule.request_mutation:
            route.request_headers_to_add.add(header=base_pb2.HeaderValue(key=k, value=v))
        for k, v in rule.response_mutation:
            route.response_headers_to_add.add(header=base_pb2.HeaderValue(key=k, value=v))
        if rule.fault is not None:
            f = rule.fault
            fault = struct_pb2.Struct()
            fault.update({"delay": f.delay, "delay_fraction": f.delay_fraction, "abort_kind": f.abort_kind, "abort_fraction": f.abort_fraction})
            route.metadata.filter_metadata[FAULT_METADATA].CopyFrom(fault)
        routes.append(route)
    return route_pb2.RouteConfiguration(name=rc.name, virtual_hosts=[route_components_pb2.VirtualHost(name=rc.name, domains=["*"], routes=routes)])


def _mp_route_config_to_xds(rc: RouteConfig) -> mp_route.RouteConfiguration:
    """A route table inline in the MetaProtocol filter (Aeraki's RouteConfiguration)."""
    out = mp_route.RouteConfiguration(name=rc.name)
    for rule in rc.routes:
        a = rule.action
        action = mp_route.RouteAction(hash_policy=list(a.hash_policy))
        if a.cluster is not None:
            action.cluster = a.cluster
        else:
            action.weighted_clusters.CopyFrom(
                route_components_pb2.WeightedCluster(
                    clusters=[route_components_pb2.WeightedCluster.ClusterWeight(name=w.name, weight=wrappers_pb2.UInt32Value(value=w.weight)) for w in a.weighted_clusters]
                )
            )
        if a.subset:
            fields = struct_pb2.Struct()
            fields.update(dict(a.subset))
            action.metadata_match.filter_metadata["envoy.lb"].CopyFrom(fields)
        if a.timeout != _DEFAULT_ROUTE_TIMEOUT:
            action.timeout.CopyFrom(_duration(a.timeout))
        for m in rule.mirrors:
            action.request_mirror_policies.add(cluster=m.cluster).runtime_fraction.default_value.CopyFrom(_percent(m.fraction))
        if rule.retry is not None:
            action.retry_policy.CopyFrom(
                mp_route.RetryPolicy(
                    retry_on=",".join(sorted(rule.retry.retry_on)) or "",
                    num_retries=wrappers_pb2.UInt32Value(value=rule.retry.num_retries),
                    per_try_timeout=_duration(rule.retry.per_try_timeout),
                    retry_non_idempotent=rule.retry.retry_non_idempotent,
                )
            )
        route = out.routes.add(name=rule.name, match=mp_route.RouteMatch(metadata=[header_matcher(m) for m in rule.match]), route=action)
        route.request_mutation.extend(mp_route.KeyValue(key=k, value=v) for k, v in rule.request_mutation)
        route.response_mutation.extend(mp_route.KeyValue(key=k, value=v) for k, v in rule.response_mutation)
        if rule.fault is not None:
            f = rule.fault
            route.fault.delay.fixed_delay.CopyFrom(_duration(f.delay))
            route.fault.delay.percentage.CopyFrom(_percent(f.delay_fraction))
            route.fault.abort.error = f.abort_kind
            route.fault.abort.percentage.CopyFrom(_percent(f.abort_fraction))
    return out


def listener_to_xds(lst: ListenerConfig, rds_name: str | None = None, *, inline_routes: bool = False) -> listener_pb2.Listener:
    """A listener running the MetaProtocol filter, with its routes over RDS (ADS), or, with
    ``inline_routes`` and a static route table (a bootstrap), the table in the filter."""
    cfg = mpp.MetaProtocolProxy(
        stat_prefix=lst.stat_prefix,
        protocol=mpp.ApplicationProtocol(name=lst.protocol or lst.codec.name, codec=mpp.Codec(name=lst.codec.name)),
        max_pending_per_connection=lst.max_pending_per_connection,
        upstream_connections_per_endpoint=lst.upstream_connections_per_endpoint,
    )
    if lst.codec.config:
        settings = struct_pb2.Struct()
        settings.update(dict(lst.codec.config))
        cfg.protocol.codec.config.Pack(settings)
    if inline_routes and lst.route_config is not None:
        cfg.route_config.CopyFrom(_mp_route_config_to_xds(lst.route_config))
    else:
        cfg.rds.CopyFrom(mpp.Rds(config_source=_ads(), route_config_name=rds_name or lst.rds_name or (lst.route_config.name if lst.route_config else lst.name)))
    if lst.idle_timeout:
        cfg.idle_timeout.CopyFrom(_duration(lst.idle_timeout))
    if lst.local_rate_limit is not None:
        limit = local_ratelimit_pb2.LocalRateLimit(stat_prefix=lst.stat_prefix)
        if lst.local_rate_limit.default is not None:
            limit.token_bucket.CopyFrom(_bucket_to_xds(lst.local_rate_limit.default))
        for c in lst.local_rate_limit.conditions:
            limit.conditions.add(match=mp_route.RouteMatch(metadata=[header_matcher(m) for m in c.match]), token_bucket=_bucket_to_xds(c.bucket))
        packed = any_pb2.Any()
        packed.Pack(limit)
        cfg.meta_protocol_filters.add(name=LOCAL_RATELIMIT_FILTER, config=packed)
    if lst.rbac:
        from metaprotocol.xds import rbac as _rbac  # it builds on this module's matchers

        for msg_rbac in _rbac.rbac_filters_to_xds(lst.rbac):
            packed = any_pb2.Any()
            packed.Pack(msg_rbac)
            cfg.meta_protocol_filters.add(name=_rbac.RBAC_FILTER, config=packed)
    if lst.global_rate_limit is not None:
        g = lst.global_rate_limit
        grl = ratelimit_pb2.RateLimit(
            match=mp_route.RouteMatch(metadata=[header_matcher(m) for m in g.match]),
            domain=g.domain,
            timeout=_duration(g.timeout),
            failure_mode_deny=g.deny_on_fail,
            rate_limit_service=rls_config_pb2.RateLimitServiceConfig(
                grpc_service=grpc_service_pb2.GrpcService(envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=g.service_cluster)),
                transport_api_version=config_source_pb2.V3,
            ),
            descriptors=[ratelimit_pb2.RateLimit.Descriptor(property=p, descriptor_key=k) for p, k in g.descriptors],
        )
        packed = any_pb2.Any()
        packed.Pack(grl)
        cfg.meta_protocol_filters.add(name=GLOBAL_RATELIMIT_FILTER, config=packed)
    if cfg.meta_protocol_filters:
        cfg.meta_protocol_filters.add(name=ROUTER_FILTER)
    for a in lst.access_log:
        fmt = struct_pb2.Struct()
        fmt.update(dict(a.fields))
        file_log = file_pb2.FileAccessLog(path=a.path)
        file_log.log_format.json_format.CopyFrom(fmt)
        packed = any_pb2.Any()
        packed.Pack(file_log)
        cfg.access_log.add(name="envoy.access_loggers.file", typed_config=packed)
    typed = any_pb2.Any()
    typed.Pack(cfg)
    filters = [connection_limit_filter(lst.stat_prefix, lst.max_connections)] if lst.max_connections else []
    filters.append(listener_components_pb2.Filter(name=FILTER_NAME, typed_config=typed))
    return listener_shell(lst, filters)


def connection_limit_filter(stat_prefix: str, max_connections: int) -> listener_components_pb2.Filter:
    """Envoy's ``connection_limit`` network filter (first in a chain): connections past the
    limit are closed at once."""
    limit_cfg = any_pb2.Any()
    limit_cfg.Pack(connection_limit_pb2.ConnectionLimit(stat_prefix=stat_prefix, max_connections=wrappers_pb2.UInt64Value(value=max_connections)))
    return listener_components_pb2.Filter(name=CONNECTION_LIMIT_FILTER, typed_config=limit_cfg)


def listener_shell(lst: ListenerConfig, filters: Sequence[listener_components_pb2.Filter]) -> listener_pb2.Listener:
    """The ``Listener`` of ``lst`` running ``filters`` (its name, address and TLS; see
    ``filter_chains``): our proxy's and, with Envoy's own filters, stock Envoy's."""
    listener_filters, chains = filter_chains(filters, lst.tls)
    return listener_pb2.Listener(
        name=lst.name,
        address=_address(lst.address, lst.port),
        listener_filters=listener_filters,
        filter_chains=chains,
        # TLS or plaintext: a client silent past the inspector's timeout is served in plaintext (Istio's setting)
        continue_on_listener_filters_timeout=bool(listener_filters),
    )


def filter_chains(
    filters: Sequence[listener_components_pb2.Filter], tls: DownstreamTls | None
) -> tuple[list[listener_components_pb2.ListenerFilter], list[listener_components_pb2.FilterChain]]:
    """A listener's listener filters and filter chains running ``filters``: one chain (with TLS
    or not), or, for TLS that allows plaintext too (Istio's PERMISSIVE), Istio's shape: a
    ``tls_inspector`` and two chains, ``transport_protocol: tls`` with the TLS context and
    ``raw_buffer`` without. Envoy's own filters (aeraki_ctl.envoy) are wrapped the same way."""
    if tls is None:
        return [], [listener_components_pb2.FilterChain(filters=filters)]
    secure = listener_components_pb2.FilterChain(filters=filters, transport_socket=downstream_tls_to_xds(tls))
    if not tls.allow_plaintext:
        return [], [secure]
    secure.filter_chain_match.transport_protocol = "tls"
    plain = listener_components_pb2.FilterChain(filters=filters, filter_chain_match=listener_components_pb2.FilterChainMatch(transport_protocol="raw_buffer"))
    inspector = any_pb2.Any()
    inspector.Pack(tls_inspector_pb2.TlsInspector())
    return [listener_components_pb2.ListenerFilter(name=TLS_INSPECTOR, typed_config=inspector)], [secure, plain]


def _chain_of(lst: listener_pb2.Listener, where: str) -> tuple[int, bool]:
    """The filter chain to read (its index), and whether plaintext is allowed beside TLS: one
    chain, or Istio's PERMISSIVE pair (``filter_chains``' docstring) with the same filters."""
    chains = lst.filter_chains
    if len(chains) == 1:
        return 0, False
    if len(chains) == 2:  # noqa: PLR2004
        kinds = [c.filter_chain_match.transport_protocol for c in chains]
        if sorted(kinds) == ["raw_buffer", "tls"]:
            i, j = kinds.index("tls"), kinds.index("raw_buffer")
            for k, chain in enumerate(chains):
                _only(chain.filter_chain_match, where, f"filter_chains[{k}].filter_chain_match", {"transport_protocol"})
            if chains[j].HasField("transport_socket"):
                raise ConversionError(where, "the raw_buffer filter chain of a TLS-or-plaintext listener has no transport socket", f"filter_chains[{j}].transport_socket")
            if not chains[i].HasField("transport_socket"):
                raise ConversionError(where, "the tls filter chain needs a transport_socket (DownstreamTlsContext)", f"filter_chains[{i}].transport_socket")
            same = [f.SerializeToString(deterministic=True) for f in chains[i].filters] == [f.SerializeToString(deterministic=True) for f in chains[j].filters]
            if not same:
                raise ConversionError(where, "the tls and raw_buffer filter chains must run the same filters", f"filter_chains[{j}].filters")
            return i, True
    raise ConversionError(
        where, "exactly one filter chain is supported, or two that differ only by filter_chain_match.transport_protocol tls/raw_buffer (TLS or plaintext)", "filter_chains"
    )


def cluster_to_xds(c: ClusterConfig, *, static: bool = False) -> cluster_pb2.Cluster:
    """An EDS cluster (endpoints come as a ClusterLoadAssignment), or with ``static`` (a
    bootstrap) a STATIC one with its endpoints inline."""
    out = cluster_pb2.Cluster(name=c.name, lb_policy=_LB[c.lb_policy], connect_timeout=_duration(c.connect_timeout))
    if static:
        out.type = cluster_pb2.Cluster.STATIC
        out.load_assignment.CopyFrom(endpoints_to_xds(c))
    else:
        out.type = cluster_pb2.Cluster.EDS
        out.eds_cluster_config.CopyFrom(cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()))
    if c.circuit_breakers is not None:
        # Unset limits stay unset: to Envoy a 0 means "none allowed", to us "no limit".
        cb = c.circuit_breakers
        t = out.circuit_breakers.thresholds.add()
        for field, value in (("max_requests", cb.max_requests), ("max_pending_requests", cb.max_pending_requests), ("max_retries", cb.max_retries)):
            if value:
                getattr(t, field).value = value
        if cb.retry_budget_percent > 0:
            t.retry_budget.budget_percent.value = cb.retry_budget_percent
            t.retry_budget.min_retry_concurrency.value = cb.min_retry_concurrency
    if c.outlier_detection is not None:
        od = c.outlier_detection
        out.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_errors),
                base_ejection_time=_duration(od.base_ejection_time),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
            )
        )
    if c.tcp_keepalive is not None:
        k = c.tcp_keepalive  # UInt32Values, whole seconds; unset: the OS default
        keepalive = out.upstream_connection_options.tcp_keepalive
        keepalive.SetInParent()
        for field, number in (("keepalive_probes", k.probes), ("keepalive_time", round(k.time)), ("keepalive_interval", round(k.interval))):
            if number:
                getattr(keepalive, field).value = number
    if c.health_check is not None:
        hc = c.health_check
        check = out.health_checks.add(
            timeout=_duration(hc.timeout),
            interval=_duration(hc.interval),
            unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
            healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
        )
        if hc.kind is HealthCheckKind.TCP:
            check.tcp_health_check.SetInParent()  # no payload: a connect
        else:
            check.custom_health_check.name = CODEC_HEALTH_CHECKER
            check.custom_health_check.typed_config.Pack(struct_pb2.Struct())
    if c.tls is not None:
        out.transport_socket.CopyFrom(upstream_tls_to_xds(c.tls))
    extensions: dict[str, object] = {}
    if c.hash_function != "md5" or c.hash_tag:
        extensions.update({"hash_function": c.hash_function, "hash_tag": c.hash_tag})
    if c.max_consecutive_timeouts != DEFAULT_MAX_CONSECUTIVE_TIMEOUTS:
        extensions["max_consecutive_timeouts"] = c.max_consecutive_timeouts
    if extensions:
        ext = struct_pb2.Struct()
        ext.update(extensions)
        out.metadata.filter_metadata[EXT_METADATA].CopyFrom(ext)
    return out


def endpoints_to_xds(c: ClusterConfig) -> endpoint_pb2.ClusterLoadAssignment:
    """The cluster's endpoints, with their labels under ``envoy.lb``."""
    lbes = []
    for e in c.endpoints:
        lbe = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=_address(e.address, e.port)), load_balancing_weight=wrappers_pb2.UInt32Value(value=e.weight))
        if e.labels:
            labels = struct_pb2.Struct()
            labels.update(dict(e.labels))
            lbe.metadata.filter_metadata["envoy.lb"].CopyFrom(labels)
        lbes.append(lbe)
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=c.name, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lbes)] if lbes else [])




def overload_to_xds(o: OverloadConfig) -> overload_pb2.OverloadManager:
    """Envoy's ``overload_manager`` with a resource monitor for each bound that is not the default
    (the heap bound as the fixed heap monitor's size, with no action scaling it)."""
    defaults = OverloadConfig()
    out = overload_pb2.OverloadManager(refresh_interval=_duration(o.refresh_interval))
    for name, value, default in (
        (FIXED_HEAP_MONITOR, o.max_heap_size_bytes, defaults.max_heap_size_bytes),
        (CONNECTIONS_MONITOR, o.max_active_downstream_connections, defaults.max_active_downstream_connections),
        (PENDING_REQUESTS_MONITOR, o.max_pending_requests, defaults.max_pending_requests),
    ):
        if value != default:
            cls, key = OVERLOAD_MONITORS[name]
            out.resource_monitors.add(name=name).typed_config.Pack(cls(**{key: value}))
    return out


def bootstrap_to_xds(b: Bootstrap) -> bootstrap_pb2.Bootstrap:
    """The whole configuration as Envoy's Bootstrap: static listeners (inline route tables) and
    STATIC clusters, the admin address, the node id and the process bounds."""
    out = bootstrap_pb2.Bootstrap()
    out.static_resources.SetInParent()
    out.static_resources.listeners.extend(listener_to_xds(lst, inline_routes=True) for lst in b.listeners)
    out.static_resources.clusters.extend(cluster_to_xds(c, static=True) for c in b.clusters)
    if b.admin is not None:
        out.admin.address.CopyFrom(_address(b.admin.address, b.admin.port))
    if b.node_id:
        out.node.id = b.node_id
    if b.overload != OverloadConfig():
        out.overload_manager.CopyFrom(overload_to_xds(b.overload))
    return out


# -- xDS -> model ---------------------------------------------------------------------------------


def _nonneg_port(sa: address_pb2.SocketAddress, where: str, path: str) -> tuple[str, int]:
    if sa.port_value > 65535:  # noqa: PLR2004
        raise ConversionError(where, "port out of range", _join(path, "port_value"))
    if not sa.address:
        raise ConversionError(where, "required", _join(path, "address"))
    return sa.address, sa.port_value


def _socket_address(a: address_pb2.Address, where: str, path: str) -> tuple[str, int]:
    """host and port of an Address (a socket address)."""
    _only(a, where, path, {"socket_address"})
    sp = _join(path, "socket_address")
    if not a.HasField("socket_address"):
        raise ConversionError(where, "required", sp)
    _only(a.socket_address, where, sp, {"address", "port_value"}, {"protocol", "ipv4_compat", "resolver_name"})
    return _nonneg_port(a.socket_address, where, sp)


def attribute_matcher(h: route_components_pb2.HeaderMatcher, where: str = "matcher", path: str = "") -> AttributeMatcher:
    """The attribute matcher of an Envoy HeaderMatcher."""
    _only(h, where, path, {"name", "invert_match", "exact_match", "prefix_match", "suffix_match", "contains_match", "safe_regex_match", "present_match", "string_match"}, {"treat_missing_header_as_empty"})
    if not h.name:
        raise ConversionError(where, "required", _join(path, "name"))
    which = h.WhichOneof("header_match_specifier")
    if which is None or which == "present_match":
        return AttributeMatcher(h.name, MatchKind.PRESENT, "true" if (which is None or h.present_match) else "false", h.invert_match)
    legacy = {"exact_match": MatchKind.EXACT, "prefix_match": MatchKind.PREFIX, "suffix_match": MatchKind.SUFFIX, "contains_match": MatchKind.CONTAINS}
    if which in legacy:
        return AttributeMatcher(h.name, legacy[which], getattr(h, which), h.invert_match)
    if which == "safe_regex_match":
        return AttributeMatcher(h.name, MatchKind.REGEX, _regex(h.safe_regex_match, where, _join(path, which)), h.invert_match)
    if which != "string_match":
        raise ConversionError(where, f"header matcher {which} is not supported", _join(path, which))
    sp = _join(path, "string_match")
    sm = h.string_match
    _only(sm, where, sp, {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    kind = sm.WhichOneof("match_pattern")
    kinds = {"exact": MatchKind.EXACT, "prefix": MatchKind.PREFIX, "suffix": MatchKind.SUFFIX, "contains": MatchKind.CONTAINS}
    if kind in kinds:
        return AttributeMatcher(h.name, kinds[kind], getattr(sm, kind), h.invert_match, sm.ignore_case)
    if kind == "safe_regex":
        return AttributeMatcher(h.name, MatchKind.REGEX, _regex(sm.safe_regex, where, _join(sp, kind)), h.invert_match, sm.ignore_case)
    raise ConversionError(where, "exactly one of exact, prefix, suffix, contains, safe_regex", sp)


def _regex(r: regex_pb2.RegexMatcher, where: str, path: str) -> str:
    _only(r, where, path, {"regex", "google_re2"})
    try:
        re.compile(r.regex)
    except re.error as exc:
        raise ConversionError(where, f"bad regex {r.regex!r}: {exc}", path) from None
    return str(r.regex)


def _fraction_at(p: percent_pb2.FractionalPercent, where: str, path: str) -> float:
    _only(p, where, path, {"numerator", "denominator"})
    return _fraction(p)


def _retry(retry_on: str, num_retries: wrappers_pb2.UInt32Value | None, per_try: duration_pb2.Duration | None, opt_in: bool, where: str, path: str) -> RetryPolicy:
    try:
        kinds, token_opt_in = parse_retry_on(retry_on)
    except ValueError as exc:
        raise ConversionError(where, str(exc), _join(path, "retry_on")) from None
    return RetryPolicy(
        num_retries.value if num_retries is not None else 1, kinds, _seconds(per_try) if per_try is not None else 0.0, retry_non_idempotent=opt_in or token_opt_in
    )


def _weighted(wc: route_components_pb2.WeightedCluster, where: str, path: str) -> tuple[WeightedCluster, ...]:
    _only(wc, where, path, {"clusters"}, {"total_weight"})
    out = []
    for i, c in enumerate(wc.clusters):
        cp = _join(path, f"clusters[{i}]")
        _only(c, where, cp, {"name", "weight"})
        if not c.name:
            raise ConversionError(where, "required", _join(cp, "name"))
        out.append(WeightedCluster(c.name, c.weight.value))
    if not out or sum(w.weight for w in out) == 0:
        raise ConversionError(where, "needs at least one cluster with a positive weight", path)
    return tuple(out)


def _subset(md: base_pb2.Metadata, where: str, path: str) -> tuple[tuple[str, str], ...]:
    _only(md, where, path, {"filter_metadata"})
    if "envoy.lb" not in md.filter_metadata:
        return ()
    return tuple(sorted((str(k), _scalar(v)) for k, v in md.filter_metadata["envoy.lb"].items()))


def _scalar(v: object) -> str:
    """A Struct value as text (a whole number without ``.0``)."""
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


def _plain(v: object) -> object:
    """A Struct value as plain Python (whole numbers as ints, as YAML reads them)."""
    if isinstance(v, float) and v == int(v):
        return int(v)
    if isinstance(v, struct_pb2.Struct):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, struct_pb2.ListValue):
        return [_plain(x) for x in v]
    return v


def route_config_from_xds(rc: route_pb2.RouteConfiguration) -> RouteConfig:
    """A route table from Envoy's HTTP RouteConfiguration (the first virtual host)."""
    where = f"route config {rc.name}"
    if len(rc.virtual_hosts) != 1:
        raise ConversionError(where, f"exactly one virtual host expected, got {len(rc.virtual_hosts)}", "virtual_hosts")
    rules = []
    for i, r in enumerate(rc.virtual_hosts[0].routes):
        rp = f"virtual_hosts[0].routes[{i}]"
        a = r.route
        which = a.WhichOneof("cluster_specifier")
        if which == "cluster":
            action_kwargs: dict[str, object] = {"cluster": a.cluster}
        elif which == "weighted_clusters":
            action_kwargs = {"weighted_clusters": _weighted(a.weighted_clusters, where, f"{rp}.route.weighted_clusters")}
        else:
            raise ConversionError(where, "exactly one of cluster and weighted_clusters is required", f"{rp}.route")
        action = RouteAction(
            **action_kwargs,  # type: ignore[arg-type]
            hash_policy=tuple(h.header.header_name.lower() for h in a.hash_policy if h.HasField("header")),
            subset=_subset(a.metadata_match, where, f"{rp}.route.metadata_match"),
            timeout=_seconds(a.timeout) if a.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT,
        )
        retry = None
        if a.HasField("retry_policy"):
            p = a.retry_policy
            retry = _retry(p.retry_on, p.num_retries if p.HasField("num_retries") else None, p.per_try_timeout, False, where, f"{rp}.route.retry_policy")
        fault = None
        if FAULT_METADATA in r.metadata.filter_metadata:
            fm = r.metadata.filter_metadata[FAULT_METADATA]
            fault = FaultPolicy(float(fm["delay"]), float(fm["delay_fraction"]), str(fm["abort_kind"]), float(fm["abort_fraction"]))
        rules.append(
            RouteRule(
                name=r.name,
                match=tuple(attribute_matcher(h, where, f"{rp}.match.headers[{j}]") for j, h in enumerate(r.match.headers)),
                action=action,
                request_mutation=tuple((h.header.key, h.header.value) for h in r.request_headers_to_add),
                response_mutation=tuple((h.header.key, h.header.value) for h in r.response_headers_to_add),
                mirrors=tuple(
                    MirrorPolicy(m.cluster, _fraction(m.runtime_fraction.default_value) if m.HasField("runtime_fraction") else 1.0) for m in a.request_mirror_policies
                ),
                retry=retry,
                fault=fault,
            )
        )
    return RouteConfig(rc.name, tuple(rules))


def _key_values(kvs: Iterable[mp_route.KeyValue], where: str, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, kv in enumerate(kvs):
        if not kv.key:
            raise ConversionError(where, "required", f"{path}[{i}].key")
        out.append((kv.key, kv.value))
    return tuple(out)


def _mp_route_config_from_xds(rc: mp_route.RouteConfiguration, where: str, path: str) -> RouteConfig:
    """A route table inline in the MetaProtocol filter (Aeraki's RouteConfiguration)."""
    _only(rc, where, path, {"name", "routes"})
    rules = []
    for i, r in enumerate(rc.routes):
        rp = _join(path, f"routes[{i}]")
        _only(r, where, rp, {"name", "match", "route", "request_mutation", "response_mutation", "fault"})
        _only(r.match, where, f"{rp}.match", {"metadata"})
        matchers = tuple(attribute_matcher(h, where, f"{rp}.match.metadata[{j}]") for j, h in enumerate(r.match.metadata))
        if not r.HasField("route"):
            raise ConversionError(where, "required", f"{rp}.route")
        a, ap = r.route, f"{rp}.route"
        _only(a, where, ap, {"cluster", "weighted_clusters", "hash_policy", "metadata_match", "timeout", "request_mirror_policies", "retry_policy"})
        which = a.WhichOneof("cluster_specifier")
        if which == "cluster" and a.cluster:
            action_kwargs: dict[str, object] = {"cluster": a.cluster}
        elif which == "weighted_clusters":
            action_kwargs = {"weighted_clusters": _weighted(a.weighted_clusters, where, f"{ap}.weighted_clusters")}
        else:
            raise ConversionError(where, "exactly one of cluster and weighted_clusters is required", ap)
        action = RouteAction(
            **action_kwargs,  # type: ignore[arg-type]
            hash_policy=tuple(k.lower() for k in a.hash_policy),
            subset=_subset(a.metadata_match, where, f"{ap}.metadata_match"),
            timeout=_seconds(a.timeout) if a.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT,
        )
        mirrors = []
        for j, m in enumerate(a.request_mirror_policies):
            mp = f"{ap}.request_mirror_policies[{j}]"
            if not m.cluster:
                raise ConversionError(where, "required", f"{mp}.cluster")
            _only(m.runtime_fraction, where, f"{mp}.runtime_fraction", {"default_value"}, {"runtime_key"})
            has = m.runtime_fraction.HasField("default_value")
            mirrors.append(MirrorPolicy(m.cluster, _fraction_at(m.runtime_fraction.default_value, where, f"{mp}.runtime_fraction.default_value") if has else 1.0))
        retry = None
        if a.HasField("retry_policy"):
            p = a.retry_policy
            retry = _retry(
                p.retry_on or "connect_failure,upstream_reset,upstream_timeout", p.num_retries if p.HasField("num_retries") else None,
                p.per_try_timeout, p.retry_non_idempotent, where, f"{ap}.retry_policy",
            )  # fmt: skip
        fault = None
        if r.HasField("fault"):
            f, fp = r.fault, f"{rp}.fault"
            kind = f.abort.error or "internal"
            if kind not in FAULT_KINDS:
                raise ConversionError(where, f"one of {', '.join(sorted(FAULT_KINDS))}", f"{fp}.abort.error")
            d, ab = f.delay, f.abort
            fault = FaultPolicy(
                delay=_seconds(d.fixed_delay),
                delay_fraction=_fraction_at(d.percentage, where, f"{fp}.delay.percentage") if d.HasField("percentage") else (1.0 if f.HasField("delay") else 0.0),
                abort_kind=kind,
                abort_fraction=_fraction_at(ab.percentage, where, f"{fp}.abort.percentage") if ab.HasField("percentage") else (1.0 if f.HasField("abort") else 0.0),
            )
        rules.append(
            RouteRule(
                name=r.name,
                match=matchers,
                action=action,
                request_mutation=_key_values(r.request_mutation, where, f"{rp}.request_mutation"),
                response_mutation=_key_values(r.response_mutation, where, f"{rp}.response_mutation"),
                mirrors=tuple(mirrors),
                retry=retry,
                fault=fault,
            )
        )
    return RouteConfig(rc.name, tuple(rules))


def _is_proxy(f: listener_components_pb2.Filter) -> bool:
    return bool(f.name in FILTER_NAMES or f.typed_config.type_url == PROXY_TYPE)


def _is_connection_limit(f: listener_components_pb2.Filter) -> bool:
    return bool(f.name == CONNECTION_LIMIT_FILTER or f.typed_config.type_url == CONNECTION_LIMIT_TYPE)


def proxy_filter_path(lst: listener_pb2.Listener) -> str:
    """Where the MetaProtocol filter config is in a listener (``filter_chains[0].filters[1].typed_config``)."""
    for i, f in enumerate(lst.filter_chains[0].filters if lst.filter_chains else ()):
        if _is_proxy(f):
            return f"filter_chains[0].filters[{i}].typed_config"
    return "filter_chains[0]"


def listener_from_xds(lst: listener_pb2.Listener) -> ListenerConfig:
    """A listener config from an LDS resource (or a bootstrap listener) running the MetaProtocol
    filter, after an optional connection_limit filter."""
    where = f"listener {lst.name}"
    _only(lst, where, "", {"name", "address", "filter_chains"},
          {"traffic_direction", "per_connection_buffer_limit_bytes", "listener_filters", "metadata", "continue_on_listener_filters_timeout", "listener_filters_timeout"})  # fmt: skip
    if not lst.name:
        raise ConversionError(where, "required", "name")
    index, allow_plaintext = _chain_of(lst, where)
    host, port = _socket_address(lst.address, where, "address")
    chain = lst.filter_chains[index]
    cp = f"filter_chains[{index}]"
    _only(chain, where, cp, {"filters", "transport_socket"}, {"name", "filter_chain_match"})
    if not allow_plaintext:  # one chain: a match would select connections, which one chain cannot
        _only(chain.filter_chain_match, where, f"{cp}.filter_chain_match", set())
    tls = downstream_tls_from_xds(chain.transport_socket, where, f"{cp}.transport_socket") if chain.HasField("transport_socket") else None
    if tls is not None and allow_plaintext:
        tls = replace(tls, allow_plaintext=True)
    found: tuple[mpp.MetaProtocolProxy, str] | None = None
    max_connections: int | None = None
    for i, f in enumerate(chain.filters):
        fp = f"{cp}.filters[{i}]"
        _only(f, where, fp, {"name", "typed_config"})
        if _is_proxy(f):
            cfg = mpp.MetaProtocolProxy()
            if not _unpack(f.typed_config, cfg, where, f"{fp}.typed_config"):
                raise ConversionError(where, f"expected {PROXY_TYPE}", f"{fp}.typed_config.@type")
            found = (cfg, f"{fp}.typed_config")
        elif _is_connection_limit(f):
            if found is not None:
                raise ConversionError(where, f"{CONNECTION_LIMIT_FILTER} must come before the {FILTER_NAME} filter", fp)
            if max_connections is not None:
                raise ConversionError(where, f"{CONNECTION_LIMIT_FILTER} is listed twice", fp)
            max_connections = _connection_limit(f, where, f"{fp}.typed_config")
        else:
            raise ConversionError(where, f"unsupported network filter {f.name!r}", f"{fp}.name")
    if found is None:
        raise ConversionError(where, f"no {FILTER_NAME} filter", f"{cp}.filters")
    cfg, path = found
    _only(
        cfg, where, path,
        {"stat_prefix", "application_protocol", "codec", "protocol", "route_config", "rds", "idle_timeout", "max_pending_per_connection",
         "upstream_connections_per_endpoint", "meta_protocol_filters", "access_log"},
        {"tracing"},
    )  # fmt: skip
    codec = _codec(cfg, where, path)
    route_config = None
    rds_name = None
    which = cfg.WhichOneof("route_specifier")
    if which == "route_config":
        route_config = _mp_route_config_from_xds(cfg.route_config, where, f"{path}.route_config")
    elif which == "rds":
        _only(cfg.rds, where, f"{path}.rds", {"route_config_name", "config_source"})
        if not cfg.rds.route_config_name:
            raise ConversionError(where, "required", f"{path}.rds.route_config_name")
        rds_name = cfg.rds.route_config_name
    else:
        raise ConversionError(where, "one of route_config and rds is required", path)
    from metaprotocol.xds import rbac as _rbac  # it builds on this module's matchers

    limit = None
    global_limit = None
    rbac: list[RbacFilter] = []
    for i, mf in enumerate(cfg.meta_protocol_filters):
        mp = f"{path}.meta_protocol_filters[{i}]"
        if mf.name == GLOBAL_RATELIMIT_FILTER:
            grl = ratelimit_pb2.RateLimit()
            if not _unpack(mf.config, grl, where, f"{mp}.config"):
                raise ConversionError(where, f"expected {GLOBAL_RATELIMIT_TYPE}", f"{mp}.config.@type")
            global_limit = _global_rate_limit(grl, where, f"{mp}.config")
        elif mf.name == LOCAL_RATELIMIT_FILTER:
            msg = local_ratelimit_pb2.LocalRateLimit()
            if not _unpack(mf.config, msg, where, f"{mp}.config"):
                raise ConversionError(where, f"expected {LOCAL_RATELIMIT_TYPE}", f"{mp}.config.@type")
            limit = _local_rate_limit(msg, where, f"{mp}.config")
        elif mf.name == _rbac.RBAC_FILTER:
            msg_rbac = network_rbac_pb2.RBAC()
            if not _unpack(mf.config, msg_rbac, where, f"{mp}.config"):
                raise ConversionError(where, f"expected {_rbac.RBAC_TYPE}", f"{mp}.config.@type")
            rbac.extend(_rbac.rbac_filters_from_xds(msg_rbac, where, f"{mp}.config"))
        elif mf.name not in (ROUTER_FILTER, ""):
            raise ConversionError(where, f"unsupported filter {mf.name!r}", f"{mp}.name")
    logs = tuple(_access_log(a, where, f"{path}.access_log[{i}]") for i, a in enumerate(cfg.access_log))
    protocol = cfg.protocol.name if cfg.HasField("protocol") else cfg.application_protocol
    return ListenerConfig(
        name=lst.name,
        address=host,
        port=port,
        codec=codec,
        stat_prefix=cfg.stat_prefix or lst.name,
        route_config=route_config,
        rds_name=rds_name,
        protocol=protocol if protocol != codec.name else "",
        idle_timeout=_seconds(cfg.idle_timeout) if cfg.HasField("idle_timeout") else 0.0,
        max_pending_per_connection=cfg.max_pending_per_connection or 4096,
        upstream_connections_per_endpoint=cfg.upstream_connections_per_endpoint or 1,
        local_rate_limit=limit,
        access_log=logs,
        global_rate_limit=global_limit,
        max_connections=max_connections or 0,
        tls=tls,
        rbac=tuple(rbac),
    )


def _codec(cfg: mpp.MetaProtocolProxy, where: str, path: str) -> CodecRef:
    """The codec from ``protocol.codec`` (preferred) or the deprecated ``codec`` field."""
    if cfg.HasField("protocol"):
        _only(cfg.protocol, where, f"{path}.protocol", {"name", "codec", "multiplexing"})
        codec, cp = cfg.protocol.codec, f"{path}.protocol.codec"
    elif cfg.HasField("codec"):
        codec, cp = cfg.codec, f"{path}.codec"
    else:
        raise ConversionError(where, "codec is required (protocol.codec.name)", path)
    _only(codec, where, cp, {"name", "config"})
    if not codec.name:
        raise ConversionError(where, "required", f"{cp}.name")
    settings: dict[str, object] = {}
    if codec.HasField("config"):
        struct = struct_pb2.Struct()
        if not _unpack(codec.config, struct, where, f"{cp}.config"):
            raise ConversionError(where, f"expected {STRUCT_TYPE} (the codec's settings)", f"{cp}.config.@type")
        settings = {str(k): _plain(v) for k, v in struct.items()}
    return CodecRef(codec.name, settings)


def _bucket_at(b: token_bucket_pb2.TokenBucket, where: str, path: str) -> TokenBucket:
    _only(b, where, path, {"max_tokens", "tokens_per_fill", "fill_interval"})
    bucket = _bucket_from_xds(b)
    if bucket.max_tokens < 1 or bucket.tokens_per_fill < 1:
        raise ConversionError(where, "max_tokens and tokens_per_fill must be at least 1", path)
    if bucket.fill_interval < 0.05:  # noqa: PLR2004 - Aeraki's (and Envoy's) minimum
        raise ConversionError(where, "must be at least 50ms", f"{path}.fill_interval")
    return bucket


def _local_rate_limit(msg: local_ratelimit_pb2.LocalRateLimit, where: str, path: str) -> LocalRateLimit:
    """Aeraki's aeraki.meta_protocol_proxy.filters.local_ratelimit.v1alpha.LocalRateLimit."""
    _only(msg, where, path, {"stat_prefix", "token_bucket", "conditions"})
    conditions = []
    for i, c in enumerate(msg.conditions):
        cp = f"{path}.conditions[{i}]"
        _only(c, where, cp, {"match", "token_bucket"})
        _only(c.match, where, f"{cp}.match", {"metadata"})
        matchers = tuple(attribute_matcher(h, where, f"{cp}.match.metadata[{j}]") for j, h in enumerate(c.match.metadata))
        conditions.append(RateLimitCondition(matchers, _bucket_at(c.token_bucket, where, f"{cp}.token_bucket")))
    default = _bucket_at(msg.token_bucket, where, f"{path}.token_bucket") if msg.HasField("token_bucket") else None
    if default is None and not conditions:
        raise ConversionError(where, "token_bucket or conditions is required", path)
    return LocalRateLimit(tuple(conditions), default)


def _global_rate_limit(grl: ratelimit_pb2.RateLimit, where: str, path: str) -> GlobalRateLimit:
    """Aeraki's aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha.RateLimit."""
    _only(grl, where, path, {"match", "domain", "timeout", "failure_mode_deny", "rate_limit_service", "descriptors"})
    _only(grl.match, where, f"{path}.match", {"metadata"})
    rp = f"{path}.rate_limit_service"
    _only(grl.rate_limit_service, where, rp, {"grpc_service", "transport_api_version"})
    _only(grl.rate_limit_service.grpc_service, where, f"{rp}.grpc_service", {"envoy_grpc", "timeout"})
    cluster = grl.rate_limit_service.grpc_service.envoy_grpc.cluster_name
    if not cluster:
        raise ConversionError(where, "required", f"{rp}.grpc_service.envoy_grpc.cluster_name")
    for i, d in enumerate(grl.descriptors):
        for key in ("property", "descriptor_key"):
            if not getattr(d, key):
                raise ConversionError(where, "required", f"{path}.descriptors[{i}].{key}")
    if not grl.descriptors:
        raise ConversionError(where, "at least one descriptor is required", f"{path}.descriptors")
    if not grl.domain:
        raise ConversionError(where, "required", f"{path}.domain")
    return GlobalRateLimit(
        domain=grl.domain,
        service_cluster=cluster,
        descriptors=tuple((d.property.lower(), d.descriptor_key) for d in grl.descriptors),
        match=tuple(attribute_matcher(h, where, f"{path}.match.metadata[{j}]") for j, h in enumerate(grl.match.metadata)),
        timeout=_seconds(grl.timeout) if grl.HasField("timeout") else 0.02,
        deny_on_fail=grl.failure_mode_deny,
    )


def _access_log(a: accesslog_pb2.AccessLog, where: str, path: str) -> AccessLog:
    """An Envoy file/stdout access logger with a ``json_format`` (our loggers write JSON lines);
    the keys in key order (a protobuf Struct is a map)."""
    _only(a, where, path, {"name", "typed_config"}, {"filter"})
    tp = f"{path}.typed_config"
    file_log, stdout_log = file_pb2.FileAccessLog(), stream_pb2.StdoutAccessLog()
    if _unpack(a.typed_config, file_log, where, tp):
        _only(file_log, where, tp, {"path", "log_format"})
        if not file_log.path:
            raise ConversionError(where, "required", f"{tp}.path")
        target, fmt = file_log.path, file_log.log_format
    elif _unpack(a.typed_config, stdout_log, where, tp):
        _only(stdout_log, where, tp, {"log_format"})
        target, fmt = "/dev/stdout", stdout_log.log_format
    else:
        raise ConversionError(where, f"one of {FILE_ACCESS_LOG_TYPE}, {STDOUT_ACCESS_LOG_TYPE}", f"{tp}.@type")
    _only(fmt, where, f"{tp}.log_format", {"json_format"})
    return AccessLog(target, tuple(sorted((str(k), _scalar(v)) for k, v in fmt.json_format.items())))


def _connection_limit(f: listener_components_pb2.Filter, where: str, path: str) -> int:
    """Envoy's ``envoy.filters.network.connection_limit``: the listener's open connection bound.
    A connection past it is closed at once, so a ``delay`` is refused."""
    limit = connection_limit_pb2.ConnectionLimit()
    if not _unpack(f.typed_config, limit, where, path):
        raise ConversionError(where, f"expected {CONNECTION_LIMIT_TYPE}", f"{path}.@type")
    _only(limit, where, path, {"stat_prefix", "max_connections", "delay"})
    if not limit.HasField("max_connections"):
        raise ConversionError(where, "required", f"{path}.max_connections")
    if limit.max_connections.value < 1:
        raise ConversionError(where, "must be at least 1", f"{path}.max_connections")
    if limit.HasField("delay") and _seconds(limit.delay) != 0:
        raise ConversionError(where, "delay is not supported: a connection past the limit is closed at once", f"{path}.delay")
    return int(limit.max_connections.value)


def _tcp_keepalive(c: cluster_pb2.Cluster, where: str) -> TcpKeepalive | None:
    """``upstream_connection_options.tcp_keepalive`` (probes, and idle time and interval in whole
    seconds, as Envoy's UInt32Values); an absent field keeps the OS default."""
    if not c.HasField("upstream_connection_options"):
        return None
    options = c.upstream_connection_options
    _only(options, where, "upstream_connection_options", {"tcp_keepalive"})
    if not options.HasField("tcp_keepalive"):
        return None
    k = options.tcp_keepalive
    return TcpKeepalive(k.keepalive_probes.value, float(k.keepalive_time.value), float(k.keepalive_interval.value))


def _health_check(c: cluster_pb2.Cluster, where: str) -> HealthCheck | None:
    """``health_checks``: at most one, a connect-only ``tcp_health_check: {}`` or the codec's own
    probe (``custom_health_check: {name: metaprotocol.health_checkers.codec}``)."""
    if not c.health_checks:
        return None
    if len(c.health_checks) > 1:
        raise ConversionError(where, "only one health check per cluster is supported", "health_checks[1]")
    hc, hp = c.health_checks[0], "health_checks[0]"
    which = hc.WhichOneof("health_checker")
    if which in ("http_health_check", "grpc_health_check", "redis_health_check"):
        raise ConversionError(where, f"{which} is not supported (use tcp_health_check: {{}} or custom_health_check {CODEC_HEALTH_CHECKER})", f"{hp}.{which}")
    _only(hc, where, hp, _HEALTH_CHECK_FIELDS, _HEALTH_CHECK_IGNORED)
    for name in ("interval", "timeout"):
        if not hc.HasField(name):
            raise ConversionError(where, f"{name} is required", f"{hp}.{name}")
        if _seconds(getattr(hc, name)) <= 0:
            raise ConversionError(where, f"{name} must be above 0", f"{hp}.{name}")
    thresholds = []
    for name, default in (("unhealthy_threshold", 3), ("healthy_threshold", 2)):
        value = getattr(hc, name).value if hc.HasField(name) else default
        if value < 1:
            raise ConversionError(where, f"{name} must be at least 1", f"{hp}.{name}")
        thresholds.append(value)
    if which == "tcp_health_check":
        for key in ("send", "receive"):
            if hc.tcp_health_check.HasField(key) if key == "send" else hc.tcp_health_check.receive:
                raise ConversionError(
                    where, f"payload checks are unsupported (tcp_health_check: {{}} connects only; custom_health_check {CODEC_HEALTH_CHECKER} sends the protocol's own probe)",
                    f"{hp}.tcp_health_check.{key}",
                )  # fmt: skip
        _only(hc.tcp_health_check, where, f"{hp}.tcp_health_check", ())
        kind = HealthCheckKind.TCP
    elif which == "custom_health_check":
        custom, cp = hc.custom_health_check, f"{hp}.custom_health_check"
        _only(custom, where, cp, {"name", "typed_config"})
        if custom.name != CODEC_HEALTH_CHECKER:
            raise ConversionError(where, f"unsupported health checker {custom.name!r} (only {CODEC_HEALTH_CHECKER})", f"{cp}.name")
        config = struct_pb2.Struct()
        if custom.HasField("typed_config") and (not _unpack(custom.typed_config, config, where, f"{cp}.typed_config") or config.fields):
            raise ConversionError(where, "expected an empty google.protobuf.Struct", f"{cp}.typed_config")
        kind = HealthCheckKind.CODEC
    else:
        raise ConversionError(where, "exactly one of tcp_health_check and custom_health_check is required", hp)
    return HealthCheck(_seconds(hc.interval), _seconds(hc.timeout), thresholds[0], thresholds[1], kind)


def _struct_str(s: object, key: str, default: str) -> str:
    """A string field of a protobuf Struct (which has no ``get``), or ``default``."""
    return str(s[key]) if s and key in s else default  # type: ignore[index, operator]


_EXT_PATH = f"metadata.filter_metadata.{EXT_METADATA}"


def _endpoints(cla: endpoint_pb2.ClusterLoadAssignment, where: str, path: str) -> tuple[Endpoint, ...]:
    _only(cla, where, path, {"cluster_name", "endpoints"}, {"policy"})
    out = []
    for i, group in enumerate(cla.endpoints):
        gp = _join(path, f"endpoints[{i}]")
        _only(group, where, gp, {"lb_endpoints"}, {"locality", "priority", "load_balancing_weight"})
        for j, lbe in enumerate(group.lb_endpoints):
            ep = f"{gp}.lb_endpoints[{j}]"
            _only(lbe, where, ep, {"endpoint", "load_balancing_weight", "metadata"}, {"health_status"})
            _only(lbe.endpoint, where, f"{ep}.endpoint", {"address"}, {"hostname", "health_check_config"})
            host, port = _socket_address(lbe.endpoint.address, where, f"{ep}.endpoint.address")
            weight = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
            if weight < 1:
                raise ConversionError(where, "must be at least 1", f"{ep}.load_balancing_weight")
            out.append(Endpoint(host, port, weight, _subset(lbe.metadata, where, f"{ep}.metadata")))
    return tuple(out)


def cluster_from_xds(c: cluster_pb2.Cluster, cla: endpoint_pb2.ClusterLoadAssignment | None) -> ClusterConfig:
    """A cluster config from a CDS resource and its endpoints (EDS), or from a bootstrap's STATIC
    cluster (its ``load_assignment``)."""
    where = f"cluster {c.name}"
    _only(
        c, where, "",
        {"name", "type", "eds_cluster_config", "connect_timeout", "lb_policy", "load_assignment", "ring_hash_lb_config", "circuit_breakers",
         "outlier_detection", "upstream_connection_options", "health_checks", "metadata", "transport_socket"},
        {"dns_lookup_family", "typed_extension_protocol_options", "common_lb_config", "per_connection_buffer_limit_bytes", "lb_subset_config", "maglev_lb_config"},
    )  # fmt: skip
    if not c.name:
        raise ConversionError(where, "required", "name")
    if c.type not in (cluster_pb2.Cluster.STATIC, cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS, cluster_pb2.Cluster.EDS):
        raise ConversionError(where, f"unsupported cluster type {cluster_pb2.Cluster.DiscoveryType.Name(c.type)!r} (STATIC; EDS over xDS)", "type")
    if c.lb_policy not in _LB_BACK:
        options = ", ".join(p.value for p in LbPolicy)
        raise ConversionError(where, f"unsupported policy {cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)!r} ({options})", "lb_policy")
    if cla is not None:
        endpoints = _endpoints(cla, where, "")
    else:
        endpoints = _endpoints(c.load_assignment, where, "load_assignment") if c.HasField("load_assignment") else ()
    _only(c.metadata, where, "metadata", {"filter_metadata"})
    ext = c.metadata.filter_metadata[EXT_METADATA] if EXT_METADATA in c.metadata.filter_metadata else {}
    for key in ext if ext else ():
        if key not in ("hash_function", "hash_tag", "max_consecutive_timeouts"):
            raise ConversionError(where, f"{key} is not supported by this proxy", f"{_EXT_PATH}.{key}")
    hash_function = _struct_str(ext, "hash_function", "md5")
    if hash_function not in HASH_FUNCTIONS:
        raise ConversionError(where, f"one of {', '.join(HASH_FUNCTIONS)}", f"{_EXT_PATH}.hash_function")
    breakers = None
    if c.circuit_breakers.thresholds:
        _only(c.circuit_breakers, where, "circuit_breakers", {"thresholds"}, {"per_host_thresholds"})
        t, tp = c.circuit_breakers.thresholds[0], "circuit_breakers.thresholds[0]"
        _only(t, where, tp, {"max_requests", "max_pending_requests", "max_retries", "retry_budget"}, {"priority", "max_connections", "track_remaining"})
        breakers = CircuitBreakers(t.max_requests.value, t.max_pending_requests.value, t.max_retries.value)
        if t.HasField("retry_budget"):
            b, bp = t.retry_budget, f"{tp}.retry_budget"
            _only(b, where, bp, {"budget_percent", "min_retry_concurrency"})
            percent = b.budget_percent.value if b.HasField("budget_percent") else DEFAULT_RETRY_BUDGET_PERCENT
            if not 0 < percent <= 100:  # noqa: PLR2004
                raise ConversionError(where, "expected {value: <percent above 0, at most 100>}", f"{bp}.budget_percent")
            breakers = replace(
                breakers,
                retry_budget_percent=percent,
                min_retry_concurrency=b.min_retry_concurrency.value if b.HasField("min_retry_concurrency") else DEFAULT_MIN_RETRY_CONCURRENCY,
            )
    outlier = None
    if c.HasField("outlier_detection"):
        o = c.outlier_detection
        _only(o, where, "outlier_detection", {"consecutive_5xx", "consecutive_gateway_failure", "base_ejection_time", "max_ejection_percent"}, {"interval", "enforcing_consecutive_5xx"})
        consecutive = o.consecutive_5xx.value if o.HasField("consecutive_5xx") else (o.consecutive_gateway_failure.value if o.HasField("consecutive_gateway_failure") else 5)
        outlier = OutlierDetection(
            consecutive,
            _seconds(o.base_ejection_time) if o.HasField("base_ejection_time") else 30.0,
            o.max_ejection_percent.value if o.HasField("max_ejection_percent") else 10,
        )
    return ClusterConfig(
        name=c.name,
        endpoints=endpoints,
        lb_policy=_LB_BACK[c.lb_policy],
        connect_timeout=_seconds(c.connect_timeout) if c.HasField("connect_timeout") else DEFAULT_CONNECT_TIMEOUT,
        hash_function=hash_function,
        hash_tag=_struct_str(ext, "hash_tag", ""),
        circuit_breakers=breakers,
        outlier_detection=outlier,
        tcp_keepalive=_tcp_keepalive(c, where),
        max_consecutive_timeouts=_struct_int(ext, "max_consecutive_timeouts", DEFAULT_MAX_CONSECUTIVE_TIMEOUTS, where),
        health_check=_health_check(c, where),
        tls=upstream_tls_from_xds(c.transport_socket, where, "transport_socket") if c.HasField("transport_socket") else None,
    )


def _struct_int(s: object, key: str, default: int, where: str) -> int:
    """A whole, non-negative number field of a protobuf Struct (numbers are doubles), or ``default``."""
    if not s or key not in s:  # type: ignore[operator]
        return default
    value = s[key]  # type: ignore[index]
    if not isinstance(value, float | int) or isinstance(value, bool) or value < 0 or value != int(value):
        raise ConversionError(where, "expected a whole number; must not be negative (0: never close)", f"{_EXT_PATH}.{key}")
    return int(value)


# -- TLS (envoy.transport_sockets.tls) ------------------------------------------------------------

TLS_SOCKET: Final = "envoy.transport_sockets.tls"
RAW_SOCKET: Final = "envoy.transport_sockets.raw_buffer"
DOWNSTREAM_TLS_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
UPSTREAM_TLS_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
_TLS_VERSION = {name: common_pb2.TlsParameters.TlsProtocol.Value(name) for name in TLS_VERSIONS}
_TLS_VERSION_BACK = {v: k for k, v in _TLS_VERSION.items()}
_SAN_TYPE = {
    SanType.DNS: common_pb2.SubjectAltNameMatcher.DNS,
    SanType.URI: common_pb2.SubjectAltNameMatcher.URI,
    SanType.EMAIL: common_pb2.SubjectAltNameMatcher.EMAIL,
    SanType.IP_ADDRESS: common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
}
_SAN_TYPE_BACK = {v: k for k, v in _SAN_TYPE.items()}


def _data_source_to_xds(d: DataSource) -> base_pb2.DataSource:
    return base_pb2.DataSource(filename=d.filename) if d.filename else base_pb2.DataSource(inline_string=d.inline)


def _string_matcher_to_xds(m: SanMatcher) -> string_pb2.StringMatcher:
    if m.kind is MatchKind.REGEX:
        return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.value), ignore_case=m.ignore_case)
    return string_pb2.StringMatcher(ignore_case=m.ignore_case, **{m.kind.value: m.value})


def _common_tls_to_xds(c: CommonTls) -> tls_pb2.CommonTlsContext:
    out = tls_pb2.CommonTlsContext(alpn_protocols=list(c.alpn_protocols))
    p = c.params
    if p != TlsParams():
        out.tls_params.CopyFrom(
            common_pb2.TlsParameters(
                tls_minimum_protocol_version=_TLS_VERSION[p.min_version],
                tls_maximum_protocol_version=_TLS_VERSION[p.max_version],
                cipher_suites=list(p.cipher_suites),
                ecdh_curves=list(p.ecdh_curves),
            )
        )
    if c.certificate_chain is not None or c.private_key is not None:
        cert = out.tls_certificates.add()
        if c.certificate_chain is not None:
            cert.certificate_chain.CopyFrom(_data_source_to_xds(c.certificate_chain))
        if c.private_key is not None:
            cert.private_key.CopyFrom(_data_source_to_xds(c.private_key))
    if c.trusted_ca is not None or c.match_sans:
        v = out.validation_context
        v.SetInParent()
        if c.trusted_ca is not None:
            v.trusted_ca.CopyFrom(_data_source_to_xds(c.trusted_ca))
        for m in c.match_sans:
            if m.san_type is SanType.ANY:
                v.match_subject_alt_names.append(_string_matcher_to_xds(m))
            else:
                v.match_typed_subject_alt_names.add(san_type=_SAN_TYPE[m.san_type], matcher=_string_matcher_to_xds(m))
    return out


def _transport_socket_to_xds(ctx: message.Message) -> base_pb2.TransportSocket:
    out = base_pb2.TransportSocket(name=TLS_SOCKET)
    out.typed_config.Pack(ctx)
    return out


def downstream_tls_to_xds(t: DownstreamTls) -> base_pb2.TransportSocket:
    """A listener filter chain's ``transport_socket`` (DownstreamTlsContext)."""
    ctx = tls_pb2.DownstreamTlsContext(common_tls_context=_common_tls_to_xds(t.common))
    if t.require_client_certificate:
        ctx.require_client_certificate.value = True
    return _transport_socket_to_xds(ctx)


def upstream_tls_to_xds(t: UpstreamTls) -> base_pb2.TransportSocket:
    """A cluster's ``transport_socket`` (UpstreamTlsContext)."""
    return _transport_socket_to_xds(tls_pb2.UpstreamTlsContext(common_tls_context=_common_tls_to_xds(t.common), sni=t.sni))


def _data_source(d: base_pb2.DataSource, where: str, path: str) -> DataSource:
    _only(d, where, path, {"filename", "inline_string", "inline_bytes"})
    which = d.WhichOneof("specifier")
    if which == "filename" and d.filename:
        return DataSource(filename=d.filename)
    if which == "inline_string" and d.inline_string:
        return DataSource(inline=d.inline_string)
    if which == "inline_bytes" and d.inline_bytes:
        try:
            return DataSource(inline=d.inline_bytes.decode("ascii"))
        except UnicodeDecodeError:
            raise ConversionError(where, "expected PEM text", _join(path, "inline_bytes")) from None
    raise ConversionError(where, "one of filename, inline_string, inline_bytes is required", path)


def _san_matcher(san_type: SanType, sm: string_pb2.StringMatcher, where: str, path: str) -> SanMatcher:
    _only(sm, where, path, {"exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"})
    kind = sm.WhichOneof("match_pattern")
    kinds = {"exact": MatchKind.EXACT, "prefix": MatchKind.PREFIX, "suffix": MatchKind.SUFFIX, "contains": MatchKind.CONTAINS}
    if kind in kinds:
        return SanMatcher(san_type, kinds[kind], getattr(sm, kind), sm.ignore_case)
    if kind == "safe_regex":
        return SanMatcher(san_type, MatchKind.REGEX, _regex(sm.safe_regex, where, _join(path, kind)), sm.ignore_case)
    raise ConversionError(where, "exactly one of exact, prefix, suffix, contains, safe_regex", path)


def _tls_params(p: common_pb2.TlsParameters, where: str, path: str) -> TlsParams:
    import ssl

    _only(p, where, path, {"tls_minimum_protocol_version", "tls_maximum_protocol_version", "cipher_suites", "ecdh_curves"})
    lo, hi = p.tls_minimum_protocol_version, p.tls_maximum_protocol_version
    if lo in _TLS_VERSION_BACK and hi in _TLS_VERSION_BACK and lo and hi and lo > hi:
        raise ConversionError(where, "the minimum version is above the maximum", _join(path, "tls_minimum_protocol_version"))
    for i, name in enumerate(p.cipher_suites):
        try:
            if name.startswith("[") or ":" in name:
                raise ssl.SSLError("equal-preference groups and lists are BoringSSL forms")
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(name)
        except ssl.SSLError as exc:
            raise ConversionError(where, f"cipher suite {name!r} is unknown to this proxy's OpenSSL ({exc})", f"{path}.cipher_suites[{i}]") from None
    if len(p.ecdh_curves) > 1:
        raise ConversionError(where, "Python's ssl sets one curve only", f"{path}.ecdh_curves[1]")
    for i, name in enumerate(p.ecdh_curves):
        if name not in ECDH_CURVES:
            raise ConversionError(where, f"curve {name!r} cannot be set through Python's ssl (one of {', '.join(ECDH_CURVES)})", f"{path}.ecdh_curves[{i}]")
    return TlsParams(_TLS_VERSION_BACK[lo], _TLS_VERSION_BACK[hi], tuple(p.cipher_suites), tuple(p.ecdh_curves))


def _common_tls(c: tls_pb2.CommonTlsContext, where: str, path: str) -> CommonTls:
    _only(c, where, path, {"tls_params", "tls_certificates", "validation_context", "alpn_protocols"})
    chain = key = ca = None
    if len(c.tls_certificates) > 1:
        raise ConversionError(where, "one certificate is supported", f"{path}.tls_certificates[1]")
    for cert in c.tls_certificates:
        cp = f"{path}.tls_certificates[0]"
        _only(cert, where, cp, {"certificate_chain", "private_key"})
        if not cert.HasField("certificate_chain"):
            raise ConversionError(where, "required", f"{cp}.certificate_chain")
        if not cert.HasField("private_key"):
            raise ConversionError(where, "required", f"{cp}.private_key")
        chain = _data_source(cert.certificate_chain, where, f"{cp}.certificate_chain")
        key = _data_source(cert.private_key, where, f"{cp}.private_key")
    sans: list[SanMatcher] = []
    if c.HasField("validation_context"):
        v, vp = c.validation_context, f"{path}.validation_context"
        _only(v, where, vp, {"trusted_ca", "match_typed_subject_alt_names", "match_subject_alt_names"})
        if v.HasField("trusted_ca"):
            ca = _data_source(v.trusted_ca, where, f"{vp}.trusted_ca")
        for i, tm in enumerate(v.match_typed_subject_alt_names):
            mp = f"{vp}.match_typed_subject_alt_names[{i}]"
            _only(tm, where, mp, {"san_type", "matcher"})
            if tm.san_type not in _SAN_TYPE_BACK:
                raise ConversionError(where, "one of DNS, URI, EMAIL, IP_ADDRESS", f"{mp}.san_type")
            sans.append(_san_matcher(_SAN_TYPE_BACK[tm.san_type], tm.matcher, where, f"{mp}.matcher"))
        sans.extend(_san_matcher(SanType.ANY, sm, where, f"{vp}.match_subject_alt_names[{i}]") for i, sm in enumerate(v.match_subject_alt_names))
        if sans and ca is None:  # Envoy refuses it too
            raise ConversionError(where, "SAN-based verification of peer certificates without trusted CA is insecure and not allowed", f"{vp}.trusted_ca")
    params = _tls_params(c.tls_params, where, f"{path}.tls_params") if c.HasField("tls_params") else TlsParams()
    return CommonTls(chain, key, ca, tuple(sans), params, tuple(c.alpn_protocols))


def _transport_socket(ts: base_pb2.TransportSocket, cls: type[message.Message], where: str, path: str) -> message.Message | None:
    """The TLS context of a ``transport_socket`` (None for ``raw_buffer``: plaintext)."""
    _only(ts, where, path, {"name", "typed_config"})
    if ts.name == RAW_SOCKET or ts.typed_config.type_url == RAW_BUFFER_TYPE:
        return None
    if ts.name not in (TLS_SOCKET, "tls", "") :
        raise ConversionError(where, f"unsupported transport socket {ts.name!r} (only {TLS_SOCKET})", _join(path, "name"))
    ctx = cls()
    if not _unpack(ts.typed_config, ctx, where, _join(path, "typed_config")):
        raise ConversionError(where, f"expected {type_url(cls)}", _join(path, "typed_config.@type"))
    return ctx


def downstream_tls_from_xds(ts: base_pb2.TransportSocket, where: str, path: str) -> DownstreamTls | None:
    """A filter chain's ``transport_socket``: its DownstreamTlsContext (None: plaintext)."""
    ctx = _transport_socket(ts, tls_pb2.DownstreamTlsContext, where, path)
    if ctx is None:
        return None
    assert isinstance(ctx, tls_pb2.DownstreamTlsContext)  # noqa: S101
    tp = f"{path}.typed_config"
    _only(ctx, where, tp, {"common_tls_context", "require_client_certificate"}, {"session_timeout"})
    common = _common_tls(ctx.common_tls_context, where, f"{tp}.common_tls_context")
    if common.certificate_chain is None:
        raise ConversionError(where, "a listener needs a certificate", f"{tp}.common_tls_context.tls_certificates")
    require = ctx.require_client_certificate.value
    if require and common.trusted_ca is None:
        raise ConversionError(where, "require_client_certificate needs validation_context.trusted_ca", f"{tp}.common_tls_context.validation_context")
    return DownstreamTls(common, require)


def upstream_tls_from_xds(ts: base_pb2.TransportSocket, where: str, path: str) -> UpstreamTls | None:
    """A cluster's ``transport_socket``: its UpstreamTlsContext (None: plaintext)."""
    ctx = _transport_socket(ts, tls_pb2.UpstreamTlsContext, where, path)
    if ctx is None:
        return None
    assert isinstance(ctx, tls_pb2.UpstreamTlsContext)  # noqa: S101
    tp = f"{path}.typed_config"
    _only(ctx, where, tp, {"common_tls_context", "sni"}, {"max_session_keys"})
    return UpstreamTls(_common_tls(ctx.common_tls_context, where, f"{tp}.common_tls_context"), ctx.sni)


# -- the bootstrap --------------------------------------------------------------------------------


def overload_from_xds(om: overload_pb2.OverloadManager, path: str = "overload_manager") -> OverloadConfig:
    """Envoy's ``overload_manager``: the resource monitors set the process bounds (a monitor not
    listed keeps its default; 0 disables), and stop_accepting_requests/connections actions
    triggered on the fixed heap monitor scale the heap bound by their (smallest) threshold."""
    where = "bootstrap"
    _only(om, where, path, {"refresh_interval", "resource_monitors", "actions"})
    defaults = OverloadConfig()
    refresh = _seconds(om.refresh_interval) if om.HasField("refresh_interval") else defaults.refresh_interval
    if refresh <= 0:
        raise ConversionError(where, "must be above 0", f"{path}.refresh_interval")
    limits: dict[str, int] = {}
    for i, m in enumerate(om.resource_monitors):
        mp = f"{path}.resource_monitors[{i}]"
        _only(m, where, mp, {"name", "typed_config"})
        if m.name not in OVERLOAD_MONITORS:
            raise ConversionError(where, f"unsupported resource monitor {m.name!r} (one of {', '.join(sorted(OVERLOAD_MONITORS))})", f"{mp}.name")
        if m.name in limits:
            raise ConversionError(where, f"resource monitor {m.name!r} is listed twice", f"{mp}.name")
        cls, key = OVERLOAD_MONITORS[m.name]
        config = cls()
        if not _unpack(m.typed_config, config, where, f"{mp}.typed_config"):
            raise ConversionError(where, f"expected {type_url(cls)}", f"{mp}.typed_config.@type")
        limit = getattr(config, key)
        if limit < 0:
            raise ConversionError(where, "must not be negative (0 disables the bound)", f"{mp}.typed_config.{key}")
        limits[m.name] = limit
    threshold = 1.0
    for i, a in enumerate(om.actions):
        ap = f"{path}.actions[{i}]"
        _only(a, where, ap, {"name", "triggers"})
        if a.name not in OVERLOAD_ACTIONS:
            raise ConversionError(where, f"unsupported overload action {a.name!r} (one of {', '.join(sorted(OVERLOAD_ACTIONS))})", f"{ap}.name")
        if not a.triggers:
            raise ConversionError(where, "at least one trigger is required", f"{ap}.triggers")
        for j, t in enumerate(a.triggers):
            tp = f"{ap}.triggers[{j}]"
            _only(t, where, tp, {"name", "threshold"})
            if t.name != FIXED_HEAP_MONITOR:
                raise ConversionError(where, f"only {FIXED_HEAP_MONITOR} triggers are supported", f"{tp}.name")
            if t.name not in limits:
                raise ConversionError(where, f"{t.name} is not among the resource_monitors", f"{tp}.name")
            if not t.HasField("threshold"):
                raise ConversionError(where, "required (a threshold trigger; scaled triggers are not supported)", f"{tp}.threshold")
            level = t.threshold.value
            if not 0 < level <= 1:
                raise ConversionError(where, "expected a number above 0, at most 1", f"{tp}.threshold.value")
            threshold = min(threshold, float(level))
    heap = limits.get(FIXED_HEAP_MONITOR, defaults.max_heap_size_bytes)
    return OverloadConfig(
        max_active_downstream_connections=limits.get(CONNECTIONS_MONITOR, defaults.max_active_downstream_connections),
        max_pending_requests=limits.get(PENDING_REQUESTS_MONITOR, defaults.max_pending_requests),
        max_heap_size_bytes=int(heap * threshold),
        refresh_interval=refresh,
    )


def _located(exc: ConversionError, prefix: str) -> ConversionError:
    """``exc`` with its path under ``prefix`` (a resource's place in the bootstrap)."""
    return ConversionError("bootstrap", exc.reason, _join(prefix, exc.path) if exc.path else prefix)


def _check_unique(names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConversionError("bootstrap", f"duplicate {what} name {name!r}", f"{path}[{i}].name")
        seen.add(name)


def bootstrap_from_xds(b: bootstrap_pb2.Bootstrap, source: str = "<memory>") -> Bootstrap:
    """The whole configuration of a bootstrap: its static listeners and clusters with the same
    conversions as LDS/CDS resources, the admin address, the ADS server, the node id and the
    process bounds. Errors carry the path inside the bootstrap (``static_resources.clusters[0].lb_policy``)."""
    where = "bootstrap"
    _only(b, where, "", {"static_resources", "admin", "dynamic_resources", "node", "overload_manager"}, {"layered_runtime", "stats_config", "cluster_manager"})
    _only(b.node, where, "node", {"id", "cluster"}, {"metadata", "locality"})
    _only(b.static_resources, where, "static_resources", {"listeners", "clusters"}, {"secrets"})
    listeners, clusters = [], []
    for i, lst in enumerate(b.static_resources.listeners):
        try:
            listeners.append(listener_from_xds(lst))
        except ConversionError as exc:
            raise _located(exc, f"static_resources.listeners[{i}]") from None
    for i, c in enumerate(b.static_resources.clusters):
        if c.type == cluster_pb2.Cluster.EDS:
            raise ConversionError(where, "unsupported cluster type 'EDS' (STATIC; EDS over xDS)", f"static_resources.clusters[{i}].type")
        try:
            clusters.append(cluster_from_xds(c, None))
        except ConversionError as exc:
            raise _located(exc, f"static_resources.clusters[{i}]") from None
    admin = None
    if b.HasField("admin"):
        _only(b.admin, where, "admin", {"address"}, {"access_log", "access_log_path", "profile_path"})
        admin = AdminConfig(*_socket_address(b.admin.address, where, "admin.address"))
    _check_unique([lst.name for lst in listeners], "static_resources.listeners", "listener")
    _check_unique([c.name for c in clusters], "static_resources.clusters", "cluster")
    known = {c.name for c in clusters}
    for i, (lst, msg) in enumerate(zip(listeners, b.static_resources.listeners, strict=True)):
        at = f"static_resources.listeners[{i}].{proxy_filter_path(msg)}"
        if lst.global_rate_limit is not None and lst.global_rate_limit.service_cluster not in known and not b.HasField("dynamic_resources"):
            raise ConversionError(where, f"unknown rate limit service cluster {lst.global_rate_limit.service_cluster!r}", f"{at}.meta_protocol_filters (ratelimit)")
        for j, route in enumerate(lst.route_config.routes if lst.route_config is not None else ()):
            for name in (*route.action.cluster_names(), *(m.cluster for m in route.mirrors)):
                if name not in known:
                    raise ConversionError(where, f"unknown cluster {name!r}", f"{at}.route_config.routes[{j}].route")
    ads = _ads_address(b, clusters) if b.HasField("dynamic_resources") else None
    overload = overload_from_xds(b.overload_manager) if b.HasField("overload_manager") else OverloadConfig()
    return Bootstrap(tuple(listeners), tuple(clusters), admin, source, ads, b.node.id, overload)


def _ads_address(b: bootstrap_pb2.Bootstrap, clusters: list[ClusterConfig]) -> tuple[str, int] | None:
    """The ADS server named by ``dynamic_resources.ads_config`` (through its static cluster)."""
    where, path = "bootstrap", "dynamic_resources"
    dyn = b.dynamic_resources
    _only(dyn, where, path, {"ads_config"}, {"cds_config", "lds_config"})
    if not dyn.HasField("ads_config"):
        return None
    ap = f"{path}.ads_config"
    ads = dyn.ads_config
    _only(ads, where, ap, {"api_type", "grpc_services"}, {"transport_api_version", "set_node_on_first_message_only"})
    if ads.api_type not in (config_source_pb2.ApiConfigSource.GRPC, config_source_pb2.ApiConfigSource.DELTA_GRPC, 0):
        raise ConversionError(where, "only GRPC (ADS) is supported", f"{ap}.api_type")
    if len(ads.grpc_services) != 1:
        raise ConversionError(where, "exactly one gRPC service is required", f"{ap}.grpc_services")
    gp = f"{ap}.grpc_services[0]"
    _only(ads.grpc_services[0], where, gp, {"envoy_grpc"}, {"timeout"})
    name = ads.grpc_services[0].envoy_grpc.cluster_name
    if not name:
        raise ConversionError(where, "required", f"{gp}.envoy_grpc.cluster_name")
    cluster = next((c for c in clusters if c.name == name), None)
    if cluster is None or not cluster.endpoints:
        raise ConversionError(where, f"no static cluster {name!r} with an endpoint", f"{gp}.envoy_grpc.cluster_name")
    return cluster.endpoints[0].address, cluster.endpoints[0].port


def to_dict(msg: message.Message) -> dict[str, object]:
    """A message as the tree a YAML/JSON file holds (Envoy's field names; plain dicts and lists)."""
    return _plain_tree(json_format.MessageToDict(msg, preserving_proto_field_name=True))  # type: ignore[return-value]


def _plain_tree(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_tree(v) for v in value]
    return value
