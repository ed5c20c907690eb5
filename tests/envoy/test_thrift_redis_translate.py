"""aeraki_ctl.envoy.thrift and .redis: MetaRouters -> Envoy's thrift_proxy and redis_proxy.

The ListenerConfigs come from aeraki-ctl's own translation of Aeraki YAML (what a MetaRouter
cannot say is added to them with ``dataclasses.replace``); every listener that is served is then
loaded by the real Envoy (``envoy --mode validate``): a Thrift listener as it is sent (``trds``
over ADS) and again with its table inline, so that Envoy builds every matcher and split; a Redis
listener as it is (redis_proxy has its routes inline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from envoy.extensions.filters.network.redis_proxy.v3 import redis_proxy_pb2
from envoy.extensions.filters.network.thrift_proxy.v3 import route_pb2, thrift_proxy_pb2

from aeraki_ctl.envoy import redis, thrift
from aeraki_ctl.envoy.common import THRIFT_ROUTE_TYPE, EnvoyListener
from aeraki_ctl.envoy.translate import translate_listener
from aeraki_ctl.resources import ResourceSet, load_text
from aeraki_ctl.translate import translate
from metaprotocol.config.model import (
    AttributeMatcher,
    ClusterConfig,
    CodecRef,
    CommonTls,
    DataSource,
    DownstreamTls,
    FaultPolicy,
    LbPolicy,
    ListenerConfig,
    MatchKind,
    RetryPolicy,
    RouteAction,
    RouteRule,
)
from metaprotocol.xds import convert
from tests.envoy.validation import assert_envoy_accepts, plain, validate
from tests.tls_certs import CertAuthority

THOST = "users.thrift.svc"
TNAME = f"{THOST}_9090"
TV1, TV2, TALL = (f"outbound|9090|{s}|{THOST}" for s in ("v1", "v2", ""))
RHOST = "cache.redis.svc"
RNAME = f"{RHOST}_6379"
RA, RB, RALL = (f"outbound|6379|{s}|{RHOST}" for s in ("a", "b", ""))

THRIFT_SERVICE = f"""
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: users, namespace: t}}
spec:
  hosts: [{THOST}]
  ports: [{{number: 9090, name: tcp-metaprotocol-thrift, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift: 9101}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-thrift: 9102}}, labels: {{version: v2}}}}
"""
REDIS_SERVICE = f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {{name: redis, namespace: t}}
spec: {{protocol: redis, codec: redis}}
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: cache, namespace: t}}
spec:
  hosts: [{RHOST}]
  ports: [{{number: 6379, name: tcp-metaprotocol-redis, protocol: TCP}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-redis: 7001}}, labels: {{shard: a}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-redis: 7002}}, labels: {{shard: b}}}}
"""


def rule_of(host: str, subsets: Sequence[str], traffic: str = "") -> str:
    listed = "".join(f"\n  - {{name: {s}, labels: {{{'version' if host == THOST else 'shard'}: {s}}}}}" for s in subsets)
    return f"""
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {{name: dr, namespace: t}}
spec:
  host: {host}
{traffic}
  subsets:{listed}
"""


def router(host: str, routes: str, extra: str = "") -> str:
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: r, namespace: t}}
spec:
  hosts: [{host}]
{extra}
  routes:
{routes}
"""


def resources(*texts: str) -> ResourceSet:
    out = ResourceSet()
    for i, text in enumerate(texts):
        load_text(text, f"input{i}.yaml", out)
    return out


def translated(*texts: str) -> tuple[ListenerConfig, dict[str, ClusterConfig]]:
    """The one listener aeraki-ctl makes of ``texts`` (no error allowed), and the clusters."""
    t = translate(resources(*texts))
    assert not t.errors, t.errors
    (lst,) = t.bootstrap.listeners
    return lst, {c.name: c for c in t.bootstrap.clusters}


def with_routes(lst: ListenerConfig, *rules: RouteRule, **changes: object) -> ListenerConfig:
    assert lst.route_config is not None
    return replace(lst, route_config=replace(lst.route_config, routes=rules), **changes)  # type: ignore[arg-type]



def gaps(out: EnvoyListener) -> dict[str, tuple[bool, str]]:
    """Gaps by path: (fatal, reason)."""
    return {g.path: (g.fatal, g.reason) for g in out.gaps}


def thrift_proxy(out: EnvoyListener) -> thrift_proxy_pb2.ThriftProxy:
    assert out.listener is not None
    cfg = thrift_proxy_pb2.ThriftProxy()
    assert out.listener.filter_chains[0].filters[-1].typed_config.Unpack(cfg)  # type: ignore[attr-defined]
    return cfg


def thrift_table(out: EnvoyListener) -> route_pb2.RouteConfiguration:
    ((type_url, name, msg),) = out.routes
    assert (type_url, name) == (THRIFT_ROUTE_TYPE, TNAME)
    assert isinstance(msg, route_pb2.RouteConfiguration)
    return msg


def redis_proxy(out: EnvoyListener) -> redis_proxy_pb2.RedisProxy:
    assert out.listener is not None and out.routes == []
    cfg = redis_proxy_pb2.RedisProxy()
    assert out.listener.filter_chains[0].filters[-1].typed_config.Unpack(cfg)  # type: ignore[attr-defined]
    return cfg


# -- Envoy validates what is served ---------------------------------------------------------------


def test_envoy_refuses_broken_tables_so_the_validation_means_something(tmp_path: Path) -> None:
    """The control for every ``assert_envoy_accepts``: what Envoy cannot build fails, in a Thrift
    table (a bad regex) and in redis_proxy's prefix routes (one prefix twice)."""
    lst, clusters = translated(THRIFT_SERVICE, router(THOST, "  - route: [{destination: {host: users.thrift.svc}}]\n    match: {attributes: {tenant: {regex: 'a.*'}}}"))
    out = thrift.listener(lst, clusters)
    assert_envoy_accepts(tmp_path, [out], clusters)
    thrift_table(out).routes[0].match.headers[0].string_match.safe_regex.regex = "(unclosed"
    result = validate(tmp_path, [out], clusters)
    assert result.returncode != 0 and "unclosed" in result.stdout + result.stderr, result.stdout + result.stderr
    rlst, rclusters = translated(REDIS_SERVICE, router(RHOST, "  - match: {attributes: {key: {prefix: 'a:'}}}\n    route: [{destination: {host: cache.redis.svc}}]"))
    rout = redis.listener(rlst, rclusters)
    assert_envoy_accepts(tmp_path, [rout], rclusters)
    assert rout.listener is not None
    cfg = redis_proxy(rout)
    cfg.prefix_routes.routes.append(cfg.prefix_routes.routes[0])
    rout.listener.filter_chains[0].filters[-1].typed_config.Pack(cfg)  # type: ignore[attr-defined]
    result = validate(tmp_path, [rout], rclusters)
    assert result.returncode != 0 and "a:" in result.stdout + result.stderr, result.stdout + result.stderr


# -- Thrift ---------------------------------------------------------------------------------------

THRIFT_ROUTES = f"""
  - name: qualified
    match: {{attributes: {{method: {{exact: echo}}, service: {{exact: UserService}}}}}}
    route: [{{destination: {{host: {THOST}, subset: v2}}}}]
  - name: admin
    match: {{attributes: {{service: {{exact: Admin}}}}}}
    route: [{{destination: {{host: {THOST}, subset: v1}}}}]
  - name: tenant-b
    match: {{attributes: {{method: {{exact: getUser}}, tenant: {{prefix: b}}, trace: {{}}}}}}
    route: [{{destination: {{host: {THOST}, subset: v2}}}}]
    mirror: {{host: {THOST}, subset: v1}}
    mirrorPercentage: {{value: 12.5}}
  - name: split
    match: {{attributes: {{method: {{regex: "*"}}}}}}
    route:
    - {{destination: {{host: {THOST}, subset: v1}}, weight: 30}}
    - {{destination: {{host: {THOST}, subset: v2}}, weight: 70}}
"""


def test_thrift_metarouter_is_a_trds_table_in_first_match_order(tmp_path: Path) -> None:
    lst, clusters = translated(THRIFT_SERVICE, rule_of(THOST, ["v1", "v2"]), router(THOST, THRIFT_ROUTES))
    out = translate_listener(lst, clusters)  # aeraki-ctl's dispatch: the codec alias reaches thrift_proxy
    assert not out.rejected
    assert gaps(out) == {"spec.routes[2].match.attributes.method": (False, gaps(out)["spec.routes[2].match.attributes.method"][1])}
    assert "multiplexed call '<service>:getUser' does not match" in out.gaps[0].reason
    assert out.listener is not None and out.listener.name == TNAME and out.listener.address.socket_address.port_value == lst.port
    assert [f.name for f in out.listener.filter_chains[0].filters] == ["envoy.filters.network.thrift_proxy"]
    proxy = thrift_proxy(out)
    assert proxy.stat_prefix == lst.stat_prefix
    assert (proxy.transport, proxy.protocol) == (thrift_proxy_pb2.AUTO_TRANSPORT, thrift_proxy_pb2.AUTO_PROTOCOL)
    assert proxy.HasField("trds") and not proxy.HasField("route_config")
    assert proxy.trds.route_config_name == TNAME and proxy.trds.config_source.HasField("ads")
    assert [f.name for f in proxy.thrift_filters] == ["envoy.filters.thrift.router"]
    assert plain(thrift_table(out)) == {
        "name": TNAME,
        "routes": [
            {"match": {"method_name": "UserService:echo"}, "route": {"cluster": TV2}},
            {"match": {"service_name": "Admin"}, "route": {"cluster": TV1}},
            {"match": {"method_name": "getUser", "headers": [{"name": "tenant", "string_match": {"prefix": "b"}}, {"name": "trace", "present_match": True}]},
             "route": {"cluster": TV2, "request_mirror_policies": [{"cluster": TV1, "runtime_fraction": {"default_value": {"numerator": 125000, "denominator": "MILLION"}}}]}},
            {"match": {"method_name": ""}, "route": {"weighted_clusters": {"clusters": [{"name": TV1, "weight": 30}, {"name": TV2, "weight": 70}]}}},
        ],
    }  # fmt: skip
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_a_thrift_service_without_metarouter_gets_its_default_route(tmp_path: Path) -> None:
    lst, clusters = translated(THRIFT_SERVICE)
    out = thrift.listener(lst, clusters)
    assert out.gaps == []
    assert plain(thrift_table(out))["routes"] == [{"match": {"method_name": ""}, "route": {"cluster": TALL}}]
    assert_envoy_accepts(tmp_path, [out], clusters)


@pytest.mark.parametrize(
    ("settings", "transport", "protocol"),
    [
        ({"transport": "header", "protocol": "compact"}, thrift_proxy_pb2.HEADER, thrift_proxy_pb2.COMPACT),
        ({"transport": "framed", "protocol": "binary"}, thrift_proxy_pb2.FRAMED, thrift_proxy_pb2.BINARY),
        ({"transport": "unframed", "protocol": "binary-nonstrict"}, thrift_proxy_pb2.UNFRAMED, thrift_proxy_pb2.LAX_BINARY),
        ({"transport": "auto"}, thrift_proxy_pb2.AUTO_TRANSPORT, thrift_proxy_pb2.AUTO_PROTOCOL),
    ],
)
def test_thrift_transport_and_protocol_come_from_the_codec_settings(tmp_path: Path, settings: dict[str, object], transport: int, protocol: int) -> None:
    lst, clusters = translated(THRIFT_SERVICE)
    out = thrift.listener(replace(lst, codec=CodecRef("thrift", settings)), clusters)
    assert out.gaps == []
    assert (thrift_proxy(out).transport, thrift_proxy(out).protocol) == (transport, protocol)
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_thrift_codec_settings_envoy_lacks() -> None:
    lst, clusters = translated(THRIFT_SERVICE)
    out = thrift.listener(replace(lst, codec=CodecRef("thrift", {"protocol": "json", "max_frame_size": 1024})), clusters)
    assert out.rejected and out.listener is None
    assert [(g.path, g.fatal) for g in out.gaps] == [("codec.protocol", True), ("codec.max_frame_size", False)]
    assert "'json'" in out.gaps[0].reason


def trule(*match: AttributeMatcher, **changes: object) -> RouteRule:
    return RouteRule("r", match, RouteAction(cluster=TV1), **changes)  # type: ignore[arg-type]


FATAL_THRIFT = [
    (AttributeMatcher("method", MatchKind.REGEX, "get.*"), "match.attributes.method", "compares the message name exactly"),
    (AttributeMatcher("method", MatchKind.PREFIX, "get"), "match.attributes.method", "method prefix cannot be expressed"),
    (AttributeMatcher("method", MatchKind.EXACT, "GETUSER", ignore_case=True), "match.attributes.method", "ignoring case"),
    (AttributeMatcher("method", MatchKind.PRESENT, "false"), "match.attributes.method", "present"),
    (AttributeMatcher("service", MatchKind.PREFIX, "User"), "match.attributes.service", "service prefix"),
    (AttributeMatcher("service", MatchKind.PRESENT, "true"), "match.attributes.service", "service present"),
    (AttributeMatcher("message_type", MatchKind.EXACT, "call"), "match.attributes.message_type", "calls and one-ways alike"),
    (AttributeMatcher("tenant", MatchKind.REGEX, "(?!admin).*"), "match.attributes.tenant", "not RE2"),
]


@pytest.mark.parametrize(("matcher", "tail", "why"), FATAL_THRIFT, ids=[f"{m.name}-{m.kind.value}-{i}" for i, (m, _, _) in enumerate(FATAL_THRIFT)])
def test_thrift_matchers_envoy_cannot_express_reject_the_listener(matcher: AttributeMatcher, tail: str, why: str) -> None:
    lst, clusters = translated(THRIFT_SERVICE)
    out = thrift.listener(with_routes(lst, trule(AttributeMatcher("tenant", MatchKind.EXACT, "a")), trule(matcher)), clusters)
    assert out.rejected and out.listener is None and out.routes == []
    assert [(g.path, g.fatal) for g in out.gaps] == [(f"spec.routes[1].{tail}", True)]
    assert why in out.gaps[0].reason


def test_thrift_inversions(tmp_path: Path) -> None:
    """One inverted name condition is Envoy's ``invert``; an inversion beside the other name is not."""
    lst, clusters = translated(THRIFT_SERVICE, rule_of(THOST, ["v1", "v2"]))
    served = thrift.listener(with_routes(lst, trule(AttributeMatcher("service", MatchKind.EXACT, "Admin", invert=True))), clusters)
    assert served.gaps == []
    assert plain(thrift_table(served).routes[0].match) == {"service_name": "Admin", "invert": True}
    assert_envoy_accepts(tmp_path, [served], clusters)
    both = trule(AttributeMatcher("service", MatchKind.EXACT, "Admin", invert=True), AttributeMatcher("method", MatchKind.EXACT, "drop"))
    out = thrift.listener(with_routes(lst, both), clusters)
    assert out.rejected and [(g.path, g.fatal) for g in out.gaps] == [("spec.routes[0].match", True)]


def test_thrift_metarouter_features_envoy_lacks_are_gaps_with_their_path(tmp_path: Path) -> None:
    mutating = f"""
  - name: tag
    route: [{{destination: {{host: {THOST}, subset: v1}}}}]
    requestMutation: [{{key: x-team, value: a}}]
    responseMutation: [{{key: x-served, value: envoy}}]
"""
    limited = """
  localRateLimit:
    tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}
"""
    lst, clusters = translated(THRIFT_SERVICE, rule_of(THOST, ["v1", "v2"]), router(THOST, mutating, limited))
    out = thrift.listener(lst, clusters)
    assert out.rejected and out.listener is None
    assert [(g.path, g.fatal) for g in out.gaps] == [("spec.localRateLimit", True), ("spec.routes[0].requestMutation", True), ("spec.routes[0].responseMutation", True)]
    assert "cannot set THeader headers" in out.gaps[1].reason
    faulty = thrift.listener(with_routes(lst, trule(fault=FaultPolicy(abort_fraction=0.5)), local_rate_limit=None), clusters)
    assert [(g.path, g.fatal) for g in faulty.gaps] == [("spec.routes[0].fault", True)] and faulty.rejected


def test_thrift_approximations_are_served_and_reported(tmp_path: Path) -> None:
    """Retry, a non-default timeout, consistent hash on a multi-endpoint cluster, an idle timeout:
    served, each reported non-fatal with its path."""
    traffic = """
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: tenant}}
    connectionPool: {tcp: {idleTimeout: 30s}}
"""
    routes = f"""
  - name: hashed
    route: [{{destination: {{host: {THOST}}}}}]
"""
    lst, clusters = translated(THRIFT_SERVICE, rule_of(THOST, ["v1", "v2"], traffic), router(THOST, routes))
    assert clusters[TALL].lb_policy is LbPolicy.RING_HASH and len(clusters[TALL].endpoints) == 2
    (hashed,) = lst.route_config.routes if lst.route_config else ()
    rich = with_routes(lst, replace(hashed, retry=RetryPolicy(num_retries=2), action=replace(hashed.action, timeout=2.5)))
    out = thrift.listener(rich, clusters)
    assert not out.rejected
    found = gaps(out)
    assert set(found) == {"spec.routes[0].route", "spec.routes[0].timeout", "spec.routes[0].retry", "spec.trafficPolicy.connectionPool.tcp.idleTimeout"}
    assert not any(fatal for fatal, _ in found.values())
    assert "picks endpoints at random" in found["spec.routes[0].route"][1] and "tenant" in found["spec.routes[0].route"][1]
    assert "2.5 s" in found["spec.routes[0].timeout"][1]
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_thrift_listener_tls_connection_limit_and_weight_zero(tmp_path: Path) -> None:
    lst, clusters = translated(THRIFT_SERVICE, rule_of(THOST, ["v1", "v2"]))
    ca = CertAuthority()
    cert, key = ca.write(tmp_path, "server", "server", dns=("localhost",))
    tls = DownstreamTls(CommonTls(certificate_chain=DataSource(filename=cert), private_key=DataSource(filename=key), trusted_ca=DataSource(filename=ca.write_ca(tmp_path))), require_client_certificate=True)
    from metaprotocol.config.model import WeightedCluster

    zero = RouteRule("all-v2", (), RouteAction(weighted_clusters=(WeightedCluster(TV1, 0), WeightedCluster(TV2, 100))))
    out = thrift.listener(with_routes(lst, zero, tls=tls, max_connections=50), clusters)
    assert out.gaps == [] and out.listener is not None
    chain = out.listener.filter_chains[0]
    assert chain.transport_socket == convert.downstream_tls_to_xds(tls)
    assert [f.name for f in chain.filters] == ["envoy.filters.network.connection_limit", "envoy.filters.network.thrift_proxy"]
    assert plain(thrift_table(out).routes[0].route) == {"cluster": TV2}  # a weight-0 destination gets nothing: left out
    assert_envoy_accepts(tmp_path, [out], clusters)


def policy(name: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: t}}
spec:
{spec}
"""


def test_thrift_authorization_by_peer_is_network_rbac_by_method_is_fatal(tmp_path: Path) -> None:
    by_peer = policy("peers", """
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"], ipBlocks: ["10.0.0.0/8"]}}]
""")
    lst, clusters = translated(THRIFT_SERVICE, by_peer)
    out = thrift.listener(lst, clusters)
    assert not out.rejected and [(g.path, g.fatal) for g in out.gaps] == [("authorization", False)]
    assert out.listener is not None
    assert [f.name for f in out.listener.filter_chains[0].filters] == ["envoy.filters.network.rbac", "envoy.filters.network.thrift_proxy"]
    assert_envoy_accepts(tmp_path, [out], clusters)
    by_method = policy("methods", """
  action: DENY
  rules:
  - when: [{key: "request.metadata[method]", values: ["delete*"]}]
""")
    lst, clusters = translated(THRIFT_SERVICE, by_method)
    out = thrift.listener(lst, clusters)
    assert out.rejected and [(g.path, g.fatal) for g in out.gaps] == [(f"authorization {lst.rbac[0].stat_prefix}", True)]
    assert "would not be enforced" in out.gaps[0].reason


# -- Redis ----------------------------------------------------------------------------------------

REDIS_ROUTES = f"""
  - name: users
    match: {{attributes: {{key: {{prefix: "user:"}}}}}}
    route: [{{destination: {{host: {RHOST}, subset: a}}}}]
    mirror: {{host: {RHOST}, subset: b}}
    mirrorPercentage: {{value: 50}}
  - name: vip-users
    match: {{attributes: {{key: {{prefix: "user:vip:"}}}}}}
    route: [{{destination: {{host: {RHOST}, subset: b}}}}]
  - name: sessions
    match: {{attributes: {{key: {{prefix: "session:"}}}}}}
    route: [{{destination: {{host: {RHOST}, subset: b}}}}]
  - name: rest
    route: [{{destination: {{host: {RHOST}}}}}]
  - name: after-catch-all
    match: {{attributes: {{key: {{prefix: "z"}}}}}}
    route: [{{destination: {{host: {RHOST}, subset: a}}}}]
"""


def test_redis_metarouter_is_prefix_routes_with_mirrors_and_a_catch_all(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE, rule_of(RHOST, ["a", "b"]), router(RHOST, REDIS_ROUTES))
    out = translate_listener(lst, clusters)
    assert not out.rejected
    found = gaps(out)
    assert set(found) == {"", "spec.routes[1]", "spec.routes[4]"} and not any(fatal for fatal, _ in found.values())
    assert "no RDS" in found[""][1] and "--drain-time-s" in found[""][1]
    assert "spec.routes[0] comes first" in found["spec.routes[1]"][1]
    assert "spec.routes[3] comes first" in found["spec.routes[4]"][1]
    assert out.listener is not None and out.listener.name == RNAME
    assert [f.name for f in out.listener.filter_chains[0].filters] == ["envoy.filters.network.redis_proxy"]
    assert plain(redis_proxy(out)) == {
        "stat_prefix": lst.stat_prefix,
        "settings": {"op_timeout": "15s"},
        "prefix_routes": {
            "routes": [
                {"prefix": "user:", "cluster": RA, "request_mirror_policy": [{"cluster": RB, "runtime_fraction": {"default_value": {"numerator": 500000, "denominator": "MILLION"}}}]},
                {"prefix": "session:", "cluster": RB},
            ],
            "catch_all_route": {"cluster": RALL},
        },
    }  # fmt: skip
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_a_redis_service_without_metarouter_is_one_catch_all(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    out = redis.listener(lst, clusters)
    assert [(g.path, g.fatal) for g in out.gaps] == [("", False)]  # the no-RDS approximation only
    assert plain(redis_proxy(out))["prefix_routes"] == {"catch_all_route": {"cluster": RALL}}
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_a_redis_weighted_split_is_fatal_unless_one_destination_has_it_all(tmp_path: Path) -> None:
    split = f"""
  - name: split
    route:
    - {{destination: {{host: {RHOST}, subset: a}}, weight: 30}}
    - {{destination: {{host: {RHOST}, subset: b}}, weight: 70}}
"""
    lst, clusters = translated(REDIS_SERVICE, rule_of(RHOST, ["a", "b"]), router(RHOST, split))
    out = redis.listener(lst, clusters)
    assert out.rejected and out.listener is None
    assert gaps(out)["spec.routes[0].route"][0] is True
    assert f"({RA} 30, {RB} 70)" in gaps(out)["spec.routes[0].route"][1]
    whole = split.replace("weight: 30", "weight: 0").replace("weight: 70", "weight: 100")
    lst, clusters = translated(REDIS_SERVICE, rule_of(RHOST, ["a", "b"]), router(RHOST, whole))
    out = redis.listener(lst, clusters)
    assert not out.rejected and redis_proxy(out).prefix_routes.catch_all_route.cluster == RB
    assert_envoy_accepts(tmp_path, [out], clusters)


def rrule(*match: AttributeMatcher, **changes: object) -> RouteRule:
    return RouteRule("r", match, RouteAction(cluster=RA), **changes)  # type: ignore[arg-type]


FATAL_REDIS = [
    (AttributeMatcher("command", MatchKind.EXACT, "get"), "match.attributes.command", "key prefix only"),
    (AttributeMatcher("key", MatchKind.EXACT, "user:1"), "match.attributes.key", "key exact"),
    (AttributeMatcher("key", MatchKind.REGEX, "user:[0-9]+"), "match.attributes.key", "key regex"),
    (AttributeMatcher("key", MatchKind.PREFIX, "user:", invert=True), "match.attributes.key", "inverted"),
    (AttributeMatcher("key", MatchKind.PRESENT, "false"), "match.attributes.key", "key present"),
]


@pytest.mark.parametrize(("matcher", "tail", "why"), FATAL_REDIS, ids=[f"{m.name}-{m.kind.value}-{i}" for i, (m, _, _) in enumerate(FATAL_REDIS)])
def test_redis_matchers_envoy_cannot_express_reject_the_listener(matcher: AttributeMatcher, tail: str, why: str) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    out = redis.listener(with_routes(lst, rrule(AttributeMatcher("key", MatchKind.PREFIX, "a:")), rrule(matcher)), clusters)
    assert out.rejected and out.listener is None
    fatal = [(g.path, g.reason) for g in out.gaps if g.fatal]
    assert [p for p, _ in fatal] == [f"spec.routes[1].{tail}"] and why in fatal[0][1]


def test_redis_faults_on_every_route_are_the_listeners_with_our_odds(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    fault = FaultPolicy(delay=0.25, delay_fraction=0.5, abort_kind="upstream_timeout", abort_fraction=0.1)
    out = redis.listener(with_routes(lst, rrule(AttributeMatcher("key", MatchKind.PREFIX, "a:"), fault=fault), rrule(fault=fault)), clusters)
    assert not out.rejected
    # Envoy injects at most one fault per command, in order: ERROR 10 %, then DELAY (1 - 0.1) * 50 % = 45 %.
    assert plain(redis_proxy(out))["faults"] == [
        {"fault_type": "ERROR", "fault_enabled": {"default_value": {"numerator": 10}}},
        {"fault_enabled": {"default_value": {"numerator": 45}}, "delay": "0.250s"},  # DELAY is the enum's 0
    ]
    assert gaps(out)["spec.routes[0].fault"] == (False, "an injected error reads 'Fault Injected: Error' on Envoy, not our proxy's upstream_timeout reply")
    assert_envoy_accepts(tmp_path, [out], clusters)
    fine = FaultPolicy(delay=1.0, delay_fraction=0.125)
    out = redis.listener(with_routes(lst, rrule(fault=fine)), clusters)
    assert gaps(out)["spec.routes[0].fault"] == (False, "Envoy injects Redis faults in whole percents: 12.5 % becomes 12 %")
    some = redis.listener(with_routes(lst, rrule(AttributeMatcher("key", MatchKind.PREFIX, "a:"), fault=fault), rrule()), clusters)
    assert some.rejected and [(g.path, g.fatal) for g in some.gaps if g.fatal] == [("spec.routes[0].fault", True)]


def test_redis_op_timeout_is_the_longest_route_timeout(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    keyed = AttributeMatcher("key", MatchKind.PREFIX, "a:")
    out = redis.listener(with_routes(lst, RouteRule("a", (keyed,), RouteAction(cluster=RA, timeout=2.0)), RouteRule("b", (), RouteAction(cluster=RB, timeout=0.5))), clusters)
    assert redis_proxy(out).settings.op_timeout.ToMilliseconds() == 2000
    assert (False, "redis_proxy has one timeout per listener: the routes' timeouts (0.5 s, 2 s) become the longest") in gaps_list(out)
    assert_envoy_accepts(tmp_path, [out], clusters)
    none = redis.listener(with_routes(lst, RouteRule("a", (), RouteAction(cluster=RA, timeout=0.0))), clusters)
    assert redis_proxy(none).settings.op_timeout.seconds == redis.NO_TIMEOUT
    assert any("requires a timeout" in reason for _, reason in gaps_list(none))


def gaps_list(out: EnvoyListener) -> list[tuple[bool, str]]:
    return [(g.fatal, g.reason) for g in out.gaps]


def test_redis_codec_settings(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    out = redis.listener(replace(lst, codec=CodecRef("redis", {"password": "s3cret"})), clusters)
    assert plain(redis_proxy(out))["downstream_auth_passwords"] == [{"inline_string": "s3cret"}]
    assert_envoy_accepts(tmp_path, [out], clusters)
    bad = redis.listener(replace(lst, codec=CodecRef("redis", {"db": 2, "upstream_password": "x", "mode": "bound", "max_bulk_length": 1024})), clusters)
    assert bad.rejected
    assert [(g.path, g.fatal) for g in bad.gaps if g.path.startswith("codec.")] == [
        ("codec.upstream_password", True), ("codec.db", True), ("codec.mode", True), ("codec.max_bulk_length", False)]  # fmt: skip


def test_redis_hashing_and_mutations(tmp_path: Path) -> None:
    traffic = "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: key}}}"
    lst, clusters = translated(REDIS_SERVICE, rule_of(RHOST, ["a", "b"], traffic))
    assert clusters[RALL].lb_policy is LbPolicy.RING_HASH
    out = redis.listener(lst, clusters)
    assert not out.rejected and not redis_proxy(out).settings.enable_hashtagging
    placement = [r for f, r in gaps_list(out) if "places keys" in r]
    assert len(placement) == 1 and RALL in placement[0] and "md5" in placement[0]  # the two-endpoint cluster only
    assert_envoy_accepts(tmp_path, [out], clusters)  # ring-hash clusters as they are
    tagged = {**clusters, RALL: replace(clusters[RALL], hash_tag="{}")}
    assert redis_proxy(redis.listener(lst, tagged)).settings.enable_hashtagging
    odd = redis.listener(lst, {**clusters, RALL: replace(clusters[RALL], hash_tag="::")})
    assert odd.rejected and any("hash tags" in r for f, r in gaps_list(odd) if f)
    (default,) = lst.route_config.routes if lst.route_config else ()
    by_command = redis.listener(with_routes(lst, replace(default, action=replace(default.action, hash_policy=("command",)))), clusters)
    assert by_command.rejected and gaps(by_command)["default route.route"][0] is True
    mutating = redis.listener(with_routes(lst, replace(default, request_mutation=(("a", "b"),), retry=RetryPolicy())), clusters)
    assert gaps(mutating)["default route.requestMutation"][0] is True and gaps(mutating)["default route.retry"][0] is False


def test_redis_listener_features(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    ca = CertAuthority()
    cert, key = ca.write(tmp_path, "server", "server", dns=("localhost",))
    tls = DownstreamTls(CommonTls(certificate_chain=DataSource(filename=cert), private_key=DataSource(filename=key)))
    out = redis.listener(replace(lst, tls=tls, max_connections=10, idle_timeout=5.0), clusters)
    assert not out.rejected and out.listener is not None
    assert out.listener.filter_chains[0].transport_socket == convert.downstream_tls_to_xds(tls)
    assert [f.name for f in out.listener.filter_chains[0].filters] == ["envoy.filters.network.connection_limit", "envoy.filters.network.redis_proxy"]
    assert gaps(out)["spec.trafficPolicy.connectionPool.tcp.idleTimeout"][0] is False
    assert_envoy_accepts(tmp_path, [out], clusters)


@pytest.mark.parametrize("translator", [thrift.listener, redis.listener], ids=["thrift", "redis"])
def test_a_table_only_named_for_rds_is_not_translated(translator: object) -> None:
    """A listener whose routes come in our proxy's RDS shape has no table to translate: fatal, never an empty table."""
    lst, clusters = translated(THRIFT_SERVICE)
    out = translator(replace(lst, route_config=None, rds_name="elsewhere"), clusters)  # type: ignore[operator]
    assert out.rejected and out.listener is None
    assert [(g.path, g.fatal) for g in out.gaps if g.fatal] == [("", True)] and "(elsewhere)" in out.gaps[0].reason


def test_thrift_subset_is_metadata_match(tmp_path: Path) -> None:
    lst, clusters = translated(THRIFT_SERVICE)
    out = thrift.listener(with_routes(lst, RouteRule("canary", (), RouteAction(cluster=TALL, subset=(("version", "v2"),)))), clusters)
    assert out.gaps == []
    assert plain(thrift_table(out).routes[0].route) == {"cluster": TALL, "metadata_match": {"filter_metadata": {"envoy.lb": {"version": "v2"}}}}
    assert_envoy_accepts(tmp_path, [out], clusters)


def test_redis_prefixes_ignoring_case_all_or_none(tmp_path: Path) -> None:
    lst, clusters = translated(REDIS_SERVICE)
    upper = AttributeMatcher("key", MatchKind.PREFIX, "User:", ignore_case=True)
    lower = AttributeMatcher("key", MatchKind.PREFIX, "session:", ignore_case=True)
    out = redis.listener(with_routes(lst, rrule(upper), rrule(lower), rrule()), clusters)
    assert not out.rejected and redis_proxy(out).prefix_routes.case_insensitive
    assert_envoy_accepts(tmp_path, [out], clusters)
    shadowed = redis.listener(with_routes(lst, rrule(upper), rrule(AttributeMatcher("key", MatchKind.PREFIX, "user:1", ignore_case=True))), clusters)
    assert [(g.path, g.fatal) for g in shadowed.gaps if g.path] == [("spec.routes[1]", False)]  # "user:1" starts with "User:" ignoring case
    mixed = redis.listener(with_routes(lst, rrule(upper), rrule(AttributeMatcher("key", MatchKind.PREFIX, "session:"))), clusters)
    assert mixed.rejected and [(g.path, g.fatal) for g in mixed.gaps if g.fatal] == [("spec.routes", True)]
