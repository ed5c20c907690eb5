"""The config model as an Envoy-style bootstrap tree: the inverse of ``bootstrap.parse_bootstrap``.

``parse_bootstrap(to_bootstrap_tree(b))`` equals ``b`` (property-tested), so a configuration made
by the control plane can be written to a file and run with ``metaprotocol proxy -c``.
"""

from __future__ import annotations

from typing import Any

from metaprotocol.config.bootstrap import (
    CODEC_HEALTH_CHECKER,
    CONNECTION_LIMIT_FILTER,
    CONNECTION_LIMIT_TYPE,
    CONNECTIONS_MONITOR,
    FIXED_HEAP_MONITOR,
    OVERLOAD_MONITORS,
    PENDING_REQUESTS_MONITOR,
    PROXY_TYPE,
)
from metaprotocol.config.model import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
    HealthCheckKind,
    OverloadConfig,
    TokenBucket,
    DEFAULT_ROUTE_TIMEOUT,
    AttributeMatcher,
    Bootstrap,
    ClusterConfig,
    LbPolicy,
    ListenerConfig,
    MatchKind,
    RouteConfig,
    RouteRule,
)

_FORMS = {
    MatchKind.EXACT: "exact",
    MatchKind.PREFIX: "prefix",
    MatchKind.SUFFIX: "suffix",
    MatchKind.CONTAINS: "contains",
}


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _percent(fraction: float) -> dict[str, Any]:
    return {"numerator": round(fraction * 1_000_000), "denominator": "MILLION"}


def _bucket(b: TokenBucket) -> dict[str, Any]:
    return {"max_tokens": b.max_tokens, "tokens_per_fill": b.tokens_per_fill, "fill_interval": _seconds(b.fill_interval)}


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def matcher_tree(m: AttributeMatcher) -> dict[str, Any]:
    """An Envoy HeaderMatcher for one attribute matcher."""
    out: dict[str, Any] = {"name": m.name}
    if m.kind is MatchKind.PRESENT:
        out["present_match"] = m.value != "false"
    elif m.kind is MatchKind.REGEX:
        if m.ignore_case:
            out["string_match"] = {"safe_regex": {"regex": m.value}, "ignore_case": True}
        else:
            out["safe_regex_match"] = {"regex": m.value}
    else:
        out["string_match"] = {_FORMS[m.kind]: m.value}
        if m.ignore_case:
            out["string_match"]["ignore_case"] = True
    if m.invert:
        out["invert_match"] = True
    return out


def route_tree(rule: RouteRule) -> dict[str, Any]:
    """One route in the bootstrap's route_config shape."""
    a = rule.action
    action: dict[str, Any] = {}
    if a.cluster is not None:
        action["cluster"] = a.cluster
    else:
        action["weighted_clusters"] = {"clusters": [{"name": w.name, "weight": w.weight} for w in a.weighted_clusters]}
    if a.hash_policy:
        action["hash_policy"] = list(a.hash_policy)
    if a.subset:
        action["metadata_match"] = {"filter_metadata": {"envoy.lb": dict(a.subset)}}
    if a.timeout != DEFAULT_ROUTE_TIMEOUT:
        action["timeout"] = _seconds(a.timeout)
    if rule.mirrors:
        action["request_mirror_policies"] = [
            {"cluster": m.cluster, "runtime_fraction": {"default_value": _percent(m.fraction)}} for m in rule.mirrors
        ]
    if rule.retry is not None:
        action["retry_policy"] = {
            "num_retries": rule.retry.num_retries,
            "retry_on": ",".join(sorted(rule.retry.retry_on)),
            "per_try_timeout": _seconds(rule.retry.per_try_timeout),
            "retry_non_idempotent": rule.retry.retry_non_idempotent,
        }
    out: dict[str, Any] = {"name": rule.name, "route": action}
    if rule.fault is not None:
        f = rule.fault
        out["fault"] = {
            "delay": {"fixed_delay": _seconds(f.delay), "percentage": _percent(f.delay_fraction)},
            "abort": {"error": f.abort_kind, "percentage": _percent(f.abort_fraction)},
        }
    if rule.match:
        out["match"] = {"metadata": [matcher_tree(m) for m in rule.match]}
    if rule.request_mutation:
        out["request_mutation"] = [{"key": k, "value": v} for k, v in rule.request_mutation]
    if rule.response_mutation:
        out["response_mutation"] = [{"key": k, "value": v} for k, v in rule.response_mutation]
    return out


def route_config_tree(rc: RouteConfig) -> dict[str, Any]:
    """A route table."""
    return {"name": rc.name, "routes": [route_tree(r) for r in rc.routes]}


def listener_tree(lst: ListenerConfig) -> dict[str, Any]:
    """A listener running the MetaProtocol filter."""
    proxy: dict[str, Any] = {
        "@type": PROXY_TYPE,
        "stat_prefix": lst.stat_prefix,
        "protocol": {"name": lst.protocol or lst.codec.name, "codec": {"name": lst.codec.name}},
    }
    if lst.codec.config:
        proxy["protocol"]["codec"]["config"] = dict(lst.codec.config)
    if lst.route_config is not None:
        proxy["route_config"] = route_config_tree(lst.route_config)
    else:
        proxy["rds"] = {"route_config_name": lst.rds_name}
    if lst.idle_timeout:
        proxy["idle_timeout"] = _seconds(lst.idle_timeout)
    if lst.max_pending_per_connection != 4096:  # noqa: PLR2004 - the loader's default
        proxy["max_pending_per_connection"] = lst.max_pending_per_connection
    if lst.upstream_connections_per_endpoint != 1:
        proxy["upstream_connections_per_endpoint"] = lst.upstream_connections_per_endpoint
    if lst.local_rate_limit is not None:
        limit: dict[str, Any] = {"stat_prefix": lst.stat_prefix}
        if lst.local_rate_limit.default is not None:
            limit["token_bucket"] = _bucket(lst.local_rate_limit.default)
        if lst.local_rate_limit.conditions:
            limit["conditions"] = [
                {"match": {"metadata": [matcher_tree(m) for m in c.match]}, "token_bucket": _bucket(c.bucket)}
                for c in lst.local_rate_limit.conditions
            ]
        proxy.setdefault("meta_protocol_filters", []).append({"name": "aeraki.meta_protocol.filters.local_ratelimit", "config": limit})
    if lst.global_rate_limit is not None:
        g = lst.global_rate_limit
        grl: dict[str, Any] = {
            "domain": g.domain,
            "timeout": _seconds(g.timeout),
            "failure_mode_deny": g.deny_on_fail,
            "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": g.service_cluster}}},
            "descriptors": [{"property": p, "descriptor_key": k} for p, k in g.descriptors],
        }
        if g.match:
            grl["match"] = {"metadata": [matcher_tree(m) for m in g.match]}
        proxy.setdefault("meta_protocol_filters", []).append({"name": "aeraki.meta_protocol.filters.ratelimit", "config": grl})
    if "meta_protocol_filters" in proxy:
        proxy["meta_protocol_filters"].append({"name": "aeraki.meta_protocol.filters.router"})
    if lst.access_log:
        proxy["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": a.path,
                    "log_format": {"json_format": dict(a.fields)},
                },
            }
            for a in lst.access_log
        ]
    filters: list[dict[str, Any]] = []
    if lst.max_connections:
        limit_cfg = {"@type": CONNECTION_LIMIT_TYPE, "stat_prefix": lst.stat_prefix, "max_connections": lst.max_connections}
        filters.append({"name": CONNECTION_LIMIT_FILTER, "typed_config": limit_cfg})
    filters.append({"name": "aeraki.meta_protocol_proxy", "typed_config": proxy})
    return {"name": lst.name, "address": _address(lst.address, lst.port), "filter_chains": [{"filters": filters}]}


def cluster_tree(c: ClusterConfig) -> dict[str, Any]:
    """A STATIC cluster with its endpoints."""
    endpoints = []
    for e in c.endpoints:
        lbe: dict[str, Any] = {"endpoint": {"address": _address(e.address, e.port)}}
        if e.weight != 1:
            lbe["load_balancing_weight"] = e.weight
        if e.labels:
            lbe["metadata"] = {"filter_metadata": {"envoy.lb": dict(e.labels)}}
        endpoints.append(lbe)
    out: dict[str, Any] = {
        "name": c.name,
        "type": "STATIC",
        "load_assignment": {"cluster_name": c.name, "endpoints": [{"lb_endpoints": endpoints}] if endpoints else []},
    }
    if c.lb_policy is not LbPolicy.ROUND_ROBIN:
        out["lb_policy"] = c.lb_policy.value
    if c.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
        out["connect_timeout"] = _seconds(c.connect_timeout)
    if c.hash_function != "md5":
        out["hash_function"] = c.hash_function
    if c.hash_tag:
        out["hash_tag"] = c.hash_tag
    if c.circuit_breakers is not None:
        cb = c.circuit_breakers
        threshold: dict[str, Any] = {"max_requests": cb.max_requests, "max_pending_requests": cb.max_pending_requests, "max_retries": cb.max_retries}
        if cb.retry_budget_percent > 0:
            threshold["retry_budget"] = {"budget_percent": {"value": cb.retry_budget_percent}, "min_retry_concurrency": cb.min_retry_concurrency}
        out["circuit_breakers"] = {"thresholds": [threshold]}
    if c.outlier_detection is not None:
        od = c.outlier_detection
        out["outlier_detection"] = {"consecutive_5xx": od.consecutive_errors, "base_ejection_time": _seconds(od.base_ejection_time), "max_ejection_percent": od.max_ejection_percent}
    if c.tcp_keepalive is not None:
        k = c.tcp_keepalive  # Envoy's UInt32Values: whole seconds
        keepalive = {"keepalive_probes": k.probes, "keepalive_time": round(k.time), "keepalive_interval": round(k.interval)}
        out["upstream_connection_options"] = {"tcp_keepalive": {key: v for key, v in keepalive.items() if v}}
    if c.max_consecutive_timeouts != DEFAULT_MAX_CONSECUTIVE_TIMEOUTS:
        out["max_consecutive_timeouts"] = c.max_consecutive_timeouts
    if c.health_check is not None:
        hc = c.health_check
        check: dict[str, Any] = {
            "timeout": _seconds(hc.timeout),
            "interval": _seconds(hc.interval),
            "unhealthy_threshold": hc.unhealthy_threshold,
            "healthy_threshold": hc.healthy_threshold,
        }
        if hc.kind is HealthCheckKind.TCP:
            check["tcp_health_check"] = {}
        else:
            check["custom_health_check"] = {"name": CODEC_HEALTH_CHECKER}
        out["health_checks"] = [check]
    return out


def overload_tree(o: OverloadConfig) -> dict[str, Any]:
    """Envoy's ``overload_manager`` with a resource monitor for each bound that is not the default."""
    defaults = OverloadConfig()
    monitors = []
    for name, value, default in (
        (FIXED_HEAP_MONITOR, o.max_heap_size_bytes, defaults.max_heap_size_bytes),
        (CONNECTIONS_MONITOR, o.max_active_downstream_connections, defaults.max_active_downstream_connections),
        (PENDING_REQUESTS_MONITOR, o.max_pending_requests, defaults.max_pending_requests),
    ):
        if value != default:
            type_url, key = OVERLOAD_MONITORS[name]
            config: dict[str, Any] = {"@type": type_url} if type_url else {}
            config[key] = value
            monitors.append({"name": name, "typed_config": config})
    out: dict[str, Any] = {"refresh_interval": _seconds(o.refresh_interval)}
    if monitors:
        out["resource_monitors"] = monitors
    return out


def to_bootstrap_tree(b: Bootstrap) -> dict[str, Any]:
    """The whole configuration as a bootstrap tree."""
    tree: dict[str, Any] = {
        "static_resources": {
            "listeners": [listener_tree(lst) for lst in b.listeners],
            "clusters": [cluster_tree(c) for c in b.clusters],
        }
    }
    if b.admin is not None:
        tree["admin"] = {"address": _address(b.admin.address, b.admin.port)}
    if b.overload != OverloadConfig():
        tree["overload_manager"] = overload_tree(b.overload)
    return tree
