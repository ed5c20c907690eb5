"""The one module that converts between the config model and xDS resources.

Routes travel as Envoy's HTTP ``RouteConfiguration`` (one virtual host; header matchers are
attribute matchers; ``request_headers_to_add`` are request mutations), exactly as Aeraki serves
MetaProtocol routes, so stock Envoy accepts them. Listeners carry the MetaProtocol filter config
(``aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy``) with RDS over ADS. Clusters are EDS
clusters; our extensions (key hash function, hash tag, consecutive timeouts) ride in the cluster's
metadata. A listener's connection bound is Envoy's connection_limit filter before the MetaProtocol
one; TCP keepalive and the health check are Envoy's own cluster fields.
"""

from __future__ import annotations

from dataclasses import replace

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

from metaprotocol.config.model import (
    DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
    DEFAULT_MIN_RETRY_CONCURRENCY,
    DEFAULT_RETRY_BUDGET_PERCENT,
    parse_retry_on,
    AccessLog,
    CircuitBreakers,
    FaultPolicy,
    GlobalRateLimit,
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
CONNECTION_LIMIT_FILTER = "envoy.filters.network.connection_limit"
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


class ConversionError(ValueError):
    """A resource cannot be expressed in the config model (an update to NACK)."""


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


def listener_to_xds(lst: ListenerConfig, rds_name: str | None = None) -> listener_pb2.Listener:
    """A listener running the MetaProtocol filter, with its routes over RDS (ADS)."""
    cfg = mpp.MetaProtocolProxy(
        stat_prefix=lst.stat_prefix,
        protocol=mpp.ApplicationProtocol(name=lst.protocol or lst.codec.name, codec=mpp.Codec(name=lst.codec.name)),
        rds=mpp.Rds(config_source=_ads(), route_config_name=rds_name or lst.rds_name or (lst.route_config.name if lst.route_config else lst.name)),
        max_pending_per_connection=lst.max_pending_per_connection,
        upstream_connections_per_endpoint=lst.upstream_connections_per_endpoint,
    )
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
    filters = []
    if lst.max_connections:
        limit_cfg = any_pb2.Any()
        limit_cfg.Pack(connection_limit_pb2.ConnectionLimit(stat_prefix=lst.stat_prefix, max_connections=wrappers_pb2.UInt64Value(value=lst.max_connections)))
        filters.append(listener_components_pb2.Filter(name=CONNECTION_LIMIT_FILTER, typed_config=limit_cfg))
    filters.append(listener_components_pb2.Filter(name=FILTER_NAME, typed_config=typed))
    return listener_pb2.Listener(
        name=lst.name,
        address=_address(lst.address, lst.port),
        filter_chains=[listener_components_pb2.FilterChain(filters=filters)],
    )


def cluster_to_xds(c: ClusterConfig) -> cluster_pb2.Cluster:
    """An EDS cluster (endpoints come as a ClusterLoadAssignment)."""
    out = cluster_pb2.Cluster(
        name=c.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads()),
        lb_policy=_LB[c.lb_policy],
        connect_timeout=_duration(c.connect_timeout),
    )
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


# -- xDS -> model ---------------------------------------------------------------------------------


def attribute_matcher(h: route_components_pb2.HeaderMatcher) -> AttributeMatcher:
    """The attribute matcher of an Envoy HeaderMatcher."""
    which = h.WhichOneof("header_match_specifier")
    if which is None or which == "present_match":
        return AttributeMatcher(h.name, MatchKind.PRESENT, "true" if (which is None or h.present_match) else "false", h.invert_match)
    if which != "string_match":
        legacy = {"exact_match": MatchKind.EXACT, "prefix_match": MatchKind.PREFIX, "suffix_match": MatchKind.SUFFIX, "contains_match": MatchKind.CONTAINS}
        if which in legacy:
            return AttributeMatcher(h.name, legacy[which], getattr(h, which), h.invert_match)
        if which == "safe_regex_match":
            return AttributeMatcher(h.name, MatchKind.REGEX, h.safe_regex_match.regex, h.invert_match)
        raise ConversionError(f"header matcher {which} is not supported")
    sm = h.string_match
    kind = sm.WhichOneof("match_pattern")
    kinds = {"exact": MatchKind.EXACT, "prefix": MatchKind.PREFIX, "suffix": MatchKind.SUFFIX, "contains": MatchKind.CONTAINS}
    if kind in kinds:
        return AttributeMatcher(h.name, kinds[kind], getattr(sm, kind), h.invert_match, sm.ignore_case)
    if kind == "safe_regex":
        return AttributeMatcher(h.name, MatchKind.REGEX, sm.safe_regex.regex, h.invert_match, sm.ignore_case)
    raise ConversionError(f"string matcher {kind} is not supported")


def route_config_from_xds(rc: route_pb2.RouteConfiguration) -> RouteConfig:
    """A route table from Envoy's HTTP RouteConfiguration (the first virtual host)."""
    if len(rc.virtual_hosts) != 1:
        raise ConversionError(f"route config {rc.name}: exactly one virtual host expected, got {len(rc.virtual_hosts)}")
    rules = []
    for i, r in enumerate(rc.virtual_hosts[0].routes):
        a = r.route
        which = a.WhichOneof("cluster_specifier")
        if which == "cluster":
            action_kwargs: dict[str, object] = {"cluster": a.cluster}
        elif which == "weighted_clusters":
            action_kwargs = {"weighted_clusters": tuple(WeightedCluster(w.name, w.weight.value) for w in a.weighted_clusters.clusters)}
        else:
            raise ConversionError(f"route {r.name or i}: a cluster or weighted clusters is required")
        subset = tuple(sorted((str(k), str(v)) for k, v in a.metadata_match.filter_metadata["envoy.lb"].items())) if "envoy.lb" in a.metadata_match.filter_metadata else ()
        action = RouteAction(
            **action_kwargs,  # type: ignore[arg-type]
            hash_policy=tuple(h.header.header_name.lower() for h in a.hash_policy if h.HasField("header")),
            subset=subset,
            timeout=_seconds(a.timeout) if a.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT,
        )
        retry = None
        if a.HasField("retry_policy"):
            rp = a.retry_policy
            try:
                kinds, opt_in = parse_retry_on(rp.retry_on)
            except ValueError as exc:
                raise ConversionError(f"route {r.name or i}: retry_on: {exc}") from None
            retry = RetryPolicy(
                rp.num_retries.value if rp.HasField("num_retries") else 1, kinds, _seconds(rp.per_try_timeout), retry_non_idempotent=opt_in
            )
        fault = None
        if FAULT_METADATA in r.metadata.filter_metadata:
            fm = r.metadata.filter_metadata[FAULT_METADATA]
            fault = FaultPolicy(float(fm["delay"]), float(fm["delay_fraction"]), str(fm["abort_kind"]), float(fm["abort_fraction"]))
        rules.append(
            RouteRule(
                name=r.name,
                match=tuple(attribute_matcher(h) for h in r.match.headers),
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


def listener_from_xds(lst: listener_pb2.Listener) -> ListenerConfig:
    """A listener config from an LDS resource running the MetaProtocol filter."""
    if len(lst.filter_chains) != 1 or len(lst.filter_chains[0].filters) not in (1, 2):
        raise ConversionError(f"listener {lst.name}: exactly one filter chain with the MetaProtocol filter (after an optional connection_limit) expected")
    *before, f = lst.filter_chains[0].filters
    max_connections = _connection_limit(lst.name, before[0]) if before else 0
    cfg = mpp.MetaProtocolProxy()
    if not f.typed_config.Is(cfg.DESCRIPTOR):
        raise ConversionError(f"listener {lst.name}: filter {f.name} is not a MetaProtocolProxy")
    f.typed_config.Unpack(cfg)
    codec = cfg.protocol.codec.name or cfg.codec.name
    if not codec:
        raise ConversionError(f"listener {lst.name}: no codec")
    sa = lst.address.socket_address
    if cfg.WhichOneof("route_specifier") != "rds" or not cfg.rds.route_config_name:
        raise ConversionError(f"listener {lst.name}: routes must come over RDS (rds.route_config_name)")
    limit = None
    global_limit = None
    for f in cfg.meta_protocol_filters:
        if f.name == GLOBAL_RATELIMIT_FILTER:
            grl = ratelimit_pb2.RateLimit()
            if not f.config.Unpack(grl):
                raise ConversionError(f"listener {lst.name}: bad global rate limit config")
            global_limit = GlobalRateLimit(
                domain=grl.domain,
                service_cluster=grl.rate_limit_service.grpc_service.envoy_grpc.cluster_name,
                descriptors=tuple((d.property, d.descriptor_key) for d in grl.descriptors),
                match=tuple(attribute_matcher(h) for h in grl.match.metadata),
                timeout=_seconds(grl.timeout) if grl.HasField("timeout") else 0.02,
                deny_on_fail=grl.failure_mode_deny,
            )
            continue
        if f.name == LOCAL_RATELIMIT_FILTER:
            msg = local_ratelimit_pb2.LocalRateLimit()
            if not f.config.Unpack(msg):
                raise ConversionError(f"listener {lst.name}: bad local rate limit config")
            limit = LocalRateLimit(
                tuple(RateLimitCondition(tuple(attribute_matcher(h) for h in c.match.metadata), _bucket_from_xds(c.token_bucket)) for c in msg.conditions),
                _bucket_from_xds(msg.token_bucket) if msg.HasField("token_bucket") else None,
            )
        elif f.name != ROUTER_FILTER:
            raise ConversionError(f"listener {lst.name}: unsupported filter {f.name}")
    logs = []
    for a in cfg.access_log:
        file_log = file_pb2.FileAccessLog()
        if not a.typed_config.Unpack(file_log):
            raise ConversionError(f"listener {lst.name}: access log {a.name} is not a FileAccessLog")
        # A Struct is a map: over xDS the fields arrive in key order.
        logs.append(AccessLog(file_log.path, tuple(sorted((str(k), str(v)) for k, v in file_log.log_format.json_format.items()))))
    return ListenerConfig(
        name=lst.name,
        address=sa.address,
        port=sa.port_value,
        codec=CodecRef(codec),
        stat_prefix=cfg.stat_prefix or lst.name,
        rds_name=cfg.rds.route_config_name,
        protocol=cfg.protocol.name if cfg.protocol.name != codec else "",
        idle_timeout=_seconds(cfg.idle_timeout) if cfg.HasField("idle_timeout") else 0.0,
        max_pending_per_connection=cfg.max_pending_per_connection or 4096,
        upstream_connections_per_endpoint=cfg.upstream_connections_per_endpoint or 1,
        local_rate_limit=limit,
        access_log=tuple(logs),
        global_rate_limit=global_limit,
        max_connections=max_connections,
    )


def _connection_limit(listener: str, f: listener_components_pb2.Filter) -> int:
    """The bound of a connection_limit filter; a delay (we close at once) is refused."""
    limit = connection_limit_pb2.ConnectionLimit()
    if not f.typed_config.Is(limit.DESCRIPTOR):
        raise ConversionError(f"listener {listener}: filter {f.name} before the MetaProtocol filter is not a ConnectionLimit")
    f.typed_config.Unpack(limit)
    if limit.HasField("runtime_enabled"):
        raise ConversionError(f"listener {listener}: connection_limit runtime_enabled is not supported")
    if limit.HasField("delay") and _seconds(limit.delay) != 0:
        raise ConversionError(f"listener {listener}: connection_limit delay is not supported (a connection past the limit is closed at once)")
    if limit.max_connections.value < 1:
        raise ConversionError(f"listener {listener}: connection_limit max_connections must be at least 1")
    return int(limit.max_connections.value)


def _tcp_keepalive(c: cluster_pb2.Cluster) -> TcpKeepalive | None:
    if not c.HasField("upstream_connection_options"):
        return None
    options = c.upstream_connection_options
    for field, _ in options.ListFields():
        if field.name != "tcp_keepalive":
            raise ConversionError(f"cluster {c.name}: upstream_connection_options.{field.name} is not supported")
    if not options.HasField("tcp_keepalive"):
        return None
    k = options.tcp_keepalive
    return TcpKeepalive(k.keepalive_probes.value, float(k.keepalive_time.value), float(k.keepalive_interval.value))


def _health_check(c: cluster_pb2.Cluster) -> HealthCheck | None:
    if not c.health_checks:
        return None
    if len(c.health_checks) > 1:
        raise ConversionError(f"cluster {c.name}: health_checks: only one health check per cluster is supported")
    hc = c.health_checks[0]
    where = f"cluster {c.name}: health_checks[0]"
    for field, _ in hc.ListFields():
        if field.name not in _HEALTH_CHECK_FIELDS | _HEALTH_CHECK_IGNORED:
            raise ConversionError(f"{where}.{field.name} is not supported")
    for name in ("interval", "timeout"):
        if _seconds(getattr(hc, name)) <= 0:
            raise ConversionError(f"{where}.{name} is required and must be above 0")
    unhealthy = hc.unhealthy_threshold.value if hc.HasField("unhealthy_threshold") else 3
    healthy = hc.healthy_threshold.value if hc.HasField("healthy_threshold") else 2
    if unhealthy < 1 or healthy < 1:
        raise ConversionError(f"{where}: unhealthy_threshold and healthy_threshold must be at least 1")
    which = hc.WhichOneof("health_checker")
    if which == "tcp_health_check":
        if hc.tcp_health_check.ListFields():
            raise ConversionError(f"{where}.tcp_health_check: payload checks are not supported (an empty tcp_health_check connects only)")
        kind = HealthCheckKind.TCP
    elif which == "custom_health_check":
        custom = hc.custom_health_check
        if custom.name != CODEC_HEALTH_CHECKER:
            raise ConversionError(f"{where}.custom_health_check: unsupported health checker {custom.name!r} (only {CODEC_HEALTH_CHECKER})")
        config = struct_pb2.Struct()
        if custom.HasField("typed_config") and (not custom.typed_config.Unpack(config) or config.fields):
            raise ConversionError(f"{where}.custom_health_check.typed_config: expected an empty google.protobuf.Struct")
        kind = HealthCheckKind.CODEC
    else:
        raise ConversionError(f"{where}: {which or 'no health checker'} is not supported (tcp_health_check or custom_health_check {CODEC_HEALTH_CHECKER})")
    return HealthCheck(_seconds(hc.interval), _seconds(hc.timeout), unhealthy, healthy, kind)


def _struct_str(s: object, key: str, default: str) -> str:
    """A string field of a protobuf Struct (which has no ``get``), or ``default``."""
    return str(s[key]) if s and key in s else default  # type: ignore[index, operator]


def cluster_from_xds(c: cluster_pb2.Cluster, cla: endpoint_pb2.ClusterLoadAssignment | None) -> ClusterConfig:
    """A cluster config from a CDS resource and its endpoints (EDS)."""
    if c.lb_policy not in _LB_BACK:
        raise ConversionError(f"cluster {c.name}: lb_policy {cluster_pb2.Cluster.LbPolicy.Name(c.lb_policy)} is not supported")
    endpoints = []
    for group in cla.endpoints if cla is not None else ():
        for lbe in group.lb_endpoints:
            sa = lbe.endpoint.address.socket_address
            labels = lbe.metadata.filter_metadata["envoy.lb"] if "envoy.lb" in lbe.metadata.filter_metadata else {}
            endpoints.append(
                Endpoint(sa.address, sa.port_value, lbe.load_balancing_weight.value or 1, tuple(sorted((str(k), str(v)) for k, v in labels.items())))
            )
    ext = c.metadata.filter_metadata[EXT_METADATA] if EXT_METADATA in c.metadata.filter_metadata else {}
    breakers = None
    if c.circuit_breakers.thresholds:
        t = c.circuit_breakers.thresholds[0]
        breakers = CircuitBreakers(t.max_requests.value, t.max_pending_requests.value, t.max_retries.value)
        if t.HasField("retry_budget"):
            b = t.retry_budget
            breakers = replace(
                breakers,
                retry_budget_percent=b.budget_percent.value if b.HasField("budget_percent") else DEFAULT_RETRY_BUDGET_PERCENT,
                min_retry_concurrency=b.min_retry_concurrency.value if b.HasField("min_retry_concurrency") else DEFAULT_MIN_RETRY_CONCURRENCY,
            )
    outlier = None
    if c.HasField("outlier_detection"):
        o = c.outlier_detection
        outlier = OutlierDetection(
            o.consecutive_5xx.value if o.HasField("consecutive_5xx") else 5,
            _seconds(o.base_ejection_time) if o.HasField("base_ejection_time") else 30.0,
            o.max_ejection_percent.value if o.HasField("max_ejection_percent") else 10,
        )
    return ClusterConfig(
        name=c.name,
        endpoints=tuple(endpoints),
        lb_policy=_LB_BACK[c.lb_policy],
        connect_timeout=_seconds(c.connect_timeout) if c.HasField("connect_timeout") else DEFAULT_CONNECT_TIMEOUT,
        hash_function=_struct_str(ext, "hash_function", "md5"),
        hash_tag=_struct_str(ext, "hash_tag", ""),
        circuit_breakers=breakers,
        outlier_detection=outlier,
        tcp_keepalive=_tcp_keepalive(c),
        max_consecutive_timeouts=_struct_int(ext, "max_consecutive_timeouts", DEFAULT_MAX_CONSECUTIVE_TIMEOUTS, c.name),
        health_check=_health_check(c),
    )


def _struct_int(s: object, key: str, default: int, cluster: str) -> int:
    """A whole, non-negative number field of a protobuf Struct (numbers are doubles), or ``default``."""
    if not s or key not in s:  # type: ignore[operator]
        return default
    value = s[key]  # type: ignore[index]
    if not isinstance(value, float | int) or isinstance(value, bool) or value < 0 or value != int(value):
        raise ConversionError(f"cluster {cluster}: metadata {EXT_METADATA}.{key}: expected a whole number, at least 0")
    return int(value)
