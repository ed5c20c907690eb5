"""Config model <-> xDS resources: round trips, and Envoy's own validation of what we emit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.config.model import (
    AccessLog,
    AttributeMatcher,
    CircuitBreakers,
    OutlierDetection,
    ClusterConfig,
    CodecRef,
    Endpoint,
    FaultPolicy,
    GlobalRateLimit,
    LbPolicy,
    ListenerConfig,
    LocalRateLimit,
    MatchKind,
    MirrorPolicy,
    RateLimitCondition,
    RetryPolicy,
    RouteAction,
    RouteConfig,
    RouteRule,
    TokenBucket,
    WeightedCluster,
)
from metaprotocol.xds import convert

matchers = st.builds(
    AttributeMatcher,
    name=st.text(alphabet="abcdefgh-", min_size=1, max_size=8),
    kind=st.sampled_from(list(MatchKind)),
    value=st.sampled_from(["a", "b.*", "xyz", "true", "false"]),
    invert=st.booleans(),
    ignore_case=st.booleans(),
).filter(lambda m: m.kind is not MatchKind.PRESENT or (not m.ignore_case and m.value in ("true", "false")))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.lists(matchers, max_size=3), st.booleans(), st.integers(0, 600000).map(lambda ms: ms / 1000)), min_size=1, max_size=4))
def test_route_config_roundtrip(rules: list[tuple[str, list[AttributeMatcher], bool, float]]) -> None:
    rc = RouteConfig(
        "svc_20880",
        tuple(
            RouteRule(name, tuple(ms), RouteAction(cluster="c", timeout=t) if single else RouteAction(weighted_clusters=(WeightedCluster("a", 20), WeightedCluster("b", 80)), hash_policy=("userid",), subset=(("version", "v2"),), timeout=t),
                      request_mutation=(("foo", "bar"),), response_mutation=(("x", "y"),),
                      mirrors=(MirrorPolicy("m", 0.1),) if single else (),
                      retry=RetryPolicy(2, frozenset({"error", "connect_failure"}), 0.25, retry_non_idempotent=True) if single else None,
                      fault=FaultPolicy(0.5, 0.25, "over_limit", 0.125) if not single else None)  # fmt: skip
            for name, ms, single, t in rules
        ),
    )
    assert convert.route_config_from_xds(convert.route_config_to_xds(rc)) == rc


@given(st.lists(st.builds(Endpoint, address=st.just("127.0.0.1"), port=st.integers(1, 65535), weight=st.integers(1, 9), labels=st.sampled_from([(), (("version", "v1"),)])), max_size=4), st.sampled_from(list(LbPolicy)), st.sampled_from(["md5", "crc32a"]), st.sampled_from(["", "{}"]))
def test_cluster_and_endpoints_roundtrip(eps: list[Endpoint], policy: LbPolicy, hash_function: str, tag: str) -> None:
    c = ClusterConfig("outbound|20880|v1|svc", tuple(eps), policy, 1.25, hash_function=hash_function, hash_tag=tag,
                      circuit_breakers=(CircuitBreakers(100, 5, 4) if hash_function == "md5" else CircuitBreakers(0, 5, 0, 25.0, 2)) if tag else None, outlier_detection=OutlierDetection(3, 7.5, 25) if tag else None)  # fmt: skip
    assert convert.cluster_from_xds(convert.cluster_to_xds(c), convert.endpoints_to_xds(c)) == c


def test_listener_roundtrip_uses_rds() -> None:
    limit = LocalRateLimit((RateLimitCondition((AttributeMatcher("method", MatchKind.EXACT, "sayHello"),), TokenBucket(5, 5, 10.0)),), TokenBucket(100, 10, 1.0))
    log = (AccessLog("/dev/stdout", (("method", "%REQ(method)%"), ("ms", "%DURATION%"))),)
    lst = ListenerConfig("svc_20880", "127.0.0.1", 30880, CodecRef("aeraki.meta_protocol.codec.dubbo"), "outbound|20880||svc", rds_name="svc_20880", idle_timeout=60,
                         max_pending_per_connection=100, upstream_connections_per_endpoint=2, local_rate_limit=limit, access_log=log,
                         global_rate_limit=GlobalRateLimit("dubbo", "outbound|8081||rls", (("method", "method"),), (AttributeMatcher("interface", MatchKind.EXACT, "x"),), 0.05, True))  # fmt: skip
    xds = convert.listener_to_xds(lst)
    assert xds.filter_chains[0].filters[0].typed_config.type_url == "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
    assert convert.listener_from_xds(xds) == lst


def test_envoy_retry_on_over_rds_is_understood_and_http_only_conditions_refused() -> None:
    from envoy.config.route.v3 import route_components_pb2, route_pb2

    def config(retry_on: str) -> route_pb2.RouteConfiguration:
        route = route_components_pb2.Route(name="r", match=route_components_pb2.RouteMatch(prefix="/"))
        route.route.cluster = "c"
        route.route.retry_policy.retry_on = retry_on
        return route_pb2.RouteConfiguration(name="rc", virtual_hosts=[route_components_pb2.VirtualHost(name="rc", domains=["*"], routes=[route])])

    retry = convert.route_config_from_xds(config("reset,non_idempotent")).routes[0].retry
    assert retry is not None and retry.retry_on == {"upstream_reset", "upstream_timeout"} and retry.retry_non_idempotent
    with pytest.raises(convert.ConversionError, match="retriable-status-codes"):
        convert.route_config_from_xds(config("retriable-status-codes"))
