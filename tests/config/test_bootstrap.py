from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metaprotocol.config.bootstrap import load_bootstrap, parse_bootstrap
from metaprotocol.config.errors import ConfigError
from metaprotocol.config.dump import to_bootstrap_tree
from metaprotocol.config.model import (
    DEFAULT_MAX_CONSECUTIVE_TIMEOUTS,
    CircuitBreakers,
    HealthCheck,
    HealthCheckKind,
    LbPolicy,
    MatchKind,
    OverloadConfig,
    TcpKeepalive,
)
from metaprotocol.io.proxy import build_factories
from metaprotocol.registry import CodecRegistry
from tests.servers import bootstrap_dict, cluster, listener

ROOT = Path(__file__).resolve().parents[2]


def test_example_bootstrap_loads() -> None:
    b = load_bootstrap(ROOT / "examples/bootstrap/redis.yaml")
    assert [lst.name for lst in b.listeners] == ["redis"]
    lst = b.listeners[0]
    assert lst.codec.name == "redis" and lst.port == 16380
    assert lst.route_config is not None
    first = lst.route_config.routes[0]
    assert first.match[0].kind is MatchKind.PREFIX and first.match[0].value == "user:"
    assert first.action.timeout == 5.0
    assert {c.name for c in b.clusters} == {"users", "main"}


def test_aeraki_shapes_are_accepted() -> None:
    """TypedStruct wrapping, deprecated codec field, string_match, weighted clusters, metadata_match."""
    tree = yaml.safe_load(
        """
static_resources:
  listeners:
  - name: dubbo
    address: {socket_address: {address: 127.0.0.1, port_value: 20880}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.meta_protocol_proxy
        typed_config:
          "@type": type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy
          value:
            stat_prefix: outbound|20880||demo
            application_protocol: dubbo
            codec: {name: aeraki.meta_protocol.codec.dubbo}
            route_config:
              name: demo_20880
              routes:
              - name: v2
                match:
                  metadata:
                  - {name: interface, string_match: {exact: org.apache.dubbo.samples.basic.api.DemoService}}
                  - {name: method, safe_regex_match: {google_re2: {}, regex: "say.*"}}
                  - {name: foo, present_match: true}
                route:
                  weighted_clusters:
                    clusters: [{name: "outbound|20880|v1|demo", weight: 20}, {name: "outbound|20880|v2|demo", weight: 80}]
                  hash_policy: [{header: {header_name: UserId}}]
                  metadata_match: {filter_metadata: {envoy.lb: {version: v2}}}
                request_mutation: [{key: foo, value: bar}]
  clusters:
  - name: "outbound|20880|v1|demo"
    load_assignment: {cluster_name: x, endpoints: []}
  - name: "outbound|20880|v2|demo"
    lb_policy: maglev
    connect_timeout: {seconds: 1, nanos: 500000000}
    load_assignment:
      cluster_name: x
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 20881}}}
          load_balancing_weight: 3
          metadata: {filter_metadata: {envoy.lb: {version: v2}}}
"""
    )
    b = parse_bootstrap(tree)
    lst = b.listeners[0]
    assert lst.codec.name == "aeraki.meta_protocol.codec.dubbo"
    assert lst.route_config is not None
    rule = lst.route_config.routes[0]
    assert [m.kind for m in rule.match] == [MatchKind.EXACT, MatchKind.REGEX, MatchKind.PRESENT]
    assert [w.weight for w in rule.action.weighted_clusters] == [20, 80]
    assert rule.action.hash_policy == ("userid",)
    assert rule.action.subset == (("version", "v2"),)
    assert rule.request_mutation == (("foo", "bar"),)
    c = b.cluster_map()["outbound|20880|v2|demo"]
    assert c.lb_policy is LbPolicy.MAGLEV and c.connect_timeout == 1.5
    assert c.endpoints[0].weight == 3 and c.endpoints[0].labels == (("version", "v2"),)


def _tree_with(route: dict[str, object]) -> dict[str, object]:
    return bootstrap_dict([listener("l", 1, "redis", [route])], [cluster("c", [2])])


@pytest.mark.parametrize(
    ("policy", "opt_in"),
    [({"retry_on": "upstream-reset"}, False), ({"retry_on": "upstream-reset", "retry_non_idempotent": True}, True),
     ({"retry_on": "upstream-reset,non_idempotent"}, True)],
)  # fmt: skip
def test_retry_non_idempotent_opt_in(policy: dict[str, object], opt_in: bool) -> None:
    boot = parse_bootstrap(_tree_with({"route": {"cluster": "c", "retry_policy": policy}}), "boot.yaml")
    route_config = boot.listeners[0].route_config
    assert route_config is not None
    retry = route_config.routes[0].retry
    assert retry is not None and retry.retry_on == frozenset({"upstream_reset"}) and retry.retry_non_idempotent is opt_in


@pytest.mark.parametrize(
    ("tree", "path", "reason"),
    [
        (_tree_with({"route": {"cluster": "missing"}}), "routes[0].route", "unknown cluster 'missing'"),
        (_tree_with({"route": {"cluster": "c"}, "match": {"metadata": [{"name": "k", "prefx_match": "a"}]}}),
         "routes[0].match.metadata[0].prefx_match", "unknown field 'prefx_match' (did you mean 'prefix_match'?)"),
        (_tree_with({"route": {"cluster": "c"}, "match": {"metadata": [{"name": "k", "safe_regex_match": {"regex": "("}}]}}),
         "safe_regex_match", "bad regex"),
        (_tree_with({"route": {"cluster": "c", "timeout": "soon"}}), "route.timeout", "not a duration"),
        (_tree_with({"route": {}}), "routes[0].route", "exactly one of cluster and weighted_clusters"),
        (_tree_with({"route": {"weighted_clusters": {"clusters": [{"name": "c", "weight": 0}]}}}),
         "weighted_clusters", "positive weight"),
        (bootstrap_dict([], [cluster("c", [1], lb_policy="FASTEST")]), "clusters[0].lb_policy", "'FASTEST') is not one of ROUND_ROBIN"),
        (bootstrap_dict([], [{"name": "c", "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "h", "port_value": 70000}}}}]}]}}]),
         "port_value", "out of range"),
        ({"static_resource": {}}, "static_resource", "unknown field 'static_resource' (did you mean 'static_resources'?)"),
        (_tree_with({"route": {"cluster": "c", "retry_policy": {"retry_non_idempotent": "yes"}}}),
         "retry_policy.retry_non_idempotent", "expected true or false"),
    ],
)  # fmt: skip
def test_bad_config_names_path_and_reason(tree: dict[str, object], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(tree, "boot.yaml")
    err = info.value
    assert err.source == "boot.yaml"
    assert path in err.path, err
    assert reason in err.reason, err


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_bootstrap(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_bootstrap(bad)


def test_unknown_codec_and_unsupported_mutation_are_rejected_before_start() -> None:
    reg = CodecRegistry.from_entry_points()
    b = parse_bootstrap(bootstrap_dict([listener("l", 1, "nosuch", [{"route": {"cluster": "c"}}])], [cluster("c", [2])]))
    with pytest.raises(ConfigError, match="unknown codec 'nosuch'"):
        build_factories(b, reg)
    b = parse_bootstrap(
        bootstrap_dict(
            [listener("l", 1, "redis", [{"route": {"cluster": "c"}, "request_mutation": [{"key": "a", "value": "b"}]}])],
            [cluster("c", [2])],
        )
    )
    with pytest.raises(ConfigError, match="cannot carry request/response mutations"):
        build_factories(b, reg)
    b = parse_bootstrap(
        bootstrap_dict(
            [listener("l", 1, "redis", [{"route": {"cluster": "c"}}], protocol={"name": "redis", "codec": {"name": "redis", "config": {"dbb": 1}}})],
            [cluster("c", [2])],
        )
    )
    with pytest.raises(ConfigError, match="unknown redis codec settings: dbb"):
        build_factories(b, reg)


def test_dynamic_resources_ads_config_names_the_control_plane() -> None:
    tree = {
        "node": {"id": "proxy-7", "cluster": "demo"},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "aeraki-xds"}}]},
            "cds_config": {"ads": {}},
            "lds_config": {"ads": {}},
        },
        "static_resources": {"clusters": [cluster("aeraki-xds", [15010])]},
    }
    b = parse_bootstrap(tree)
    assert b.ads == ("127.0.0.1", 15010) and b.node_id == "proxy-7"
    tree["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "missing"  # type: ignore[index]
    with pytest.raises(ConfigError, match="no static cluster 'missing'"):
        parse_bootstrap(tree)


def test_retry_limits_from_envoy_circuit_breakers() -> None:
    def parsed(threshold: dict[str, object]) -> object:
        tree = bootstrap_dict([], [cluster("c", [1], circuit_breakers={"thresholds": [threshold]})])
        return parse_bootstrap(tree, "boot.yaml").clusters[0].circuit_breakers

    assert parsed({"max_retries": 7}) == CircuitBreakers(0, 0, 7)
    assert parsed({"retry_budget": {"budget_percent": {"value": 25.0}, "min_retry_concurrency": 2}}) == CircuitBreakers(0, 0, 0, 25.0, 2)
    assert parsed({"retry_budget": {}}) == CircuitBreakers(0, 0, 0, 20.0, 3)  # Envoy's defaults
    with pytest.raises(ConfigError, match="budget_percent"):
        parsed({"retry_budget": {"budget_percent": {"value": 0}}})


@pytest.mark.parametrize(
    ("retry_on", "kinds"),
    [("5xx", {"error", "upstream_reset", "upstream_timeout", "connect_failure"}),
     ("gateway-error", {"upstream_reset", "upstream_timeout", "connect_failure"}),
     ("reset,connect-failure", {"upstream_reset", "upstream_timeout", "connect_failure"}),
     ("reset-before-request", {"connect_failure"}),
     ("error, no_healthy_upstream", {"error", "no_healthy_upstream"})],
)  # fmt: skip
def test_envoy_retry_on_conditions_map_to_failure_kinds(retry_on: str, kinds: set[str]) -> None:
    boot = parse_bootstrap(_tree_with({"route": {"cluster": "c", "retry_policy": {"retry_on": retry_on}}}), "boot.yaml")
    route_config = boot.listeners[0].route_config
    assert route_config is not None and route_config.routes[0].retry is not None
    assert route_config.routes[0].retry.retry_on == frozenset(kinds)


def test_http_only_retry_on_conditions_are_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match="retriable-4xx"):
        parse_bootstrap(_tree_with({"route": {"cluster": "c", "retry_policy": {"retry_on": "5xx,retriable-4xx"}}}), "boot.yaml")


CONNECTION_LIMIT = {
    "name": "envoy.filters.network.connection_limit",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        "stat_prefix": "limit",
        "max_connections": {"value": 100},
    },
}


def _with_filters(*before: dict[str, object], after: dict[str, object] | None = None) -> dict[str, object]:
    tree = _tree_with({"route": {"cluster": "c"}})
    chain = tree["static_resources"]["listeners"][0]["filter_chains"][0]  # type: ignore[index]
    chain["filters"] = [*before, *chain["filters"], *([after] if after else [])]
    return tree


def _cluster_with(**fields: object) -> dict[str, object]:
    return bootstrap_dict([], [cluster("c", [1], **fields)])


def _with_overload(overload: object) -> dict[str, object]:
    return {**_tree_with({"route": {"cluster": "c"}}), "overload_manager": overload}


def _monitor(name: str, **config: object) -> dict[str, object]:
    return {"name": name, "typed_config": config}


def test_listener_connection_limit_filter_before_the_proxy_filter() -> None:
    assert parse_bootstrap(_tree_with({"route": {"cluster": "c"}})).listeners[0].max_connections == 0
    assert parse_bootstrap(_with_filters(CONNECTION_LIMIT)).listeners[0].max_connections == 100
    plain = {"name": "envoy.filters.network.connection_limit", "typed_config": {"max_connections": 7, "delay": "0s"}}
    assert parse_bootstrap(_with_filters(plain)).listeners[0].max_connections == 7
    typed_struct = {
        "name": "limit",
        "typed_config": {
            "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
            "type_url": "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            "value": {"stat_prefix": "x", "max_connections": 9},
        },
    }
    assert parse_bootstrap(_with_filters(typed_struct)).listeners[0].max_connections == 9


def test_cluster_keepalive_timeouts_and_health_check() -> None:
    c = parse_bootstrap(_cluster_with()).clusters[0]
    assert c.tcp_keepalive is None and c.health_check is None and c.max_consecutive_timeouts == DEFAULT_MAX_CONSECUTIVE_TIMEOUTS
    keepalive = {"tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": {"value": 60}, "keepalive_interval": "10"}}
    c = parse_bootstrap(_cluster_with(upstream_connection_options=keepalive, max_consecutive_timeouts=0)).clusters[0]
    assert c.tcp_keepalive == TcpKeepalive(3, 60.0, 10.0) and c.max_consecutive_timeouts == 0
    c = parse_bootstrap(_cluster_with(upstream_connection_options={"tcp_keepalive": {}})).clusters[0]
    assert c.tcp_keepalive == TcpKeepalive()  # SO_KEEPALIVE with the OS's timings
    assert parse_bootstrap(_cluster_with(upstream_connection_options={})).clusters[0].tcp_keepalive is None
    tcp = {"timeout": "1s", "interval": "5s", "unhealthy_threshold": {"value": 4}, "healthy_threshold": 1, "tcp_health_check": {}, "interval_jitter": "1s"}
    c = parse_bootstrap(_cluster_with(health_checks=[tcp])).clusters[0]
    assert c.health_check == HealthCheck(5.0, 1.0, 4, 1, HealthCheckKind.TCP)
    codec = {"timeout": "250ms", "interval": {"seconds": 2}, "custom_health_check": {"name": "metaprotocol.health_checkers.codec", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"}}}
    c = parse_bootstrap(_cluster_with(health_checks=[codec])).clusters[0]
    assert c.health_check == HealthCheck(2.0, 0.25, 3, 2, HealthCheckKind.CODEC)
    assert parse_bootstrap(_cluster_with(health_checks=[])).clusters[0].health_check is None


def test_overload_manager_monitors_and_heap_actions() -> None:
    assert parse_bootstrap(_tree_with({"route": {"cluster": "c"}})).overload == OverloadConfig()
    assert parse_bootstrap(_with_overload({})).overload == OverloadConfig()
    overload = {
        "refresh_interval": "1s",
        "resource_monitors": [
            _monitor("envoy.resource_monitors.fixed_heap", **{"@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"}, max_heap_size_bytes=2000),
            _monitor("envoy.resource_monitors.global_downstream_max_connections", max_active_downstream_connections=500),
            _monitor("metaprotocol.resource_monitors.pending_requests", max_pending_requests=0),
        ],
        "actions": [
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.95}}]},
            {"name": "envoy.overload_actions.stop_accepting_connections", "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.5}}]},
        ],
    }
    assert parse_bootstrap(_with_overload(overload)).overload == OverloadConfig(500, 0, 1000, 1.0)  # the smallest threshold
    only_pending = {"resource_monitors": [_monitor("metaprotocol.resource_monitors.pending_requests", max_pending_requests=10)]}
    assert parse_bootstrap(_with_overload(only_pending)).overload == OverloadConfig(max_pending_requests=10)


def test_new_fields_survive_the_bootstrap_dump() -> None:
    tree = _with_filters(CONNECTION_LIMIT)
    tree["static_resources"]["clusters"][0].update(  # type: ignore[index]
        upstream_connection_options={"tcp_keepalive": {"keepalive_time": 30}},
        max_consecutive_timeouts=5,
        health_checks=[{"timeout": "1s", "interval": "3s", "custom_health_check": {"name": "metaprotocol.health_checkers.codec"}}],
    )
    tree["overload_manager"] = {"refresh_interval": "0.5s", "resource_monitors": [_monitor("envoy.resource_monitors.global_downstream_max_connections", max_active_downstream_connections=0)]}
    b = parse_bootstrap(tree)
    assert b.overload.max_active_downstream_connections == 0 and b.clusters[0].max_consecutive_timeouts == 5
    assert parse_bootstrap(to_bootstrap_tree(b)) == b


_OVERLOAD_ACTION = {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 0.9}}]}
_HEAP = _monitor("envoy.resource_monitors.fixed_heap", max_heap_size_bytes=100)


@pytest.mark.parametrize(
    ("tree", "path", "reason"),
    [
        (_with_filters(after=CONNECTION_LIMIT), "filter_chains[0].filters[1]", "must come before"),
        (_with_filters(CONNECTION_LIMIT, CONNECTION_LIMIT), "filter_chains[0].filters[1]", "listed twice"),
        (_with_filters({"name": "envoy.filters.network.connection_limit", "typed_config": {"max_connections": 5, "delay": "1s"}}),
         "filters[0].typed_config.delay", "closed at once"),
        (_with_filters({"name": "envoy.filters.network.connection_limit", "typed_config": {"max_connections": 5, "runtime_enabled": {}}}),
         "filters[0].typed_config.runtime_enabled", "runtime_enabled is not supported"),
        (_with_filters({"name": "envoy.filters.network.connection_limit", "typed_config": {"stat_prefix": "x"}}),
         "filters[0].typed_config.max_connections", "required"),
        (_with_filters({"name": "envoy.filters.network.connection_limit", "typed_config": {"max_connections": 0}}),
         "filters[0].typed_config.max_connections", "at least 1"),
        (_with_filters({"name": "envoy.filters.network.connection_limit", "typed_config": {"@type": "type.googleapis.com/x.Y", "max_connections": 1}}),
         "filters[0].typed_config.@type", "ConnectionLimit"),
        (_cluster_with(upstream_connection_options={"happy_eyeballs_config": {}}),
         "clusters[0].upstream_connection_options.happy_eyeballs_config", "happy_eyeballs_config is not supported"),
        (_cluster_with(upstream_connection_options={"tcp_keepalive": {"keepalive_tme": 1}}),
         "upstream_connection_options.tcp_keepalive.keepalive_tme", "unknown field 'keepalive_tme' (did you mean 'keepalive_time'?)"),
        (_cluster_with(upstream_connection_options={"tcp_keepalive": {"keepalive_time": "75s"}}),
         "tcp_keepalive.keepalive_time", "expected an integer"),
        (_cluster_with(upstream_connection_options={"tcp_keepalive": {"keepalive_probes": -1}}),
         "tcp_keepalive.keepalive_probes", "must not be negative"),
        (_cluster_with(max_consecutive_timeouts=-1), "clusters[0].max_consecutive_timeouts", "must not be negative"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "tcp_health_check": {}}] * 2),
         "clusters[0].health_checks[1]", "only one health check"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "http_health_check": {"path": "/"}}]),
         "health_checks[0].http_health_check", "http_health_check is not supported"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "grpc_health_check": {}}]),
         "health_checks[0].grpc_health_check", "grpc_health_check is not supported"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "tcp_health_check": {"send": {"text": "0000"}}}]),
         "health_checks[0].tcp_health_check.send", "payload checks are unsupported"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "tcp_health_check": {"receive": [{"text": "01"}]}}]),
         "health_checks[0].tcp_health_check.receive", "payload checks are unsupported"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "custom_health_check": {"name": "redis"}}]),
         "health_checks[0].custom_health_check.name", "unsupported health checker 'redis'"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "custom_health_check": {"name": "metaprotocol.health_checkers.codec", "typed_config": {"key": "x"}}}]),
         "custom_health_check.typed_config.key", "unknown field 'key'"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s"}]), "clusters[0].health_checks[0]", "exactly one of tcp_health_check"),
        (_cluster_with(health_checks=[{"timeout": "1s", "tcp_health_check": {}}]), "health_checks[0].interval", "required"),
        (_cluster_with(health_checks=[{"interval": "1s", "tcp_health_check": {}}]), "health_checks[0].timeout", "required"),
        (_cluster_with(health_checks=[{"timeout": "0s", "interval": "1s", "tcp_health_check": {}}]), "health_checks[0].timeout", "above 0"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "healthy_threshold": 0, "tcp_health_check": {}}]),
         "health_checks[0].healthy_threshold", "at least 1"),
        (_cluster_with(health_checks=[{"timeout": "1s", "interval": "1s", "alt_port": 1, "tcp_health_check": {}}]),
         "health_checks[0].alt_port", "alt_port is not supported"),
        (_with_overload({"loadshed_points": [{"name": "envoy.load_shed_points.tcp_listener_accept"}]}), "overload_manager.loadshed_points", "loadshed_points is not supported"),
        (_with_overload({"refresh_interval": "0s"}), "overload_manager.refresh_interval", "above 0"),
        (_with_overload({"resource_monitors": [_monitor("envoy.resource_monitors.cgroup_memory")]}),
         "overload_manager.resource_monitors[0].name", "unsupported resource monitor"),
        (_with_overload({"resource_monitors": [_HEAP, _HEAP]}), "resource_monitors[1].name", "listed twice"),
        (_with_overload({"resource_monitors": [_monitor("envoy.resource_monitors.fixed_heap", max_heap_size_bytes=-1)]}),
         "resource_monitors[0].typed_config.max_heap_size_bytes", "must not be negative"),
        (_with_overload({"resource_monitors": [_monitor("envoy.resource_monitors.fixed_heap", max_heap_size=1)]}),
         "resource_monitors[0].typed_config.max_heap_size", "unknown field 'max_heap_size' (did you mean 'max_heap_size_bytes'?)"),
        (_with_overload({"resource_monitors": [_monitor("envoy.resource_monitors.fixed_heap", **{"@type": "type.googleapis.com/x.Y"}, max_heap_size_bytes=1)]}),
         "resource_monitors[0].typed_config.@type", "FixedHeapConfig"),
        (_with_overload({"resource_monitors": [_HEAP], "actions": [{**_OVERLOAD_ACTION, "name": "envoy.overload_actions.shrink_heap"}]}),
         "overload_manager.actions[0].name", "unsupported overload action"),
        (_with_overload({"resource_monitors": [_HEAP], "actions": [{"name": "envoy.overload_actions.stop_accepting_requests"}]}),
         "actions[0].triggers", "at least one trigger"),
        (_with_overload({"actions": [_OVERLOAD_ACTION]}), "actions[0].triggers[0].name", "not among the resource_monitors"),
        (_with_overload({"resource_monitors": [_HEAP], "actions": [{**_OVERLOAD_ACTION, "triggers": [{"name": "envoy.resource_monitors.global_downstream_max_connections", "threshold": {"value": 0.5}}]}]}),
         "actions[0].triggers[0].name", "only envoy.resource_monitors.fixed_heap"),
        (_with_overload({"resource_monitors": [_HEAP], "actions": [{**_OVERLOAD_ACTION, "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}]}]}),
         "actions[0].triggers[0].scaled", "scaled is not supported"),
        (_with_overload({"resource_monitors": [_HEAP], "actions": [{**_OVERLOAD_ACTION, "triggers": [{"name": "envoy.resource_monitors.fixed_heap", "threshold": {"value": 1.5}}]}]}),
         "actions[0].triggers[0].threshold.value", "at most 1"),
    ],
)  # fmt: skip
def test_new_fields_rejections_name_their_path(tree: dict[str, object], path: str, reason: str) -> None:
    test_bad_config_names_path_and_reason(tree, path, reason)
