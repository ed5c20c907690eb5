"""aeraki_ctl.envoy.dubbo: MetaRouters -> Envoy's dubbo_proxy listener and RDS route table.

Real ListenerConfigs come from aeraki-ctl's own translation of Aeraki YAML; every listener that is
served is then loaded by the real Envoy (``envoy --mode validate``, no xDS needed): the listener as
it is sent (``drds`` over ADS) and a copy with the route table inline, so that Envoy builds every
matcher, regex and weighted cluster of the table.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2, route_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from aeraki_ctl.envoy import dubbo
from aeraki_ctl.envoy.common import DUBBO_ROUTE_TYPE, EnvoyListener, Gap
from aeraki_ctl.envoy.translate import translate_listener
from aeraki_ctl.resources import ResourceSet, load_directory
from aeraki_ctl.translate import translate
from metaprotocol.config.model import (
    AccessLog,
    AttributeMatcher,
    ClusterConfig,
    CommonTls,
    DataSource,
    DownstreamTls,
    FaultPolicy,
    ListenerConfig,
    MatchKind,
    RetryPolicy,
    RouteAction,
    RouteRule,
    WeightedCluster,
)
from metaprotocol.xds import convert
from tests.ctl.test_translate import resources, router
from tests.envoy.validation import assert_envoy_accepts, plain, validate
from tests.tls_certs import CertAuthority

ROOT = Path(__file__).resolve().parents[2]
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
IFACE = "org.apache.dubbo.samples.basic.api.DemoService"
NAME = f"{HOST}_20880"
V1, V2, ALL = (f"outbound|20880|{s}|{HOST}" for s in ("v1", "v2", ""))
SERVICE = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text()


def translated(rs: ResourceSet) -> tuple[ListenerConfig, dict[str, ClusterConfig]]:
    """The demo service's listener as aeraki-ctl makes it (no error allowed), and the clusters."""
    t = translate(rs)
    assert not t.errors, t.errors
    (lst,) = t.bootstrap.listeners
    return lst, {c.name: c for c in t.bootstrap.clusters}


def table(out: EnvoyListener) -> route_pb2.MultipleRouteConfiguration:
    ((type_url, name, msg),) = out.routes
    assert (type_url, name) == (DUBBO_ROUTE_TYPE, NAME)
    assert isinstance(msg, route_pb2.MultipleRouteConfiguration)
    return msg


def proxy_of(out: EnvoyListener) -> dubbo_proxy_pb2.DubboProxy:
    assert out.listener is not None
    cfg = dubbo_proxy_pb2.DubboProxy()
    assert out.listener.filter_chains[0].filters[-1].typed_config.Unpack(cfg)  # type: ignore[attr-defined]
    return cfg



# -- Envoy validates what is served ---------------------------------------------------------------


def test_envoy_refuses_a_broken_table_so_the_validation_means_something(tmp_path: Path) -> None:
    """The control for every ``assert_envoy_accepts``: a route table Envoy cannot build fails."""
    lst, clusters = translated(load_directory(ROOT / "examples/aeraki/dubbo-demo"))
    out = dubbo.listener(lst, clusters)
    table(out).route_config[0].routes[0].match.headers[0].string_match.safe_regex.regex = "(unclosed"
    result = validate(tmp_path, [out], clusters)
    assert result.returncode != 0 and "unclosed" in result.stdout + result.stderr, result.stdout + result.stderr


# -- the demo -------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["examples/aeraki/dubbo-demo", "apps/demo_config"])
def test_the_demo_split_is_served_to_envoy_without_gaps(tmp_path: Path, folder: str) -> None:
    lst, clusters = translated(load_directory(ROOT / folder))
    out = translate_listener(lst, clusters)
    assert out.gaps == [] and not out.rejected
    assert out.listener is not None and out.listener.name == NAME
    assert out.listener.address.socket_address.port_value == lst.port
    proxy = proxy_of(out)
    assert out.listener.filter_chains[0].filters[-1].name == "envoy.filters.network.dubbo_proxy"
    assert proxy.protocol_type == dubbo_proxy_pb2.Dubbo and proxy.serialization_type == dubbo_proxy_pb2.Hessian2
    assert proxy.WhichOneof("route_specifier") == "drds"
    assert proxy.drds.route_config_name == NAME and proxy.drds.config_source.HasField("ads")
    assert [f.name for f in proxy.dubbo_filters] == ["envoy.filters.dubbo.router"]
    assert plain(table(out)) == {
        "name": NAME,
        "route_config": [{
            "name": f"{NAME}#0",
            "interface": IFACE,
            "routes": [{
                "match": {"method": {"name": {"exact": "sayHello"}}, "headers": [{"name": "foo", "string_match": {"exact": "bar"}}]},
                "route": {"weighted_clusters": {"clusters": [{"name": V1, "weight": 20}, {"name": V2, "weight": 80}]}},
            }],
        }],
    }  # fmt: skip
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_a_service_without_metarouter_gets_its_default_route(tmp_path: Path) -> None:
    lst, clusters = translated(resources(SERVICE))
    out = dubbo.listener(lst, clusters)
    assert out.gaps == []
    assert plain(table(out))["route_config"] == [
        {"name": f"{NAME}#0", "interface": "*", "routes": [{"match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}}, "route": {"cluster": ALL}}]}
    ]
    assert_envoy_accepts(tmp_path, [out], clusters)


# -- order and matchers ---------------------------------------------------------------------------


ROUTES = f"""
  - name: by-prefix
    match:
      attributes:
        interface: {{prefix: org.apache.dubbo.samples}}
        method: {{regex: "say(Hello|Bye)"}}
        canary: {{}}
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
  - name: by-version
    match:
      attributes:
        interface: {{exact: {IFACE}}}
        version: {{exact: "1.0.0"}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: by-method
    match:
      attributes:
        method: {{prefix: get}}
        user: {{regex: "vip-[0-9]+"}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: rest
    route:
    - {{destination: {{host: {HOST}, subset: v1}}, weight: 50}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: 50}}
"""


def test_routes_keep_their_order_across_interface_and_version_groups(tmp_path: Path) -> None:
    lst, clusters = translated(resources(SERVICE, router(ROUTES)))
    out = dubbo.listener(lst, clusters)
    assert out.gaps == []
    configs = plain(table(out))["route_config"]
    assert isinstance(configs, list)
    # A prefix p is Envoy's "p" then "p*" (which wants more than p); the last two routes share "*".
    assert [(c["interface"], c.get("version", ""), len(c["routes"])) for c in configs] == [
        ("org.apache.dubbo.samples", "", 1), ("org.apache.dubbo.samples*", "", 1), (IFACE, "1.0.0", 1), ("*", "", 2),
    ]  # fmt: skip
    assert configs[0]["routes"] == configs[1]["routes"]
    assert configs[0]["routes"][0]["match"] == {"method": {"name": {"safe_regex": {"regex": "say(Hello|Bye)"}}}, "headers": [{"name": "canary", "present_match": True}]}
    assert configs[3]["routes"][0]["match"] == {"method": {"name": {"prefix": "get"}}, "headers": [{"name": "user", "string_match": {"safe_regex": {"regex": "vip-[0-9]+"}}}]}
    assert configs[3]["routes"][1]["route"] == {"weighted_clusters": {"clusters": [{"name": V1, "weight": 50}, {"name": V2, "weight": 50}]}}
    assert_envoy_accepts(tmp_path, [out], clusters)


def rule(*match: AttributeMatcher, **changes: object) -> RouteRule:
    return RouteRule("r", match, RouteAction(cluster=V1), **changes)  # type: ignore[arg-type]


def with_routes(lst: ListenerConfig, *rules: RouteRule, **changes: object) -> ListenerConfig:
    assert lst.route_config is not None
    return replace(lst, route_config=replace(lst.route_config, routes=rules), **changes)  # type: ignore[arg-type]


@pytest.fixture
def demo() -> tuple[ListenerConfig, dict[str, ClusterConfig]]:
    return translated(load_directory(ROOT / "examples/aeraki/dubbo-demo"))


def test_matchers_envoy_expresses_exactly(tmp_path: Path, demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    lst, clusters = demo
    rules = (
        rule(AttributeMatcher("interface", MatchKind.SUFFIX, "DemoService"), AttributeMatcher("method", MatchKind.EXACT, "SAYHELLO", ignore_case=True)),
        rule(AttributeMatcher("tier", MatchKind.REGEX, "gold|silver", ignore_case=True), AttributeMatcher("region", MatchKind.PREFIX, "eu", invert=True)),
        rule(AttributeMatcher("trace", MatchKind.PRESENT, "false"), AttributeMatcher("method", MatchKind.CONTAINS, "ell")),
        RouteRule("s", (AttributeMatcher("interface", MatchKind.PRESENT, "true"), AttributeMatcher("group", MatchKind.EXACT, "blue")), RouteAction(cluster=ALL, subset=(("version", "v2"),))),
        RouteRule("z", (), RouteAction(weighted_clusters=(WeightedCluster(V1, 100), WeightedCluster(V2, 0)))),
    )  # fmt: skip
    out = dubbo.listener(with_routes(lst, *rules), clusters)
    assert out.gaps == []
    configs = plain(table(out))["route_config"]
    assert isinstance(configs, list)
    assert [c["interface"] for c in configs] == ["DemoService", "*DemoService", "*"]
    assert configs[0]["routes"][0]["match"]["method"] == {"name": {"exact": "SAYHELLO", "ignore_case": True}}
    rest = configs[2]["routes"]
    # Envoy ignores ignore_case on a regex: the regex carries it.
    assert rest[0]["match"]["headers"] == [{"name": "tier", "string_match": {"safe_regex": {"regex": "(?i)gold|silver"}}},
                                           {"name": "region", "string_match": {"prefix": "eu"}, "invert_match": True}]  # fmt: skip
    assert rest[1]["match"] == {"method": {"name": {"contains": "ell"}}, "headers": [{"name": "trace", "present_match": False}]}
    assert rest[2]["route"] == {"cluster": ALL, "metadata_match": {"filter_metadata": {"envoy.lb": {"version": "v2"}}}}
    assert rest[3]["route"] == {"weighted_clusters": {"clusters": [{"name": V1, "weight": 100}, {"name": V2, "weight": 0}]}}  # a MetaRouter's 100/0
    assert_envoy_accepts(tmp_path, [out], clusters)


# -- gaps -----------------------------------------------------------------------------------------


def gaps(out: EnvoyListener) -> dict[str, tuple[bool, str]]:
    return {g.path: (g.fatal, g.reason) for g in out.gaps}


def test_metarouter_features_envoy_lacks_are_gaps_with_their_path(tmp_path: Path) -> None:
    routes = f"""
  - name: mirrored
    match: {{attributes: {{method: {{exact: sayHello}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
    mirror: {{host: {HOST}, subset: v2}}
    mirrorPercentage: {{value: 10}}
  - name: mutated
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
    requestMutation: [{{key: tag, value: x}}]
    responseMutation: [{{key: seen, value: "1"}}]
"""
    limit = "  localRateLimit: {tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}}"
    lst, clusters = translated(resources(SERVICE, router(routes, limit)))
    out = dubbo.listener(lst, clusters)
    found = gaps(out)
    assert set(found) == {"spec.routes[0].mirror", "spec.routes[1].requestMutation", "spec.routes[1].responseMutation", "spec.localRateLimit"}
    assert found["spec.routes[0].mirror"][0] is False and "mirror" in found["spec.routes[0].mirror"][1]
    assert found["spec.routes[1].requestMutation"][0] and "attachments" in found["spec.routes[1].requestMutation"][1]
    assert found["spec.localRateLimit"][0] and "rate limit" in found["spec.localRateLimit"][1]
    assert out.rejected
    # Without the fatal features the mirror alone is approximated: served, and Envoy takes it.
    lst, clusters = translated(resources(SERVICE, router(routes.split("  - name: mutated")[0])))
    out = dubbo.listener(lst, clusters)
    assert not out.rejected and [g.path for g in out.gaps] == ["spec.routes[0].mirror"]
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_consistent_hash_is_approximated(tmp_path: Path) -> None:
    rule_yaml = f"""
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: dr, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: user}}}}}}
"""
    lst, clusters = translated(resources(SERVICE.split("---")[0], rule_yaml))
    out = dubbo.listener(lst, clusters)
    assert [(g.path, g.fatal) for g in out.gaps] == [("default route.route", False)]
    assert "consistent hash on user" in out.gaps[0].reason
    assert_envoy_accepts(tmp_path, [out], clusters)


# (matcher, where, why dubbo_proxy cannot, whether generic_proxy can)
FATAL_MATCHERS = [
    (AttributeMatcher("interface", MatchKind.REGEX, "org\\..*"), "match.attributes.interface", "exact name, prefix or suffix", True),
    (AttributeMatcher("interface", MatchKind.EXACT, IFACE, invert=True), "match.attributes.interface", "cannot invert", True),
    (AttributeMatcher("interface", MatchKind.PREFIX, "*org"), "match.attributes.interface", "wildcard", True),
    (AttributeMatcher("version", MatchKind.PREFIX, "1."), "match.attributes.version", "equality only", True),
    (AttributeMatcher("method", MatchKind.EXACT, "sayHello", invert=True), "match.attributes.method", "cannot invert", True),
    (AttributeMatcher("method", MatchKind.PRESENT, "false"), "match.attributes.method", "never matches", True),
    (AttributeMatcher("dubbo", MatchKind.EXACT, "2.0.2"), "match.attributes.dubbo", "protocol version", False),
    (AttributeMatcher("user", MatchKind.REGEX, "(?!admin).*"), "match.attributes.user", "not RE2", False),
    (AttributeMatcher("method", MatchKind.REGEX, "(a)\\1"), "match.attributes.method", "not RE2", False),
]


@pytest.mark.parametrize(("matcher", "tail", "why", "generic"), FATAL_MATCHERS, ids=[f"{m.name}-{m.kind.value}-{i}" for i, (m, *_) in enumerate(FATAL_MATCHERS)])
def test_matchers_dubbo_proxy_cannot_express(
    tmp_path: Path, demo: tuple[ListenerConfig, dict[str, ClusterConfig]], matcher: AttributeMatcher, tail: str, why: str, generic: bool
) -> None:
    lst, clusters = demo
    routes = with_routes(lst, rule(AttributeMatcher("foo", MatchKind.EXACT, "bar")), rule(matcher))
    out = dubbo.dubbo_listener(routes)
    assert out.rejected
    assert [(g.path, g.fatal) for g in out.gaps] == [(f"spec.routes[1].{tail}", True)]
    assert why in out.gaps[0].reason
    # The route Envoy cannot express is left out, never half-translated.
    assert sum(len(c.routes) for c in table(out).route_config) == 1
    # No split here: generic_proxy serves what its matchers can say, and Envoy takes it.
    chosen = dubbo.listener(routes, clusters)
    if generic:
        assert chosen.gaps == [] and filter_names(chosen)[-1] == "envoy.filters.network.generic_proxy"
        assert chosen.routes[0][0] == "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.RouteConfiguration"
        assert_envoy_accepts(tmp_path, [chosen], clusters)
    else:
        assert chosen.rejected and filter_names(chosen)[-1] == "envoy.filters.network.dubbo_proxy"


def filter_names(out: EnvoyListener) -> list[str]:
    assert out.listener is not None
    return [f.name for f in out.listener.filter_chains[0].filters]


def test_a_split_keeps_dubbo_proxy_even_when_a_matcher_needs_generic_proxy(demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    """generic_proxy (Envoy 1.40) does not implement weighted clusters: both filters would reject
    the table, and the dubbo_proxy rendering (and its gaps) is what is reported."""
    lst, clusters = demo
    split = RouteAction(weighted_clusters=(WeightedCluster(V1, 20), WeightedCluster(V2, 80)))
    out = dubbo.listener(with_routes(lst, RouteRule("r", (AttributeMatcher("interface", MatchKind.REGEX, "org\\..*"),), split)), clusters)
    assert out.rejected and filter_names(out)[-1] == "envoy.filters.network.dubbo_proxy"
    assert [g.path for g in out.gaps] == ["spec.routes[0].match.attributes.interface"]
    generic = dubbo.generic_listener(with_routes(lst, RouteRule("r", (), split)))
    assert [(g.path, g.fatal) for g in generic.gaps] == [("spec.routes[0].route", True)] and "weighted_clusters" in generic.gaps[0].reason


def test_generic_proxy_matchers_keep_header_matcher_semantics(tmp_path: Path, demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    lst, clusters = demo
    routes = with_routes(
        lst,
        rule(AttributeMatcher("interface", MatchKind.REGEX, "org\\..*Service", ignore_case=True), AttributeMatcher("region", MatchKind.PREFIX, "eu", invert=True)),
        rule(AttributeMatcher("trace", MatchKind.PRESENT, "false"), AttributeMatcher("version", MatchKind.PREFIX, "")),
        RouteRule("all", (), RouteAction(weighted_clusters=(WeightedCluster(V1, 0), WeightedCluster(V2, 100)), timeout=2.5)),
    )  # fmt: skip
    out = dubbo.listener(routes, clusters)
    assert out.gaps == [] and filter_names(out)[-1] == "envoy.filters.network.generic_proxy"
    matchers = plain(out.routes[0][2])["routes"]["matcher_list"]["matchers"]  # type: ignore[index]
    first = matchers[0]["predicate"]["and_matcher"]["predicate"]
    assert first[0]["single_predicate"]["value_match"] == {"safe_regex": {"google_re2": {}, "regex": "(?i)org\\..*Service"}}
    # An inverted test still wants the attribute (Envoy's HeaderMatcher, and ours): present and not the test.
    inverted = first[1]["and_matcher"]["predicate"]
    assert inverted[0]["single_predicate"]["value_match"]["safe_regex"]["regex"] == "(?s).*"
    assert inverted[1]["not_matcher"]["single_predicate"]["value_match"] == {"prefix": "eu"}
    absent = matchers[1]["predicate"]["and_matcher"]["predicate"][0]
    assert absent["not_matcher"]["single_predicate"]["input"]["typed_config"]["property_name"] == "trace"
    last = matchers[2]
    assert last["on_match"]["action"]["typed_config"]["cluster"] == V2 and last["on_match"]["action"]["typed_config"]["timeout"] == "2.500s"
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_model_features_beyond_metarouter(tmp_path: Path, demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    """What a bootstrap or xDS can say and aeraki-ctl does not (yet): each one decided."""
    lst, clusters = demo
    approximated = with_routes(
        lst,
        rule(retry=RetryPolicy(num_retries=2)),
        RouteRule("slow", (), RouteAction(cluster=V2, timeout=2.5)),
        idle_timeout=30.0, access_log=(AccessLog("/dev/stdout", (("m", "%REQ(method)%"),)),), max_pending_per_connection=8,
        upstream_connections_per_endpoint=2, max_connections=100,
    )  # fmt: skip
    out = dubbo.dubbo_listener(approximated)
    assert not out.rejected
    listener_level = {"spec.trafficPolicy.connectionPool.tcp.idleTimeout", "access_log", "max_pending_per_connection", "upstream_connections_per_endpoint"}
    assert set(gaps(out)) == {"spec.routes[0].retry", "spec.routes[1].timeout", *listener_level}
    assert "2.5 s" in gaps(out)["spec.routes[1].timeout"][1]
    assert out.listener is not None
    first = out.listener.filter_chains[0].filters[0]
    assert first.name == "envoy.filters.network.connection_limit"
    assert_envoy_accepts(tmp_path, [out], clusters)
    # generic_proxy has the route timeout (and tries again): fewer approximations, so it serves.
    chosen = dubbo.listener(approximated, clusters)
    assert filter_names(chosen) == ["envoy.filters.network.connection_limit", "envoy.filters.network.generic_proxy"]
    assert set(gaps(chosen)) == {"spec.routes[0].retry", *listener_level} and "tries up to 3 times" in gaps(chosen)["spec.routes[0].retry"][1]
    assert_envoy_accepts(tmp_path, [chosen], clusters)
    faulty = dubbo.listener(with_routes(lst, rule(fault=FaultPolicy(abort_fraction=0.5))), clusters)
    assert faulty.rejected and [(g.path, g.fatal) for g in faulty.gaps] == [("spec.routes[0].fault", True)]


def test_tls_is_the_filter_chains_transport_socket(tmp_path: Path, demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    lst, clusters = demo
    ca = CertAuthority()
    cert, key = ca.write(tmp_path, "server", "server", dns=("localhost",))
    tls = DownstreamTls(CommonTls(certificate_chain=DataSource(filename=cert), private_key=DataSource(filename=key), trusted_ca=DataSource(filename=ca.write_ca(tmp_path))), require_client_certificate=True)
    out = dubbo.listener(replace(lst, tls=tls), clusters)
    assert out.gaps == [] and out.listener is not None
    assert out.listener.filter_chains[0].transport_socket == convert.downstream_tls_to_xds(tls)
    assert_envoy_accepts(tmp_path, [out], clusters)


# -- authorization --------------------------------------------------------------------------------


def policy(name: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: meta-dubbo}}
spec:
{spec}
"""


def test_connection_level_authorization_is_envoys_network_rbac(tmp_path: Path) -> None:
    by_peer = policy("peers", """
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"], ipBlocks: ["10.0.0.0/8"]}}]
""")
    lst, clusters = translated(resources(SERVICE, by_peer))
    assert lst.rbac
    out = dubbo.listener(lst, clusters)
    assert not out.rejected and [(g.path, g.fatal) for g in out.gaps] == [("authorization", False)]
    assert "connection is closed" in out.gaps[0].reason
    assert out.listener is not None
    names = [f.name for f in out.listener.filter_chains[0].filters]
    assert names == ["envoy.filters.network.rbac", "envoy.filters.network.dubbo_proxy"]
    msg = network_rbac_pb2.RBAC()
    assert out.listener.filter_chains[0].filters[0].typed_config.Unpack(msg)
    (only,) = msg.rules.policies.values()
    assert only.permissions[0].any and only.principals
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_authorization_on_request_attributes_rejects_the_listener() -> None:
    by_method = policy("methods", """
  action: DENY
  rules:
  - when: [{key: "request.metadata[method]", values: ["delete*"]}]
""")
    lst, clusters = translated(resources(SERVICE, by_method))
    out = dubbo.listener(lst, clusters)
    assert out.rejected
    assert [(g.path, g.fatal) for g in out.gaps] == [(f"authorization {lst.rbac[0].stat_prefix}", True)]
    assert "ns[meta-dubbo]-policy[methods]-rule[0]" in out.gaps[0].reason and "would not be enforced" in out.gaps[0].reason


def test_every_gap_names_where_it_comes_from(demo: tuple[ListenerConfig, dict[str, ClusterConfig]]) -> None:
    """No silent drop: a listener using every feature dubbo_proxy lacks reports each with a path."""
    lst, clusters = demo
    rich = with_routes(
        lst,
        rule(AttributeMatcher("dubbo", MatchKind.PRESENT, "true"), request_mutation=(("a", "b"),), response_mutation=(("c", "d"),), fault=FaultPolicy(delay=1, delay_fraction=1)),
        codec=replace(lst.codec, config={"payload_limit": 1024}),
    )  # fmt: skip
    out = dubbo.listener(rich, clusters)
    assert all(isinstance(g, Gap) and g.path and g.reason for g in out.gaps)
    assert [g.path for g in out.gaps] == ["spec.routes[0].match.attributes.dubbo", "spec.routes[0].requestMutation", "spec.routes[0].responseMutation", "spec.routes[0].fault", "codec.config"]
