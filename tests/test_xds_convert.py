"""Config model <-> xDS resources: round trips, and Envoy's own validation of what we emit."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2
from google.protobuf import duration_pb2, wrappers_pb2
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
    HealthCheck,
    HealthCheckKind,
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
    TcpKeepalive,
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


whole_seconds = st.integers(0, 7200).map(float)  # Envoy's keepalive times are UInt32 seconds
keepalives = st.none() | st.builds(TcpKeepalive, probes=st.integers(0, 20), time=whole_seconds, interval=whole_seconds)
millis = st.integers(1, 60_000).map(lambda ms: ms / 1000)
health_checks = st.none() | st.builds(
    HealthCheck, interval=millis, timeout=millis, unhealthy_threshold=st.integers(1, 10), healthy_threshold=st.integers(1, 10), kind=st.sampled_from(list(HealthCheckKind))
)


@given(st.lists(st.builds(Endpoint, address=st.just("127.0.0.1"), port=st.integers(1, 65535), weight=st.integers(1, 9), labels=st.sampled_from([(), (("version", "v1"),)])), max_size=4), st.sampled_from(list(LbPolicy)), st.sampled_from(["md5", "crc32a"]), st.sampled_from(["", "{}"]),
       keepalives, st.integers(0, 100), health_checks)  # fmt: skip
def test_cluster_and_endpoints_roundtrip(
    eps: list[Endpoint], policy: LbPolicy, hash_function: str, tag: str, keepalive: TcpKeepalive | None, max_timeouts: int, health_check: HealthCheck | None
) -> None:
    c = ClusterConfig("outbound|20880|v1|svc", tuple(eps), policy, 1.25, hash_function=hash_function, hash_tag=tag,
                      circuit_breakers=(CircuitBreakers(100, 5, 4) if hash_function == "md5" else CircuitBreakers(0, 5, 0, 25.0, 2)) if tag else None, outlier_detection=OutlierDetection(3, 7.5, 25) if tag else None,
                      tcp_keepalive=keepalive, max_consecutive_timeouts=max_timeouts, health_check=health_check)  # fmt: skip
    assert convert.cluster_from_xds(convert.cluster_to_xds(c), convert.endpoints_to_xds(c)) == c


def test_cluster_extensions_are_envoy_fields_where_envoy_has_them() -> None:
    c = ClusterConfig("c", (), tcp_keepalive=TcpKeepalive(3, 60.0, 0.0), max_consecutive_timeouts=0, health_check=HealthCheck(5.0, 1.0, kind=HealthCheckKind.TCP))
    xds = convert.cluster_to_xds(c)
    keepalive = xds.upstream_connection_options.tcp_keepalive
    assert keepalive.keepalive_probes.value == 3 and keepalive.keepalive_time.value == 60 and not keepalive.HasField("keepalive_interval")
    assert xds.health_checks[0].WhichOneof("health_checker") == "tcp_health_check" and xds.health_checks[0].interval.seconds == 5
    assert xds.metadata.filter_metadata[convert.EXT_METADATA]["max_consecutive_timeouts"] == 0
    codec = convert.cluster_to_xds(ClusterConfig("c", (), health_check=HealthCheck(5.0, 1.0)))
    assert codec.health_checks[0].custom_health_check.name == "metaprotocol.health_checkers.codec"
    assert not convert.cluster_to_xds(ClusterConfig("c", ())).HasField("metadata")  # defaults travel as nothing


def _cluster_with(edit: Callable[[cluster_pb2.Cluster], object]) -> cluster_pb2.Cluster:
    c = convert.cluster_to_xds(ClusterConfig("c", (), health_check=HealthCheck(5.0, 1.0, kind=HealthCheckKind.TCP)))
    edit(c)
    return c


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: c.health_checks.add().CopyFrom(c.health_checks[0]), "only one health check"),
        (lambda c: setattr(c.health_checks[0].tcp_health_check.send, "text", "0000"), "payload checks"),
        (lambda c: c.health_checks[0].tcp_health_check.receive.add(text="01"), "payload checks"),
        (lambda c: c.health_checks[0].http_health_check.SetInParent(), "http_health_check is not supported"),
        (lambda c: c.health_checks[0].grpc_health_check.SetInParent(), "grpc_health_check is not supported"),
        (lambda c: setattr(c.health_checks[0].custom_health_check, "name", "envoy.health_checkers.redis"), "unsupported health checker"),
        (lambda c: setattr(c.health_checks[0].custom_health_check, "name", "metaprotocol.health_checkers.codec") or c.health_checks[0].custom_health_check.typed_config.Pack(duration_pb2.Duration(seconds=1)),
         "expected an empty google.protobuf.Struct"),
        (lambda c: c.health_checks[0].ClearField("interval"), "interval is required"),
        (lambda c: c.health_checks[0].alt_port.SetInParent(), "alt_port is not supported"),
        (lambda c: setattr(c.health_checks[0].healthy_threshold, "value", 0), "at least 1"),
        (lambda c: c.upstream_connection_options.happy_eyeballs_config.SetInParent(), "happy_eyeballs_config is not supported"),
        (lambda c: c.metadata.filter_metadata[convert.EXT_METADATA].update({"max_consecutive_timeouts": 1.5}), "whole number"),
    ],
)  # fmt: skip
def test_cluster_fields_that_cannot_be_honoured_are_refused(edit: Callable[[cluster_pb2.Cluster], object], reason: str) -> None:
    with pytest.raises(convert.ConversionError, match=reason):
        convert.cluster_from_xds(_cluster_with(edit), None)


def test_listener_connection_limit_filter_comes_first() -> None:
    lst = ListenerConfig("l", "127.0.0.1", 30880, CodecRef("redis"), "l", rds_name="l", max_connections=1000)
    xds = convert.listener_to_xds(lst)
    limit, proxy = xds.filter_chains[0].filters
    assert limit.name == "envoy.filters.network.connection_limit" and proxy.name == convert.FILTER_NAME
    assert limit.typed_config.type_url == "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
    assert convert.listener_from_xds(xds) == lst
    swapped = listener_pb2.Listener()
    swapped.CopyFrom(xds)
    del swapped.filter_chains[0].filters[:]
    swapped.filter_chains[0].filters.extend([proxy, limit])
    with pytest.raises(convert.ConversionError, match="connection_limit must come before the aeraki.meta_protocol_proxy filter"):
        convert.listener_from_xds(swapped)
    delayed = connection_limit_pb2.ConnectionLimit(stat_prefix="l", max_connections=wrappers_pb2.UInt64Value(value=5), delay=duration_pb2.Duration(seconds=1))
    xds.filter_chains[0].filters[0].typed_config.Pack(delayed)
    with pytest.raises(convert.ConversionError, match="delay is not supported"):
        convert.listener_from_xds(xds)


def test_listener_roundtrip_uses_rds() -> None:
    limit = LocalRateLimit((RateLimitCondition((AttributeMatcher("method", MatchKind.EXACT, "sayHello"),), TokenBucket(5, 5, 10.0)),), TokenBucket(100, 10, 1.0))
    log = (AccessLog("/dev/stdout", (("method", "%REQ(method)%"), ("ms", "%DURATION%"))),)
    lst = ListenerConfig("svc_20880", "127.0.0.1", 30880, CodecRef("aeraki.meta_protocol.codec.dubbo"), "outbound|20880||svc", rds_name="svc_20880", idle_timeout=60, max_connections=5,
                         max_pending_per_connection=100, upstream_connections_per_endpoint=2, local_rate_limit=limit, access_log=log,
                         global_rate_limit=GlobalRateLimit("dubbo", "outbound|8081||rls", (("method", "method"),), (AttributeMatcher("interface", MatchKind.EXACT, "x"),), 0.05, True))  # fmt: skip
    xds = convert.listener_to_xds(lst)
    assert xds.filter_chains[0].filters[-1].typed_config.type_url == "type.googleapis.com/aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
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


def test_a_filter_config_whose_bytes_do_not_decode_is_a_conversion_error_with_its_path() -> None:
    """Found by fuzz/xds_listener.py: a corrupt packed config raised protobuf's DecodeError."""
    from metaprotocol.config.model import CodecRef, ListenerConfig, RouteAction, RouteConfig, RouteRule
    from metaprotocol.xds.convert import ConversionError, listener_from_xds, listener_to_xds

    routes = RouteConfig("r", (RouteRule("all", (), RouteAction(cluster="c")),))
    lst = listener_to_xds(ListenerConfig("l", "127.0.0.1", 9000, CodecRef("dubbo"), "l", route_config=routes), inline_routes=True)
    lst.filter_chains[0].filters[0].typed_config.value = b"\x0a\xff\xff\xff\xff\x0f"
    with pytest.raises(ConversionError) as err:
        listener_from_xds(lst)
    assert err.value.path == "filter_chains[0].filters[0].typed_config" and "cannot be decoded" in str(err.value)
