"""Read an Envoy-style bootstrap (the shape Envoy + Aeraki's meta_protocol_proxy read).

```yaml
static_resources:
  listeners:
  - name: dubbo
    address: {socket_address: {address: 127.0.0.1, port_value: 20880}}
    filter_chains:
    - filters:
      - name: aeraki.meta_protocol_proxy
        typed_config:
          "@type": type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy
          stat_prefix: outbound|20880||demo
          application_protocol: dubbo
          codec: {name: aeraki.meta_protocol.codec.dubbo}
          route_config: {name: demo_20880, routes: [...]}
  clusters:
  - name: outbound|20880|v1|demo
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment: {cluster_name: ..., endpoints: [{lb_endpoints: [...]}]}
```

Unknown fields are rejected with their path (a typo must not silently change routing); Envoy
fields that do not apply to this proxy are accepted and ignored where listed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, TypeVar

import yaml

from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
    DEFAULT_MIN_RETRY_CONCURRENCY,
    DEFAULT_RETRY_BUDGET_PERCENT,
    DEFAULT_ROUTE_TIMEOUT,
    HASH_FUNCTIONS,
    parse_retry_on,
    AccessLog,
    AdminConfig,
    CircuitBreakers,
    GlobalRateLimit,
    HealthCheck,
    HealthCheckKind,
    OutlierDetection,
    OverloadConfig,
    TcpKeepalive,
    AttributeMatcher,
    FaultPolicy,
    LocalRateLimit,
    MirrorPolicy,
    RateLimitCondition,
    RetryPolicy,
    TokenBucket,
    Bootstrap,
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

FILTER_NAMES: Final = frozenset(
    {
        "aeraki.meta_protocol_proxy",
        "envoy.filters.network.meta_protocol_proxy",
        "metaprotocol.proxy",
    }
)
PROXY_TYPE: Final = "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
CONNECTION_LIMIT_FILTER: Final = "envoy.filters.network.connection_limit"
CONNECTION_LIMIT_TYPE: Final = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
CODEC_HEALTH_CHECKER: Final = "metaprotocol.health_checkers.codec"
FIXED_HEAP_MONITOR: Final = "envoy.resource_monitors.fixed_heap"
CONNECTIONS_MONITOR: Final = "envoy.resource_monitors.global_downstream_max_connections"
PENDING_REQUESTS_MONITOR: Final = "metaprotocol.resource_monitors.pending_requests"
OVERLOAD_MONITORS: Final = {
    # monitor name -> (its typed_config @type, None for ours: a plain struct; the field read)
    FIXED_HEAP_MONITOR: ("type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig", "max_heap_size_bytes"),
    CONNECTIONS_MONITOR: (
        "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        "max_active_downstream_connections",
    ),
    PENDING_REQUESTS_MONITOR: (None, "max_pending_requests"),
}
OVERLOAD_ACTIONS: Final = frozenset({"envoy.overload_actions.stop_accepting_requests", "envoy.overload_actions.stop_accepting_connections"})
STRUCT_TYPE: Final = "type.googleapis.com/google.protobuf.Struct"
TYPED_STRUCT_TYPES: Final = frozenset(
    {"type.googleapis.com/udpa.type.v1.TypedStruct", "type.googleapis.com/xds.type.v3.TypedStruct"}
)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|ms|us|m|h)?$")
_UNITS: Final = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "h": 3600.0, None: 1.0}
T = TypeVar("T")


class _Reader:
    """Walks a YAML tree, remembering the path for error messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> ConfigError:
        return ConfigError(self.source, path, reason)

    def mapping(self, value: object, path: str) -> Mapping[str, object]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {type(value).__name__}")
        return value

    def seq(self, value: object, path: str) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {type(value).__name__}")
        return value

    def keys(
        self, m: Mapping[str, object], path: str, allowed: set[str], ignored: frozenset[str] | set[str] = frozenset()
    ) -> None:
        for k in m:
            if k not in allowed and k not in ignored:
                raise self.fail(_join(path, str(k)), "unknown or unsupported field")

    def str_(self, m: Mapping[str, object], key: str, path: str, default: str | None = None) -> str:
        value = m.get(key, default)
        if value is None:
            raise self.fail(_join(path, key), "required")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(_join(path, key), "expected a string")
        return str(value)

    def int_(self, m: Mapping[str, object], key: str, path: str, default: int | None = None) -> int:
        value = m.get(key, default)
        if isinstance(value, Mapping) and "value" in value:  # protobuf wrapper types
            value = value["value"]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(_join(path, key), "expected an integer")
        return value

    def duration(self, m: Mapping[str, object], key: str, path: str, default: float) -> float:
        value = m.get(key)
        if value is None:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, Mapping):  # {seconds: 1, nanos: 0}
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        match = _DURATION.match(str(value).strip())
        if match is None:
            raise self.fail(_join(path, key), f"not a duration: {value!r} (use e.g. 1.5s, 250ms)")
        return float(match.group(1)) * _UNITS[match.group(2)]

    def each(
        self, value: object, path: str, parse: Callable[[Mapping[str, object], str], T]
    ) -> list[T]:
        return [
            parse(self.mapping(item, f"{path}[{i}]"), f"{path}[{i}]")
            for i, item in enumerate(self.seq(value, path))
        ]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def load_bootstrap(path: str | Path) -> Bootstrap:
    """Read and validate a bootstrap file.

    Raises:
        ConfigError: with the file, the path inside it and the reason.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"not valid YAML: {exc}") from exc
    return parse_bootstrap(tree, source)


def parse_bootstrap(tree: object, source: str = "<memory>") -> Bootstrap:
    """Build a Bootstrap from an already-loaded YAML/JSON tree."""
    r = _Reader(source)
    root = r.mapping(tree, "")
    r.keys(
        root,
        "",
        {"static_resources", "admin", "dynamic_resources", "node", "overload_manager"},
        {"layered_runtime", "stats_config", "cluster_manager"},
    )
    node = r.mapping(root.get("node"), "node")
    r.keys(node, "node", {"id", "cluster"}, {"metadata", "locality"})
    static = r.mapping(root.get("static_resources"), "static_resources")
    r.keys(static, "static_resources", {"listeners", "clusters"}, {"secrets"})
    listeners = r.each(static.get("listeners"), "static_resources.listeners", lambda m, p: _listener(r, m, p))
    clusters = r.each(static.get("clusters"), "static_resources.clusters", lambda m, p: _cluster(r, m, p))
    admin = None
    if root.get("admin") is not None:
        admin_m = r.mapping(root["admin"], "admin")
        r.keys(admin_m, "admin", {"address"}, {"access_log", "access_log_path", "profile_path"})
        host, port = _socket_address(r, admin_m.get("address"), "admin.address")
        admin = AdminConfig(host, port)
    _check_unique(r, [lst.name for lst in listeners], "static_resources.listeners", "listener")
    _check_unique(r, [c.name for c in clusters], "static_resources.clusters", "cluster")
    known = {c.name for c in clusters}
    for i, lst in enumerate(listeners):
        if lst.global_rate_limit is not None and lst.global_rate_limit.service_cluster not in known and root.get("dynamic_resources") is None:
            raise r.fail(f"static_resources.listeners[{i}] (ratelimit filter)", f"unknown rate limit service cluster {lst.global_rate_limit.service_cluster!r}")
        if lst.route_config is None:
            continue
        for j, route in enumerate(lst.route_config.routes):
            for name in (*route.action.cluster_names(), *(mp.cluster for mp in route.mirrors)):
                if name not in known:
                    raise r.fail(
                        f"static_resources.listeners[{i}]...route_config.routes[{j}].route",
                        f"unknown cluster {name!r}",
                    )
    ads = _ads_address(r, root.get("dynamic_resources"), clusters)
    overload = _overload(r, root.get("overload_manager"), "overload_manager")
    return Bootstrap(tuple(listeners), tuple(clusters), admin, source, ads, str(node.get("id", "")), overload)


def _overload(r: _Reader, value: object, path: str) -> OverloadConfig:
    """Envoy's ``overload_manager``: the resource monitors set the process bounds (a monitor not
    listed keeps its default; 0 disables), and stop_accepting_requests/connections actions
    triggered on the fixed heap monitor scale the heap bound by their (smallest) threshold."""
    if value is None:
        return OverloadConfig()
    m = r.mapping(value, path)
    r.keys(m, path, {"refresh_interval", "resource_monitors", "actions"})
    defaults = OverloadConfig()
    refresh = r.duration(m, "refresh_interval", path, defaults.refresh_interval)
    if refresh <= 0:
        raise r.fail(f"{path}.refresh_interval", "must be above 0")
    limits: dict[str, int] = {}
    for i, item in enumerate(r.seq(m.get("resource_monitors"), f"{path}.resource_monitors")):
        mp = f"{path}.resource_monitors[{i}]"
        mm = r.mapping(item, mp)
        r.keys(mm, mp, {"name", "typed_config"})
        name = r.str_(mm, "name", mp)
        if name not in OVERLOAD_MONITORS:
            raise r.fail(f"{mp}.name", f"unsupported resource monitor {name!r} (one of {', '.join(sorted(OVERLOAD_MONITORS))})")
        if name in limits:
            raise r.fail(f"{mp}.name", f"resource monitor {name!r} is listed twice")
        type_url, key = OVERLOAD_MONITORS[name]
        tp = f"{mp}.typed_config"
        tc = r.mapping(mm.get("typed_config"), tp)
        r.keys(tc, tp, {"@type", key})
        expected = type_url or STRUCT_TYPE
        if "@type" in tc and tc["@type"] != expected:
            raise r.fail(f"{tp}.@type", f"expected {expected}")
        limit = r.int_(tc, key, tp)
        if limit < 0:
            raise r.fail(f"{tp}.{key}", "must not be negative (0 disables the bound)")
        limits[name] = limit
    threshold = 1.0
    for i, item in enumerate(r.seq(m.get("actions"), f"{path}.actions")):
        ap = f"{path}.actions[{i}]"
        am = r.mapping(item, ap)
        r.keys(am, ap, {"name", "triggers"})
        name = r.str_(am, "name", ap)
        if name not in OVERLOAD_ACTIONS:
            raise r.fail(f"{ap}.name", f"unsupported overload action {name!r} (one of {', '.join(sorted(OVERLOAD_ACTIONS))})")
        triggers = r.seq(am.get("triggers"), f"{ap}.triggers")
        if not triggers:
            raise r.fail(f"{ap}.triggers", "at least one trigger is required")
        for j, trigger in enumerate(triggers):
            tp = f"{ap}.triggers[{j}]"
            tm = r.mapping(trigger, tp)
            r.keys(tm, tp, {"name", "threshold"})
            monitor = r.str_(tm, "name", tp)
            if monitor != FIXED_HEAP_MONITOR:
                raise r.fail(f"{tp}.name", f"only {FIXED_HEAP_MONITOR} triggers are supported")
            if monitor not in limits:
                raise r.fail(f"{tp}.name", f"{monitor} is not among the resource_monitors")
            if tm.get("threshold") is None:
                raise r.fail(f"{tp}.threshold", "required (a threshold trigger; scaled triggers are not supported)")
            thm = r.mapping(tm["threshold"], f"{tp}.threshold")
            r.keys(thm, f"{tp}.threshold", {"value"})
            level = thm.get("value")
            if not isinstance(level, int | float) or isinstance(level, bool) or not 0 < level <= 1:
                raise r.fail(f"{tp}.threshold.value", "expected a number above 0, at most 1")
            threshold = min(threshold, float(level))
    heap = limits.get(FIXED_HEAP_MONITOR, defaults.max_heap_size_bytes)
    return OverloadConfig(
        max_active_downstream_connections=limits.get(CONNECTIONS_MONITOR, defaults.max_active_downstream_connections),
        max_pending_requests=limits.get(PENDING_REQUESTS_MONITOR, defaults.max_pending_requests),
        max_heap_size_bytes=int(heap * threshold),
        refresh_interval=refresh,
    )


def _ads_address(r: _Reader, value: object, clusters: list[ClusterConfig]) -> tuple[str, int] | None:
    """The ADS server named by ``dynamic_resources.ads_config`` (through its static cluster)."""
    if value is None:
        return None
    path = "dynamic_resources"
    dyn = r.mapping(value, path)
    r.keys(dyn, path, {"ads_config"}, {"cds_config", "lds_config"})
    if dyn.get("ads_config") is None:
        return None
    ap = f"{path}.ads_config"
    ads = r.mapping(dyn["ads_config"], ap)
    r.keys(ads, ap, {"api_type", "grpc_services"}, {"transport_api_version", "set_node_on_first_message_only"})
    if str(ads.get("api_type", "GRPC")) not in ("GRPC", "DELTA_GRPC"):
        raise r.fail(f"{ap}.api_type", "only GRPC (ADS) is supported")
    services = r.seq(ads.get("grpc_services"), f"{ap}.grpc_services")
    if len(services) != 1:
        raise r.fail(f"{ap}.grpc_services", "exactly one gRPC service is required")
    gp = f"{ap}.grpc_services[0]"
    svc = r.mapping(services[0], gp)
    envoy_grpc = r.mapping(svc.get("envoy_grpc"), f"{gp}.envoy_grpc")
    name = r.str_(envoy_grpc, "cluster_name", f"{gp}.envoy_grpc")
    cluster = next((c for c in clusters if c.name == name), None)
    if cluster is None or not cluster.endpoints:
        raise r.fail(f"{gp}.envoy_grpc.cluster_name", f"no static cluster {name!r} with an endpoint")
    return cluster.endpoints[0].address, cluster.endpoints[0].port


def _check_unique(r: _Reader, names: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise r.fail(f"{path}[{i}].name", f"duplicate {what} name {name!r}")
        seen.add(name)


def _socket_address(r: _Reader, value: object, path: str) -> tuple[str, int]:
    m = r.mapping(value, path)
    r.keys(m, path, {"socket_address"})
    sa = r.mapping(m.get("socket_address"), f"{path}.socket_address")
    sp = f"{path}.socket_address"
    r.keys(sa, sp, {"address", "port_value"}, {"protocol", "ipv4_compat", "resolver_name"})
    port = r.int_(sa, "port_value", sp)
    if not 0 <= port <= 65535:  # noqa: PLR2004
        raise r.fail(f"{sp}.port_value", "port out of range")
    return r.str_(sa, "address", sp), port


def _listener(r: _Reader, m: Mapping[str, object], path: str) -> ListenerConfig:
    r.keys(
        m,
        path,
        {"name", "address", "filter_chains"},
        {"traffic_direction", "per_connection_buffer_limit_bytes", "listener_filters", "metadata"},
    )
    name = r.str_(m, "name", path)
    host, port = _socket_address(r, m.get("address"), f"{path}.address")
    chains = r.seq(m.get("filter_chains"), f"{path}.filter_chains")
    if len(chains) != 1:
        raise r.fail(f"{path}.filter_chains", "exactly one filter chain is supported")
    chain_path = f"{path}.filter_chains[0]"
    chain = r.mapping(chains[0], chain_path)
    r.keys(chain, chain_path, {"filters"}, {"name", "filter_chain_match"})
    filters = r.seq(chain.get("filters"), f"{chain_path}.filters")
    found = None
    max_connections = None
    for i, f in enumerate(filters):
        fp = f"{chain_path}.filters[{i}]"
        fm = r.mapping(f, fp)
        if fm.get("name") in FILTER_NAMES or _type_of(fm.get("typed_config")) == PROXY_TYPE:
            found = (fm, fp)
        elif fm.get("name") == CONNECTION_LIMIT_FILTER or _type_of(fm.get("typed_config")) == CONNECTION_LIMIT_TYPE:
            if found is not None:
                raise r.fail(fp, f"{CONNECTION_LIMIT_FILTER} must come before the aeraki.meta_protocol_proxy filter")
            if max_connections is not None:
                raise r.fail(fp, f"{CONNECTION_LIMIT_FILTER} is listed twice")
            max_connections = _connection_limit(r, fm, fp)
        else:
            raise r.fail(f"{fp}.name", f"unsupported network filter {fm.get('name')!r}")
    if found is None:
        raise r.fail(f"{chain_path}.filters", "no aeraki.meta_protocol_proxy filter")
    fm, fp = found
    r.keys(fm, fp, {"name", "typed_config"})
    cfg, cfg_path = _unwrap_typed(r, fm.get("typed_config"), f"{fp}.typed_config")
    return _proxy_filter(r, cfg, cfg_path, name, host, port, max_connections or 0)


def _connection_limit(r: _Reader, m: Mapping[str, object], path: str) -> int:
    """Envoy's ``envoy.filters.network.connection_limit``: the listener's open connection bound.
    A connection past it is closed at once, so a ``delay`` is refused."""
    r.keys(m, path, {"name", "typed_config"})
    cfg, cp = _unwrap_typed(r, m.get("typed_config"), f"{path}.typed_config", CONNECTION_LIMIT_TYPE)
    r.keys(cfg, cp, {"@type", "stat_prefix", "max_connections", "delay"})
    if cfg.get("max_connections") is None:
        raise r.fail(f"{cp}.max_connections", "required")
    limit = r.int_(cfg, "max_connections", cp)
    if limit < 1:
        raise r.fail(f"{cp}.max_connections", "must be at least 1")
    if r.duration(cfg, "delay", cp, 0.0) != 0:
        raise r.fail(f"{cp}.delay", "unsupported: a connection past the limit is closed at once")
    return limit


def _type_of(value: object) -> object:
    """A typed_config's type, looking through a TypedStruct."""
    if not isinstance(value, Mapping):
        return None
    return value.get("type_url") if value.get("@type") in TYPED_STRUCT_TYPES else value.get("@type")


def _unwrap_typed(r: _Reader, value: object, path: str, expected: str = PROXY_TYPE) -> tuple[Mapping[str, object], str]:
    m = r.mapping(value, path)
    kind = m.get("@type")
    if kind in TYPED_STRUCT_TYPES:
        if m.get("type_url") != expected:
            raise r.fail(f"{path}.type_url", f"expected {expected}")
        return r.mapping(m.get("value"), f"{path}.value"), f"{path}.value"
    if kind is not None and kind != expected:
        raise r.fail(f"{path}.@type", f"expected {expected}")
    return m, path


def _proxy_filter(
    r: _Reader, m: Mapping[str, object], path: str, name: str, host: str, port: int, max_connections: int = 0
) -> ListenerConfig:
    r.keys(
        m,
        path,
        {
            "@type", "stat_prefix", "application_protocol", "codec", "protocol", "route_config",
            "rds", "idle_timeout", "max_pending_per_connection", "upstream_connections_per_endpoint",
            "meta_protocol_filters",
        },
        {"tracing", "access_log"},
    )  # fmt: skip
    codec = _codec(r, m, path)
    local_rate_limit = None
    global_rate_limit = None
    rds_name = None
    route_config = None
    if m.get("route_config") is not None:
        route_config = _route_config(r, r.mapping(m["route_config"], f"{path}.route_config"), f"{path}.route_config")
    elif m.get("rds") is not None:
        rds = r.mapping(m["rds"], f"{path}.rds")
        r.keys(rds, f"{path}.rds", {"route_config_name", "config_source"})
        rds_name = r.str_(rds, "route_config_name", f"{path}.rds")
    else:
        raise r.fail(path, "one of route_config and rds is required")
    for i, f in enumerate(r.seq(m.get("meta_protocol_filters"), f"{path}.meta_protocol_filters")):
        fp = f"{path}.meta_protocol_filters[{i}]"
        fm = r.mapping(f, fp)
        fname = fm.get("name")
        if fname == "aeraki.meta_protocol.filters.local_ratelimit":
            local_rate_limit = _local_rate_limit(r, r.mapping(fm.get("config"), f"{fp}.config"), f"{fp}.config")
        elif fname == "aeraki.meta_protocol.filters.ratelimit":
            global_rate_limit = _global_rate_limit(r, r.mapping(fm.get("config"), f"{fp}.config"), f"{fp}.config")
        elif fname not in ("aeraki.meta_protocol.filters.router", None):
            raise r.fail(f"{fp}.name", f"unsupported filter {fname!r}")
    access_log = tuple(
        _access_log(r, r.mapping(a, f"{path}.access_log[{i}]"), f"{path}.access_log[{i}]")
        for i, a in enumerate(r.seq(m.get("access_log"), f"{path}.access_log"))
    )
    return ListenerConfig(
        name=name,
        address=host,
        port=port,
        codec=codec,
        stat_prefix=r.str_(m, "stat_prefix", path, default=name),
        route_config=route_config,
        rds_name=rds_name,
        idle_timeout=r.duration(m, "idle_timeout", path, 0.0),
        max_pending_per_connection=r.int_(m, "max_pending_per_connection", path, 4096),
        upstream_connections_per_endpoint=r.int_(m, "upstream_connections_per_endpoint", path, 1),
        local_rate_limit=local_rate_limit,
        access_log=access_log,
        global_rate_limit=global_rate_limit,
        max_connections=max_connections,
        protocol=_protocol_name(m, codec),
    )


def _protocol_name(m: Mapping[str, object], codec: CodecRef) -> str:
    """``protocol.name`` (or the deprecated ``application_protocol``) when it is not the codec's."""
    proto = m.get("protocol")
    name = proto.get("name") if isinstance(proto, Mapping) else m.get("application_protocol")
    return name if isinstance(name, str) and name != codec.name else ""


def _bucket(r: _Reader, m: Mapping[str, object], path: str) -> TokenBucket:
    r.keys(m, path, {"max_tokens", "tokens_per_fill", "fill_interval"})
    max_tokens = r.int_(m, "max_tokens", path)
    per_fill = r.int_(m, "tokens_per_fill", path, 1)
    interval = r.duration(m, "fill_interval", path, 0.0)
    if max_tokens < 1 or per_fill < 1:
        raise r.fail(path, "max_tokens and tokens_per_fill must be at least 1")
    if interval < 0.05:  # noqa: PLR2004 - Aeraki's (and Envoy's) minimum
        raise r.fail(f"{path}.fill_interval", "must be at least 50ms")
    return TokenBucket(max_tokens, per_fill, interval)


def _local_rate_limit(r: _Reader, m: Mapping[str, object], path: str) -> LocalRateLimit:
    """Aeraki's aeraki.meta_protocol_proxy.filters.local_ratelimit.v1alpha.LocalRateLimit."""
    r.keys(m, path, {"@type", "stat_prefix", "token_bucket", "conditions"})
    default = _bucket(r, r.mapping(m["token_bucket"], f"{path}.token_bucket"), f"{path}.token_bucket") if m.get("token_bucket") is not None else None
    conditions = []
    for i, c in enumerate(r.seq(m.get("conditions"), f"{path}.conditions")):
        cp = f"{path}.conditions[{i}]"
        cm = r.mapping(c, cp)
        r.keys(cm, cp, {"match", "token_bucket"})
        match = r.mapping(cm.get("match"), f"{cp}.match")
        r.keys(match, f"{cp}.match", {"metadata"})
        matchers = r.each(match.get("metadata"), f"{cp}.match.metadata", lambda mm, mp: _matcher(r, mm, mp))
        conditions.append(RateLimitCondition(tuple(matchers), _bucket(r, r.mapping(cm.get("token_bucket"), f"{cp}.token_bucket"), f"{cp}.token_bucket")))
    if default is None and not conditions:
        raise r.fail(path, "token_bucket or conditions is required")
    return LocalRateLimit(tuple(conditions), default)


def _global_rate_limit(r: _Reader, m: Mapping[str, object], path: str) -> GlobalRateLimit:
    """Aeraki's aeraki.meta_protocol_proxy.filters.ratelimit.v1alpha.RateLimit."""
    r.keys(m, path, {"@type", "match", "domain", "timeout", "failure_mode_deny", "rate_limit_service", "descriptors"})
    match = r.mapping(m.get("match"), f"{path}.match")
    r.keys(match, f"{path}.match", {"metadata"})
    matchers = r.each(match.get("metadata"), f"{path}.match.metadata", lambda mm, mp: _matcher(r, mm, mp))
    rls = r.mapping(m.get("rate_limit_service"), f"{path}.rate_limit_service")
    r.keys(rls, f"{path}.rate_limit_service", {"grpc_service", "transport_api_version"})
    grpc_service = r.mapping(rls.get("grpc_service"), f"{path}.rate_limit_service.grpc_service")
    r.keys(grpc_service, f"{path}.rate_limit_service.grpc_service", {"envoy_grpc", "timeout"})
    envoy_grpc = r.mapping(grpc_service.get("envoy_grpc"), f"{path}.rate_limit_service.grpc_service.envoy_grpc")
    cluster = r.str_(envoy_grpc, "cluster_name", f"{path}.rate_limit_service.grpc_service.envoy_grpc")
    descriptors = []
    for i, d in enumerate(r.seq(m.get("descriptors"), f"{path}.descriptors")):
        dp = f"{path}.descriptors[{i}]"
        dm = r.mapping(d, dp)
        r.keys(dm, dp, {"property", "descriptor_key"})
        descriptors.append((r.str_(dm, "property", dp).lower(), r.str_(dm, "descriptor_key", dp)))
    if not descriptors:
        raise r.fail(f"{path}.descriptors", "at least one descriptor is required")
    return GlobalRateLimit(
        domain=r.str_(m, "domain", path),
        service_cluster=cluster,
        descriptors=tuple(descriptors),
        match=tuple(matchers),
        timeout=r.duration(m, "timeout", path, 0.02),
        deny_on_fail=bool(m.get("failure_mode_deny", False)),
    )


_ACCESS_LOG_TYPES: Final = frozenset(
    {
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    }
)


def _access_log(r: _Reader, m: Mapping[str, object], path: str) -> AccessLog:
    """An Envoy file/stdout access logger with a ``json_format`` (our loggers write JSON lines)."""
    r.keys(m, path, {"name", "typed_config"}, {"filter"})
    tc = r.mapping(m.get("typed_config"), f"{path}.typed_config")
    kind = tc.get("@type")
    if kind not in _ACCESS_LOG_TYPES:
        raise r.fail(f"{path}.typed_config.@type", f"one of {', '.join(sorted(_ACCESS_LOG_TYPES))}")
    r.keys(tc, f"{path}.typed_config", {"@type", "path", "log_format"})
    target = "/dev/stdout" if str(kind).endswith("StdoutAccessLog") else r.str_(tc, "path", f"{path}.typed_config")
    fmt = r.mapping(tc.get("log_format"), f"{path}.typed_config.log_format")
    r.keys(fmt, f"{path}.typed_config.log_format", {"json_format"})
    fields = r.mapping(fmt.get("json_format"), f"{path}.typed_config.log_format.json_format")
    return AccessLog(target, tuple((str(k), str(v)) for k, v in fields.items()))


def _fraction(r: _Reader, m: object, path: str, default: float) -> float:
    """An Envoy FractionalPercent ({numerator, denominator: HUNDRED|TEN_THOUSAND|MILLION})."""
    if m is None:
        return default
    fm = r.mapping(m, path)
    r.keys(fm, path, {"numerator", "denominator"})
    denominators = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
    denominator = str(fm.get("denominator", "HUNDRED"))
    if denominator not in denominators:
        raise r.fail(f"{path}.denominator", "HUNDRED, TEN_THOUSAND or MILLION")
    return min(1.0, r.int_(fm, "numerator", path, 0) / denominators[denominator])


def _codec(r: _Reader, m: Mapping[str, object], path: str) -> CodecRef:
    """The codec from ``protocol.codec`` (preferred) or the deprecated ``codec`` field."""
    if m.get("protocol") is not None:
        pp = f"{path}.protocol"
        proto = r.mapping(m["protocol"], pp)
        r.keys(proto, pp, {"name", "codec", "multiplexing"})
        cm = r.mapping(proto.get("codec"), f"{pp}.codec")
        cp = f"{pp}.codec"
    elif m.get("codec") is not None:
        cm = r.mapping(m["codec"], f"{path}.codec")
        cp = f"{path}.codec"
    else:
        raise r.fail(path, "codec is required (protocol.codec.name)")
    r.keys(cm, cp, {"name", "config"})
    config = cm.get("config") or {}
    config_m = dict(r.mapping(config, f"{cp}.config"))
    config_m.pop("@type", None)
    return CodecRef(r.str_(cm, "name", cp), config_m)


def _route_config(r: _Reader, m: Mapping[str, object], path: str) -> RouteConfig:
    r.keys(m, path, {"name", "routes"})
    routes = r.each(m.get("routes"), f"{path}.routes", lambda rm, rp: _route(r, rm, rp))
    return RouteConfig(r.str_(m, "name", path, default=""), tuple(routes))


def _key_values(r: _Reader, value: object, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(r.seq(value, path)):
        kv = r.mapping(item, f"{path}[{i}]")
        r.keys(kv, f"{path}[{i}]", {"key", "value"})
        out.append((r.str_(kv, "key", f"{path}[{i}]"), r.str_(kv, "value", f"{path}[{i}]", "")))
    return tuple(out)


def _route(r: _Reader, m: Mapping[str, object], path: str) -> RouteRule:
    r.keys(m, path, {"name", "match", "route", "request_mutation", "response_mutation", "fault"})
    match_m = r.mapping(m.get("match"), f"{path}.match")
    r.keys(match_m, f"{path}.match", {"metadata"})
    matchers = r.each(
        match_m.get("metadata"), f"{path}.match.metadata", lambda mm, mp: _matcher(r, mm, mp)
    )
    if m.get("route") is None:
        raise r.fail(f"{path}.route", "required")
    action_m = r.mapping(m["route"], f"{path}.route")
    action = _action(r, action_m, f"{path}.route")
    mirrors = []
    for i, mp in enumerate(r.seq(action_m.get("request_mirror_policies"), f"{path}.route.request_mirror_policies")):
        pp = f"{path}.route.request_mirror_policies[{i}]"
        pm = r.mapping(mp, pp)
        r.keys(pm, pp, {"cluster", "runtime_fraction"})
        rf = r.mapping(pm.get("runtime_fraction"), f"{pp}.runtime_fraction")
        r.keys(rf, f"{pp}.runtime_fraction", {"default_value", "runtime_key"})
        mirrors.append(MirrorPolicy(r.str_(pm, "cluster", pp), _fraction(r, rf.get("default_value"), f"{pp}.runtime_fraction.default_value", 1.0)))
    retry = None
    if action_m.get("retry_policy") is not None:
        rp = f"{path}.route.retry_policy"
        rm = r.mapping(action_m["retry_policy"], rp)
        r.keys(rm, rp, {"num_retries", "retry_on", "per_try_timeout", "retry_non_idempotent"})
        try:
            retry_on, token_opt_in = parse_retry_on(str(rm.get("retry_on", "connect_failure,upstream_reset,upstream_timeout")))
        except ValueError as exc:
            raise r.fail(f"{rp}.retry_on", str(exc)) from None
        opt_in = rm.get("retry_non_idempotent", False)
        if not isinstance(opt_in, bool):
            raise r.fail(f"{rp}.retry_non_idempotent", "expected true or false")
        retry = RetryPolicy(
            r.int_(rm, "num_retries", rp, 1), retry_on, r.duration(rm, "per_try_timeout", rp, 0.0),
            retry_non_idempotent=opt_in or token_opt_in,
        )  # fmt: skip
    fault = None
    if m.get("fault") is not None:
        fp = f"{path}.fault"
        fm = r.mapping(m["fault"], fp)
        r.keys(fm, fp, {"delay", "abort"})
        dm = r.mapping(fm.get("delay"), f"{fp}.delay")
        r.keys(dm, f"{fp}.delay", {"fixed_delay", "percentage"})
        am = r.mapping(fm.get("abort"), f"{fp}.abort")
        r.keys(am, f"{fp}.abort", {"error", "percentage"})
        kinds_all = {"route_not_found", "cluster_not_found", "no_healthy_upstream", "upstream_timeout", "upstream_reset", "connect_failure", "bad_request", "bad_response", "over_limit", "unsupported", "internal"}
        abort_kind = str(am.get("error", "internal"))
        if abort_kind not in kinds_all:
            raise r.fail(f"{fp}.abort.error", f"one of {', '.join(sorted(kinds_all))}")
        fault = FaultPolicy(
            delay=r.duration(dm, "fixed_delay", f"{fp}.delay", 0.0),
            delay_fraction=_fraction(r, dm.get("percentage"), f"{fp}.delay.percentage", 1.0 if dm else 0.0),
            abort_kind=abort_kind,
            abort_fraction=_fraction(r, am.get("percentage"), f"{fp}.abort.percentage", 1.0 if am else 0.0),
        )
    return RouteRule(
        name=r.str_(m, "name", path, default=""),
        match=tuple(matchers),
        action=action,
        request_mutation=_key_values(r, m.get("request_mutation"), f"{path}.request_mutation"),
        response_mutation=_key_values(r, m.get("response_mutation"), f"{path}.response_mutation"),
        mirrors=tuple(mirrors),
        retry=retry,
        fault=fault,
    )


_MATCH_FIELDS: Final = {
    "exact_match": MatchKind.EXACT,
    "prefix_match": MatchKind.PREFIX,
    "suffix_match": MatchKind.SUFFIX,
    "contains_match": MatchKind.CONTAINS,
    "safe_regex_match": MatchKind.REGEX,
    "present_match": MatchKind.PRESENT,
}
_STRING_MATCH_FIELDS: Final = {
    "exact": MatchKind.EXACT,
    "prefix": MatchKind.PREFIX,
    "suffix": MatchKind.SUFFIX,
    "contains": MatchKind.CONTAINS,
    "safe_regex": MatchKind.REGEX,
}


def _matcher(r: _Reader, m: Mapping[str, object], path: str) -> AttributeMatcher:
    """An Envoy HeaderMatcher over a metadata attribute."""
    r.keys(m, path, {"name", "invert_match", "string_match", *_MATCH_FIELDS}, {"treat_missing_header_as_empty"})
    name = r.str_(m, "name", path)
    invert = bool(m.get("invert_match", False))
    forms = [k for k in (*_MATCH_FIELDS, "string_match") if k in m]
    if len(forms) > 1:
        raise r.fail(path, f"only one of {', '.join(forms)} may be set")
    ignore_case = False
    if not forms:
        kind, value = MatchKind.PRESENT, "true"
    elif forms[0] == "string_match":
        sp = f"{path}.string_match"
        sm = r.mapping(m["string_match"], sp)
        r.keys(sm, sp, {"ignore_case", *_STRING_MATCH_FIELDS})
        ignore_case = bool(sm.get("ignore_case", False))
        sforms = [k for k in _STRING_MATCH_FIELDS if k in sm]
        if len(sforms) != 1:
            raise r.fail(sp, "exactly one of exact, prefix, suffix, contains, safe_regex")
        kind = _STRING_MATCH_FIELDS[sforms[0]]
        value = _regex_or_str(r, sm, sforms[0], sp)
    else:
        kind = _MATCH_FIELDS[forms[0]]
        if kind is MatchKind.PRESENT:
            value = "true" if bool(m["present_match"]) else "false"
        else:
            value = _regex_or_str(r, m, forms[0], path)
    if kind is MatchKind.REGEX:
        try:
            re.compile(value)
        except re.error as exc:
            raise r.fail(f"{path}.{forms[0]}", f"bad regex {value!r}: {exc}") from exc
    return AttributeMatcher(name, kind, value, invert, ignore_case)


def _regex_or_str(r: _Reader, m: Mapping[str, object], key: str, path: str) -> str:
    value = m[key]
    if isinstance(value, Mapping):  # safe_regex: {google_re2: {}, regex: "..."}
        rp = f"{path}.{key}"
        r.keys(value, rp, {"regex", "google_re2"})
        return r.str_(value, "regex", rp)
    return r.str_(m, key, path)


def _action(r: _Reader, m: Mapping[str, object], path: str) -> RouteAction:
    r.keys(
        m,
        path,
        {"cluster", "weighted_clusters", "hash_policy", "metadata_match", "timeout", "request_mirror_policies", "retry_policy"},
    )
    cluster = m.get("cluster")
    weighted: list[WeightedCluster] = []
    if m.get("weighted_clusters") is not None:
        wp = f"{path}.weighted_clusters"
        wm = r.mapping(m["weighted_clusters"], wp)
        r.keys(wm, wp, {"clusters", "total_weight"})
        for i, c in enumerate(r.seq(wm.get("clusters"), f"{wp}.clusters")):
            cp = f"{wp}.clusters[{i}]"
            cm = r.mapping(c, cp)
            r.keys(cm, cp, {"name", "weight"})
            weight = r.int_(cm, "weight", cp)
            if weight < 0:
                raise r.fail(f"{cp}.weight", "must not be negative")
            weighted.append(WeightedCluster(r.str_(cm, "name", cp), weight))
        if not weighted or sum(w.weight for w in weighted) == 0:
            raise r.fail(wp, "needs at least one cluster with a positive weight")
    if (cluster is None) == (not weighted):
        raise r.fail(path, "exactly one of cluster and weighted_clusters is required")
    hash_policy = []
    for i, h in enumerate(r.seq(m.get("hash_policy"), f"{path}.hash_policy")):
        if isinstance(h, Mapping):  # Envoy form: {header: {header_name: key}}
            header = r.mapping(h.get("header"), f"{path}.hash_policy[{i}].header")
            hash_policy.append(r.str_(header, "header_name", f"{path}.hash_policy[{i}].header").lower())
        elif isinstance(h, str):
            hash_policy.append(h.lower())
        else:
            raise r.fail(f"{path}.hash_policy[{i}]", "expected a metadata key")
    subset: list[tuple[str, str]] = []
    if m.get("metadata_match") is not None:
        mm = r.mapping(m["metadata_match"], f"{path}.metadata_match")
        fm = r.mapping(mm.get("filter_metadata"), f"{path}.metadata_match.filter_metadata")
        lb = r.mapping(fm.get("envoy.lb"), f"{path}.metadata_match.filter_metadata.envoy.lb")
        subset = sorted((str(k), str(v)) for k, v in lb.items())
    return RouteAction(
        cluster=None if cluster is None else str(cluster),
        weighted_clusters=tuple(weighted),
        hash_policy=tuple(hash_policy),
        subset=tuple(subset),
        timeout=r.duration(m, "timeout", path, DEFAULT_ROUTE_TIMEOUT),
    )


def _cluster(r: _Reader, m: Mapping[str, object], path: str) -> ClusterConfig:
    r.keys(
        m,
        path,
        {
            "name", "connect_timeout", "lb_policy", "load_assignment", "type", "ring_hash_lb_config", "hash_tag", "hash_function",
            "circuit_breakers", "outlier_detection", "upstream_connection_options", "health_checks", "max_consecutive_timeouts",
        },
        {
            "dns_lookup_family", "typed_extension_protocol_options", "common_lb_config",
            "per_connection_buffer_limit_bytes", "metadata", "lb_subset_config", "maglev_lb_config",
        },
    )  # fmt: skip
    name = r.str_(m, "name", path)
    ctype = str(m.get("type", "STATIC"))
    if ctype not in ("STATIC", "STRICT_DNS", "LOGICAL_DNS"):
        raise r.fail(f"{path}.type", f"unsupported cluster type {ctype!r} (STATIC only; EDS via xDS)")
    policy_name = str(m.get("lb_policy", "ROUND_ROBIN")).upper()
    try:
        policy = LbPolicy(policy_name)
    except ValueError:
        options = ", ".join(p.value for p in LbPolicy)
        raise r.fail(f"{path}.lb_policy", f"unknown policy {policy_name!r} ({options})") from None
    endpoints = []
    la_path = f"{path}.load_assignment"
    la = r.mapping(m.get("load_assignment"), la_path)
    r.keys(la, la_path, {"cluster_name", "endpoints"}, {"policy"})
    for i, group in enumerate(r.seq(la.get("endpoints"), f"{la_path}.endpoints")):
        gp = f"{la_path}.endpoints[{i}]"
        gm = r.mapping(group, gp)
        r.keys(gm, gp, {"lb_endpoints"}, {"locality", "priority", "load_balancing_weight"})
        for j, lbe in enumerate(r.seq(gm.get("lb_endpoints"), f"{gp}.lb_endpoints")):
            ep = f"{gp}.lb_endpoints[{j}]"
            em = r.mapping(lbe, ep)
            r.keys(em, ep, {"endpoint", "load_balancing_weight", "metadata"}, {"health_status"})
            inner = r.mapping(em.get("endpoint"), f"{ep}.endpoint")
            r.keys(inner, f"{ep}.endpoint", {"address"}, {"hostname", "health_check_config"})
            host, port = _socket_address(r, inner.get("address"), f"{ep}.endpoint.address")
            weight = r.int_(em, "load_balancing_weight", ep, 1)
            if weight < 1:
                raise r.fail(f"{ep}.load_balancing_weight", "must be at least 1")
            meta = r.mapping(em.get("metadata"), f"{ep}.metadata")
            lb_labels = r.mapping(
                r.mapping(meta.get("filter_metadata"), f"{ep}.metadata.filter_metadata").get("envoy.lb"),
                f"{ep}.metadata.filter_metadata.envoy.lb",
            )
            labels = tuple(sorted((str(k), str(v)) for k, v in lb_labels.items()))
            endpoints.append(Endpoint(host, port, weight, labels))
    hash_function = str(m.get("hash_function", "md5"))
    if hash_function not in HASH_FUNCTIONS:
        raise r.fail(f"{path}.hash_function", f"one of {', '.join(HASH_FUNCTIONS)}")
    breakers = None
    if m.get("circuit_breakers") is not None:
        bp = f"{path}.circuit_breakers"
        bm = r.mapping(m["circuit_breakers"], bp)
        r.keys(bm, bp, {"thresholds"}, {"per_host_thresholds"})
        thresholds = r.seq(bm.get("thresholds"), f"{bp}.thresholds")
        if thresholds:
            tp = f"{bp}.thresholds[0]"
            tm = r.mapping(thresholds[0], tp)
            r.keys(tm, tp, {"max_requests", "max_pending_requests", "max_retries", "retry_budget"}, {"priority", "max_connections", "track_remaining"})
            budget_percent, min_concurrency = 0.0, DEFAULT_MIN_RETRY_CONCURRENCY
            if tm.get("retry_budget") is not None:
                bp2 = f"{tp}.retry_budget"
                bm2 = r.mapping(tm["retry_budget"], bp2)
                r.keys(bm2, bp2, {"budget_percent", "min_retry_concurrency"})
                percent = bm2.get("budget_percent", {"value": DEFAULT_RETRY_BUDGET_PERCENT})
                value = percent.get("value") if isinstance(percent, Mapping) else None
                if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= 100:
                    raise r.fail(f"{bp2}.budget_percent", "expected {value: <percent above 0, at most 100>}")
                budget_percent, min_concurrency = float(value), r.int_(bm2, "min_retry_concurrency", bp2, DEFAULT_MIN_RETRY_CONCURRENCY)
            breakers = CircuitBreakers(
                r.int_(tm, "max_requests", tp, 0), r.int_(tm, "max_pending_requests", tp, 0), r.int_(tm, "max_retries", tp, 0),
                budget_percent, min_concurrency,
            )  # fmt: skip
    outlier = None
    if m.get("outlier_detection") is not None:
        op = f"{path}.outlier_detection"
        om = r.mapping(m["outlier_detection"], op)
        r.keys(om, op, {"consecutive_5xx", "consecutive_gateway_failure", "base_ejection_time", "max_ejection_percent"}, {"interval", "enforcing_consecutive_5xx"})
        outlier = OutlierDetection(
            r.int_(om, "consecutive_5xx", op, r.int_(om, "consecutive_gateway_failure", op, 5)),
            r.duration(om, "base_ejection_time", op, 30.0),
            r.int_(om, "max_ejection_percent", op, 10),
        )
    max_timeouts = r.int_(m, "max_consecutive_timeouts", path, DEFAULT_MAX_CONSECUTIVE_TIMEOUTS)
    if max_timeouts < 0:
        raise r.fail(f"{path}.max_consecutive_timeouts", "must not be negative (0: never close)")
    return ClusterConfig(
        name=name,
        endpoints=tuple(endpoints),
        lb_policy=policy,
        connect_timeout=r.duration(m, "connect_timeout", path, DEFAULT_CONNECT_TIMEOUT),
        hash_function=hash_function,
        hash_tag=str(m.get("hash_tag", "")),
        circuit_breakers=breakers,
        outlier_detection=outlier,
        tcp_keepalive=_tcp_keepalive(r, m.get("upstream_connection_options"), f"{path}.upstream_connection_options"),
        max_consecutive_timeouts=max_timeouts,
        health_check=_health_check(r, m.get("health_checks"), f"{path}.health_checks"),
    )


def _tcp_keepalive(r: _Reader, value: object, path: str) -> TcpKeepalive | None:
    """``upstream_connection_options.tcp_keepalive`` (probes, and idle time and interval in whole
    seconds, as Envoy's UInt32Values); an absent field keeps the OS default."""
    m = r.mapping(value, path)
    r.keys(m, path, {"tcp_keepalive"})
    if m.get("tcp_keepalive") is None:
        return None
    kp = f"{path}.tcp_keepalive"
    km = r.mapping(m["tcp_keepalive"], kp)
    r.keys(km, kp, {"keepalive_probes", "keepalive_time", "keepalive_interval"})
    values = []
    for key in ("keepalive_probes", "keepalive_time", "keepalive_interval"):
        number = r.int_(km, key, kp, 0)
        if number < 0:
            raise r.fail(f"{kp}.{key}", "must not be negative")
        values.append(number)
    return TcpKeepalive(values[0], float(values[1]), float(values[2]))


_HEALTH_CHECK_IGNORED: Final = frozenset(
    {
        "initial_jitter", "interval_jitter", "interval_jitter_percent", "reuse_connection", "event_log_path",
        "event_logger", "always_log_health_check_failures", "always_log_health_check_success",
    }
)  # fmt: skip


def _health_check(r: _Reader, value: object, path: str) -> HealthCheck | None:
    """``health_checks``: at most one, a connect-only ``tcp_health_check: {}`` or the codec's own
    probe (``custom_health_check: {name: metaprotocol.health_checkers.codec}``)."""
    checks = r.seq(value, path)
    if not checks:
        return None
    if len(checks) > 1:
        raise r.fail(f"{path}[1]", "only one health check per cluster is supported")
    hp = f"{path}[0]"
    hm = r.mapping(checks[0], hp)
    for other in ("http_health_check", "grpc_health_check"):
        if other in hm:
            raise r.fail(f"{hp}.{other}", f"unsupported (use tcp_health_check: {{}} or custom_health_check {CODEC_HEALTH_CHECKER})")
    r.keys(
        hm, hp, {"timeout", "interval", "unhealthy_threshold", "healthy_threshold", "tcp_health_check", "custom_health_check"}, _HEALTH_CHECK_IGNORED
    )
    interval = r.duration(hm, "interval", hp, 0.0)
    timeout = r.duration(hm, "timeout", hp, 0.0)
    for key, seconds in (("interval", interval), ("timeout", timeout)):
        if hm.get(key) is None:
            raise r.fail(f"{hp}.{key}", "required")
        if seconds <= 0:
            raise r.fail(f"{hp}.{key}", "must be above 0")
    thresholds = []
    for key, default in (("unhealthy_threshold", 3), ("healthy_threshold", 2)):
        number = r.int_(hm, key, hp, default)
        if number < 1:
            raise r.fail(f"{hp}.{key}", "must be at least 1")
        thresholds.append(number)
    forms = [k for k in ("tcp_health_check", "custom_health_check") if k in hm]
    if len(forms) != 1:
        raise r.fail(hp, "exactly one of tcp_health_check and custom_health_check is required")
    fp = f"{hp}.{forms[0]}"
    fm = r.mapping(hm[forms[0]], fp)
    if forms[0] == "tcp_health_check":
        for key in ("send", "receive"):
            if fm.get(key):
                raise r.fail(f"{fp}.{key}", f"payload checks are unsupported (tcp_health_check: {{}} connects only; custom_health_check {CODEC_HEALTH_CHECKER} sends the protocol's own probe)")
        r.keys(fm, fp, {"send", "receive"})
        kind = HealthCheckKind.TCP
    else:
        r.keys(fm, fp, {"name", "typed_config"})
        checker = r.str_(fm, "name", fp)
        if checker != CODEC_HEALTH_CHECKER:
            raise r.fail(f"{fp}.name", f"unsupported health checker {checker!r} (only {CODEC_HEALTH_CHECKER})")
        tc = r.mapping(fm.get("typed_config"), f"{fp}.typed_config")
        r.keys(tc, f"{fp}.typed_config", {"@type"})
        kind = HealthCheckKind.CODEC
    return HealthCheck(interval, timeout, thresholds[0], thresholds[1], kind)
