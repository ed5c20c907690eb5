"""aeraki_ctl: Aeraki/Istio resources -> proxy configuration."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from aeraki_ctl.resources import ResourceSet, load_directory, load_text
from aeraki_ctl.translate import Options, translate
from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.config.dump import to_bootstrap_tree
from dataclasses import replace

from metaprotocol.config.model import (
    AccessLog,
    AttributeMatcher,
    CircuitBreakers,
    GlobalRateLimit,
    OutlierDetection,
    HealthCheck,
    HealthCheckKind,
    OverloadConfig,
    TcpKeepalive,
    FaultPolicy,
    LocalRateLimit,
    RateLimitCondition,
    RetryPolicy,
    Bootstrap,
    ClusterConfig,
    CodecRef,
    Endpoint,
    LbPolicy,
    ListenerConfig,
    MatchKind,
    MirrorPolicy,
    RouteAction,
    RouteConfig,
    RouteRule,
    TokenBucket,
    WeightedCluster,
)

ROOT = Path(__file__).resolve().parents[2]
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
V1 = f"outbound|20880|v1|{HOST}"
V2 = f"outbound|20880|v2|{HOST}"
ALL = f"outbound|20880||{HOST}"
SERVICE = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text()


def resources(*texts: str) -> ResourceSet:
    out = ResourceSet()
    for i, text in enumerate(texts):
        load_text(text, f"input{i}.yaml", out)
    return out


def router(routes: str, extra: str = "") -> str:
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: r, namespace: meta-dubbo}}
spec:
  hosts: [{HOST}]
{extra}
  routes:
{routes}
"""


def test_aeraki_demo_weighted_split_on_subsets() -> None:
    result = translate(load_directory(ROOT / "examples/aeraki/dubbo-demo"))
    assert not result.problems
    b = result.bootstrap
    (lst,) = b.listeners
    assert (lst.name, lst.port, lst.codec.name, lst.stat_prefix) == (f"{HOST}_20880", 20880, "aeraki.meta_protocol.codec.dubbo", ALL)
    assert lst.route_config is not None and lst.route_config.name == f"{HOST}_20880"
    (rule,) = lst.route_config.routes
    assert rule.name == "traffic-split"
    assert rule.action.weighted_clusters == (WeightedCluster(V1, 20), WeightedCluster(V2, 80))
    assert {(m.name, m.kind, m.value) for m in rule.match} == {
        ("interface", MatchKind.EXACT, "org.apache.dubbo.samples.basic.api.DemoService"),
        ("method", MatchKind.EXACT, "sayHello"),
        ("foo", MatchKind.EXACT, "bar"),
    }
    clusters = b.cluster_map()
    assert [e.port for e in clusters[V1].endpoints] == [20881]
    assert [e.port for e in clusters[V2].endpoints] == [20882]
    assert [e.port for e in clusters[ALL].endpoints] == [20881, 20882]


def test_ordered_regex_routes_presence_and_mutation() -> None:
    routes = f"""
  - name: v2-for-say
    match: {{attributes: {{method: {{regex: "say.*"}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]
    requestMutation: [{{key: foo, value: bar}}]
    responseMutation: [{{key: served-by, value: mesh}}]
  - name: v1-if-header
    match: {{attributes: {{x-tenant: {{regex: "*"}}, version: {{prefix: "1."}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: everything-else
    route: [{{destination: {{host: {HOST}}}}}]
"""
    result = translate(resources(SERVICE, router(routes)))
    assert not result.problems
    table = result.bootstrap.listeners[0].route_config
    assert table is not None
    assert [r.name for r in table.routes] == ["v2-for-say", "v1-if-header", "everything-else"]
    first, second, third = table.routes
    assert first.match == (AttributeMatcher("method", MatchKind.REGEX, "say.*"),)
    assert first.action.cluster == V2 and first.request_mutation == (("foo", "bar"),) and first.response_mutation == (("served-by", "mesh"),)
    assert second.match == (AttributeMatcher("version", MatchKind.PREFIX, "1."), AttributeMatcher("x-tenant", MatchKind.PRESENT, "true"))
    assert third.match == () and third.action.cluster == ALL


def test_consistent_hash_from_the_destination_rule() -> None:
    dr = f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: hash, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy:
    loadBalancer: {{consistentHash: {{httpHeaderName: UserId}}}}
"""
    service_only = SERVICE.split("---")[0]
    result = translate(resources(service_only, dr))
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert rule.name == "default" and rule.action.cluster == ALL and rule.action.hash_policy == ("userid",)
    assert result.bootstrap.cluster_map()[ALL].lb_policy is LbPolicy.RING_HASH


def test_destination_rule_connection_pool_and_outlier_detection() -> None:
    dr = f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: resilient, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy:
    connectionPool: {{http: {{http2MaxRequests: 100, http1MaxPendingRequests: 10, maxRetries: 4}}}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      outlierDetection: {{consecutive5xxErrors: 2, baseEjectionTime: 5s}}
  - name: v2
    labels: {{version: v2}}
"""
    result = translate(resources(SERVICE.split("---")[0], dr))
    assert not result.errors
    clusters = result.bootstrap.cluster_map()
    assert clusters[ALL].circuit_breakers == CircuitBreakers(100, 10, 4)
    assert clusters[ALL].outlier_detection == OutlierDetection(5, 30.0, 50)
    assert clusters[V2].outlier_detection == OutlierDetection(5, 30.0, 50)  # inherited
    assert clusters[V1].outlier_detection == OutlierDetection(2, 5.0, 10)  # the subset's own
    assert clusters[V1].circuit_breakers == CircuitBreakers(100, 10, 4)  # the host's pool, kept (Istio merges per field)


def test_destination_rule_tcp_keepalive_per_host_and_subset() -> None:
    dr = f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: keepalive, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy:
    connectionPool: {{tcp: {{tcpKeepalive: {{probes: 9, time: 7200s, interval: 75s}}}}}}
  subsets:
  - name: v1
    labels: {{version: v1}}
    trafficPolicy:
      connectionPool: {{tcp: {{tcpKeepalive: {{time: 1m}}}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy:
      outlierDetection: {{consecutive5xxErrors: 2}}
"""
    result = translate(resources(SERVICE.split("---")[0], dr))
    assert not result.problems
    clusters = result.bootstrap.cluster_map()
    assert clusters[ALL].tcp_keepalive == TcpKeepalive(9, 7200.0, 75.0)
    assert clusters[V1].tcp_keepalive == TcpKeepalive(0, 60.0, 0.0)  # the subset's own pool replaces the host's
    assert clusters[V2].tcp_keepalive == TcpKeepalive(9, 7200.0, 75.0)  # inherited with the host's pool
    assert clusters[V2].outlier_detection == OutlierDetection(2, 30.0, 10)
    boot = parse_bootstrap(yaml.safe_load(yaml.safe_dump(to_bootstrap_tree(result.bootstrap), sort_keys=False)))
    assert boot.cluster_map()[ALL].tcp_keepalive == TcpKeepalive(9, 7200.0, 75.0)


@pytest.mark.parametrize(
    ("keepalive", "reason", "expected"),
    [("{time: soon}", "tcpKeepalive.time: 'soon' is not a duration", None),
     ("{probes: -1}", "tcpKeepalive.probes: -1 is out of range", None),
     ("{time: 1.5s}", "tcpKeepalive.time: time 1.5s: whole seconds are used (1s)", TcpKeepalive(0, 1.0, 0.0))],
)  # fmt: skip
def test_destination_rule_bad_tcp_keepalive_is_reported(keepalive: str, reason: str, expected: TcpKeepalive | None) -> None:
    dr = f"""
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: keepalive, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy: {{connectionPool: {{tcp: {{tcpKeepalive: {keepalive}}}}}}}
"""
    result = translate(resources(SERVICE.split("---")[0], dr))
    assert [reason in str(p) for p in result.problems] == [True], result.problems
    assert [p.fatal for p in result.problems] == [expected is None]  # a value that is not one rejects the rule
    assert result.bootstrap.cluster_map()[ALL].tcp_keepalive == expected


def test_no_metarouter_gives_a_default_route() -> None:
    result = translate(resources(SERVICE))
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert (rule.name, rule.match, rule.action.cluster) == ("default", (), ALL)


@pytest.mark.parametrize(
    ("routes", "reason"),
    [
        ("  - route: [{destination: {host: nowhere.example}}]", "unknown destination host 'nowhere.example'"),
        (f"  - route: [{{destination: {{host: {HOST}, subset: v9}}}}]", "unknown subset 'v9'"),
        (f"  - route: [{{destination: {{host: {HOST}, subset: v1}}, weight: 30}}, {{destination: {{host: {HOST}, subset: v2}}, weight: 30}}]", "weights sum to 60, not 100"),
        (f"  - match: {{attributes: {{method: {{regex: '('}}}}}}\n    route: [{{destination: {{host: {HOST}}}}}]", "bad regex"),
    ],
)
def test_invalid_metarouter_is_reported_and_skipped_the_rest_applies(routes: str, reason: str) -> None:
    result = translate(resources(SERVICE, router(routes)))
    (problem,) = result.errors
    assert problem.source == "input1.yaml" and problem.obj == "MetaRouter meta-dubbo/r" and reason in problem.reason
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert rule.name == "default"  # the service still gets its default route


def test_unknown_protocol_and_application_protocol() -> None:
    text = """
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: trpc-svc}
spec:
  hosts: [trpc.example]
  ports: [{number: 8000, name: tcp-metaprotocol-trpc-main, protocol: TCP}]
  endpoints: [{address: 127.0.0.1}]
"""
    result = translate(resources(text))
    assert not result.bootstrap.listeners and "unknown application protocol 'trpc'" in result.errors[0].reason
    ap = """
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {name: trpc}
spec: {protocol: trpc, codec: aeraki.meta_protocol.codec.trpc}
"""
    result = translate(resources(text, ap))
    assert not result.errors and result.bootstrap.listeners[0].codec == CodecRef("aeraki.meta_protocol.codec.trpc")


def test_local_rate_limit_and_mirror_are_translated() -> None:
    extra = """  localRateLimit:
    tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}
    conditions:
    - match: {attributes: {method: {exact: sayHello}}}
      tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 10s}"""
    routes = f"  - route: [{{destination: {{host: {HOST}}}}}]\n    mirror: {{host: {HOST}, subset: v1}}\n    mirrorPercentage: {{value: 10}}"
    result = translate(resources(SERVICE, router(routes, extra)))
    assert not result.problems
    lst = result.bootstrap.listeners[0]
    assert lst.local_rate_limit is not None
    assert lst.local_rate_limit.default == TokenBucket(100, 100, 1.0)
    (cond,) = lst.local_rate_limit.conditions
    assert cond.match == (AttributeMatcher("method", MatchKind.EXACT, "sayHello"),) and cond.bucket == TokenBucket(5, 5, 10.0)
    (rule,) = lst.route_config.routes  # type: ignore[union-attr]
    assert rule.mirrors == (MirrorPolicy(V1, 0.1),)


def test_global_rate_limit_and_its_service_cluster() -> None:
    rls = """
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: rate-limit-server, namespace: meta-dubbo}
spec:
  hosts: [rate-limit-server.meta-dubbo.svc.cluster.local]
  ports: [{number: 8081, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, ports: {grpc: 18081}}]
"""
    extra = """  globalRateLimit:
    match: {attributes: {method: {exact: sayHello}}}
    domain: dubbo
    requestTimeout: 50ms
    denyOnFail: true
    rateLimitService: outbound|8081||rate-limit-server.meta-dubbo.svc.cluster.local
    descriptors: [{property: method, descriptorKey: method}]"""
    result = translate(resources(SERVICE, rls, router(f"  - route: [{{destination: {{host: {HOST}}}}}]", extra)))
    assert not result.problems
    g = result.bootstrap.listeners[0].global_rate_limit
    assert g == GlobalRateLimit("dubbo", "outbound|8081||rate-limit-server.meta-dubbo.svc.cluster.local", (("method", "method"),),
                                (AttributeMatcher("method", MatchKind.EXACT, "sayHello"),), 0.05, True)  # fmt: skip
    assert [e.port for e in result.bootstrap.cluster_map()[g.service_cluster].endpoints] == [18081]
    bad = translate(resources(SERVICE, router(f"  - route: [{{destination: {{host: {HOST}}}}}]", "  globalRateLimit: {domain: x, rateLimitService: rls}")))
    assert "rateLimitService 'rls'" in bad.errors[0].reason and bad.bootstrap.listeners[0].global_rate_limit is None


def test_other_kinds_are_ignored_with_a_warning() -> None:
    result = translate(resources(SERVICE, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"))
    assert not result.errors and "unsupported kind 'ConfigMap'" in " ".join(p.reason for p in result.problems)


def test_translation_is_deterministic_and_runs_in_the_proxy(tmp_path: Path, run_proxy: object) -> None:
    """The translated demo, run by the proxy in front of two real providers: the split holds."""
    from metaprotocol_apps.dubbo import DubboConsumer, DubboProvider
    from tests.servers import free_port

    async def providers() -> list[DubboProvider]:
        out = []
        for version in ("v1", "v2"):
            p = DubboProvider(port=free_port(), name=version)
            p.expose("org.apache.dubbo.samples.basic.api.DemoService", "sayHello", lambda who, v=version: f"Hello {who}, response from provider-{v}")
            await p.start()
            out.append(p)
        return out

    loop = asyncio.new_event_loop()
    pv = loop.run_until_complete(providers())
    try:
        text = SERVICE.replace("20881", str(pv[0].port)).replace("20882", str(pv[1].port))
        (tmp_path / "svc.yaml").write_text(text)
        (tmp_path / "mr.yaml").write_text((ROOT / "examples/aeraki/dubbo-demo/metarouter.yaml").read_text())
        first = translate(load_directory(tmp_path), Options(port_offset=0))
        assert first.bootstrap == translate(load_directory(tmp_path)).bootstrap
        tree = to_bootstrap_tree(first.bootstrap)
        tree["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = 0
        rp = run_proxy(tree)  # type: ignore[operator]

        async def calls() -> Counter[str]:
            async with DubboConsumer("127.0.0.1", rp.port(f"{HOST}_20880")) as c:
                replies = await asyncio.gather(*(c.call("org.apache.dubbo.samples.basic.api.DemoService", "sayHello", [f"n{i}"], attachments={"foo": "bar"}) for i in range(1000)))
            return Counter(r.rsplit("-", 1)[1] for r in replies)

        split = loop.run_until_complete(calls())
        assert 150 <= split["v1"] <= 250 and split["v1"] + split["v2"] == 1000, split
    finally:
        for p in pv:
            loop.run_until_complete(p.close())
        loop.close()


names = st.text(alphabet="abcdefghij-_.|", min_size=1, max_size=12)
matchers = st.builds(
    AttributeMatcher,
    name=st.text(alphabet="abcdefgh-", min_size=1, max_size=8),
    kind=st.sampled_from(list(MatchKind)),
    value=st.sampled_from(["a", "b.*", "xyz", "true", "false"]),
    invert=st.booleans(),
    ignore_case=st.booleans(),
).filter(lambda m: m.kind is not MatchKind.PRESENT or (not m.ignore_case and m.value in ("true", "false")))
endpoints = st.builds(Endpoint, address=st.just("127.0.0.1"), port=st.integers(1, 65535), weight=st.integers(1, 5), labels=st.just((("version", "v1"),)))


@given(
    st.lists(st.tuples(names, st.lists(matchers, max_size=3), st.booleans(), st.floats(0.1, 60).map(lambda f: round(f, 3))), min_size=1, max_size=4),
    st.lists(endpoints, max_size=3),
    st.sampled_from(list(LbPolicy)),
)
def test_bootstrap_dump_roundtrips(rules: list[tuple[str, list[AttributeMatcher], bool, float]], eps: list[Endpoint], policy: LbPolicy) -> None:
    routes = tuple(
        RouteRule(name, tuple(ms), RouteAction(cluster="c", timeout=timeout) if single else RouteAction(weighted_clusters=(WeightedCluster("c", 3), WeightedCluster("d", 1)), hash_policy=("k",), subset=(("version", "v1"),), timeout=timeout),
                  request_mutation=(("a", "b"),))  # fmt: skip
        for name, ms, single, timeout in rules
    )
    routes = tuple(
        replace(r, mirrors=(MirrorPolicy("d", 0.125),), retry=RetryPolicy(2, frozenset({"error", "upstream_reset"}), 0.5), fault=FaultPolicy(0.25, 0.5, "over_limit", 0.125))
        if i % 2 else r
        for i, r in enumerate(routes)
    )
    limit = LocalRateLimit((RateLimitCondition((AttributeMatcher("method", MatchKind.EXACT, "a"),), TokenBucket(5, 5, 10.0)),), TokenBucket(100, 10, 1.0))
    log = (AccessLog("/tmp/x.log", (("d", "%DURATION%"), ("m", "%REQ(method)%"))),)  # in key order: a protobuf Struct is a map
    glimit = GlobalRateLimit("dubbo", "c", (("method", "method"),), (AttributeMatcher("interface", MatchKind.PREFIX, "org."),), 0.05, True)
    b = Bootstrap(
        (ListenerConfig("l", "127.0.0.1", 1, CodecRef("dubbo", {"payload_limit": 10}), "l", RouteConfig("r", routes), local_rate_limit=limit, access_log=log, global_rate_limit=glimit,
                        max_connections=len(eps)),),
        (ClusterConfig("c", tuple(eps), policy, 1.5, circuit_breakers=CircuitBreakers(100, 10), outlier_detection=OutlierDetection(3, 2.5, 50),
                       tcp_keepalive=TcpKeepalive(len(eps), 30.0, 0.0), health_check=HealthCheck(2.5, 0.5, 2, 1, HealthCheckKind.TCP)),
         ClusterConfig("d", (), LbPolicy.RING_HASH, hash_function="crc32a", hash_tag="{}", max_consecutive_timeouts=len(rules), health_check=HealthCheck(1.0, 0.25))),
        overload=OverloadConfig(len(eps) or None, len(rules), 1 << 20, 0.5),
    )
    assert parse_bootstrap(yaml.safe_load(yaml.safe_dump(to_bootstrap_tree(b), sort_keys=False))) == b


def test_cli_validate_and_translate(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "validate", str(ROOT / "examples/aeraki/dubbo-demo")], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 3 resource(s)")
    (tmp_path / "bad.yaml").write_text(SERVICE + "---\n" + router(f"  - route: [{{destination: {{host: {HOST}, subset: nope}}}}]"))
    bad = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "validate", str(tmp_path)], capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "bad.yaml:47: MetaRouter meta-dubbo/r: spec.routes[0].route[0].destination.subset: unknown subset 'nope'" in bad.stdout
    out = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "translate", str(ROOT / "examples/aeraki/dubbo-demo"), "--port-offset", "1000"], capture_output=True, text=True, check=True)
    boot = parse_bootstrap(yaml.safe_load(out.stdout))
    assert boot.listeners[0].port == 21880
