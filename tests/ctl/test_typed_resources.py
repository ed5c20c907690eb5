"""aeraki-ctl's typed resources and its diagnostics (issue 13): every problem at once, with a file,
a line, the object and a field path; exact durations; nothing escapes the translation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aeraki_ctl import translate as translate_module
from aeraki_ctl.resources import ResourceSet, load_text, parse_duration
from aeraki_ctl.translate import translate
from metaprotocol.config.model import LbPolicy, MatchKind
from metaprotocol.xds import convert

ROOT = Path(__file__).resolve().parents[2]
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
ALL, V1, V2 = (f"outbound|20880|{s}|{HOST}" for s in ("", "v1", "v2"))
SERVICE = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text()
SE_ONLY = SERVICE.split("---")[0]


def load(*texts: str) -> ResourceSet:
    out = ResourceSet()
    for i, text in enumerate(texts):
        load_text(text, f"input{i}.yaml", out)
    return out


def dr(policy: str, subsets: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: d, namespace: meta-dubbo}}
spec:
  host: {HOST}
  trafficPolicy:
{policy}
{subsets}"""


def mr(routes: str) -> str:
    return f"""
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: r, namespace: meta-dubbo}}
spec:
  hosts: [{HOST}]
  routes:
{routes}"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("1.5s", 1.5), ("0", 0.0), ("1h2m3.5s", 3723.5), ("1500us", 0.0015), ("10ns", 1e-8)],
)
def test_go_durations_are_exact(text: str, seconds: float) -> None:
    d = parse_duration(text)
    assert d.seconds + d.nanos / 1e9 == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", ["", "1", "1x", "s", "-1s", "1m30", "1.2.3s", "ms"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration|negative"):
        parse_duration(text)


def test_base_ejection_time_in_minutes_and_seconds_is_90_seconds() -> None:
    result = translate(load(SE_ONLY, dr("    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 1m30s}")))
    assert not result.errors
    outlier = result.bootstrap.cluster_map()[ALL].outlier_detection
    assert outlier is not None and outlier.base_ejection_time == 90.0 and outlier.consecutive_errors == 3


def test_ill_typed_endpoint_port_and_labels_are_reported_with_path_and_line() -> None:
    text = SE_ONLY.replace("ports: {tcp-metaprotocol-dubbo: 20881}", "ports: {tcp-metaprotocol-dubbo: 2088x}").replace("labels: {version: v2}", "labels: [v2]")
    result = translate(load(text))
    problems = {(p.path, p.line) for p in result.errors}
    assert ("spec.endpoints[0].ports.tcp-metaprotocol-dubbo", 20) in problems
    assert ("spec.endpoints[1].labels", 24) in problems
    assert all(p.obj == "ServiceEntry meta-dubbo/dubbo-demoservice" for p in result.errors)
    assert not result.bootstrap.listeners  # rejected, never half-served


def test_misspelt_weight_is_an_unknown_field_not_a_bad_sum() -> None:
    routes = f"""  - route:
    - {{destination: {{host: {HOST}, subset: v1}}, wieght: 20}}
    - {{destination: {{host: {HOST}, subset: v2}}, weight: 80}}"""
    result = translate(load(SERVICE, mr(routes)))
    (problem,) = result.errors
    assert problem.path == "spec.routes[0].route[0].wieght" and "unknown field 'wieght' (did you mean 'weight'?)" in problem.reason
    assert "input1.yaml:9: MetaRouter meta-dubbo/r: spec.routes[0].route[0].wieght" in str(problem)


def test_every_problem_of_a_metarouter_at_once() -> None:
    routes = f"""  - match: {{attributes: {{method: {{regex: "("}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v9}}}}]
  - route:
    - {{destination: {{host: nowhere.example}}, weight: 50}}
    - {{destination: {{host: {HOST}}}, weight: 30}}"""
    result = translate(load(SERVICE, mr(routes)))
    paths = [p.path for p in result.errors]
    assert paths == ["spec.routes[0].match.attributes.method.regex", "spec.routes[0].route[0].destination.subset", "spec.routes[1].route[0].destination.host"]
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert rule.name == "default"


def test_subset_consistent_hash_is_honoured_on_routes_to_that_subset() -> None:
    subsets = """  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: UserId}}}
  - name: v2
    labels: {version: v2}"""
    routes = f"""  - name: sticky
    match: {{attributes: {{method: {{exact: sayHello}}}}}}
    route: [{{destination: {{host: {HOST}, subset: v1}}}}]
  - name: other
    route: [{{destination: {{host: {HOST}, subset: v2}}}}]"""
    result = translate(load(SE_ONLY, dr("    outlierDetection: {consecutive5xxErrors: 5}", subsets), mr(routes)))
    assert not result.errors, result.problems
    sticky, other = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert sticky.action.cluster == V1 and sticky.action.hash_policy == ("userid",)
    assert other.action.cluster == V2 and other.action.hash_policy == ()
    clusters = result.bootstrap.cluster_map()
    assert clusters[V1].lb_policy is LbPolicy.RING_HASH and clusters[V2].lb_policy is LbPolicy.ROUND_ROBIN


def test_subset_policy_without_load_balancer_inherits_the_hosts_hash() -> None:
    subsets = """  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {outlierDetection: {consecutive5xxErrors: 2}}"""
    routes = f"  - route: [{{destination: {{host: {HOST}, subset: v1}}}}]"
    result = translate(load(SE_ONLY, dr("    loadBalancer: {consistentHash: {httpHeaderName: UserId, ringHash: {minimumRingSize: 4096}}}", subsets), mr(routes)))
    assert not result.errors, result.problems
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert rule.action.hash_policy == ("userid",)
    v1 = result.bootstrap.cluster_map()[V1]
    assert v1.lb_policy is LbPolicy.RING_HASH and v1.ring_min_size == 4096


def test_connect_timeout_and_idle_timeout_are_applied_and_the_rest_warned() -> None:
    policy = """    connectionPool:
      tcp: {connectTimeout: 250ms, idleTimeout: 1h}
      http: {idleTimeout: 30s}
    loadBalancer:
      localityLbSetting: {enabled: true}"""
    result = translate(load(SE_ONLY, dr(policy)))
    assert not result.errors
    assert result.bootstrap.cluster_map()[ALL].connect_timeout == 0.25
    assert result.bootstrap.listeners[0].idle_timeout == 3600.0
    warnings = {p.path: p.reason for p in result.problems if not p.fatal}
    assert "not supported" in warnings["spec.trafficPolicy.connectionPool.http.idleTimeout"]
    assert "localityLbSetting is not supported" in warnings["spec.trafficPolicy.loadBalancer.localityLbSetting"]


def test_metarouter_for_no_service_is_an_error() -> None:
    result = translate(load(SERVICE, mr(f"  - route: [{{destination: {{host: {HOST}}}}}]").replace(f"hosts: [{HOST}]", "hosts: [nowhere.example]")))
    (problem,) = result.errors
    assert problem.path == "spec.hosts[0]" and "not a MetaProtocol service" in problem.reason


def test_an_exception_while_translating_one_object_is_a_problem_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(translate_module, "_local_rate_limit", boom)
    text = mr(f"  - route: [{{destination: {{host: {HOST}}}}}]") + "\n  localRateLimit: {tokenBucket: {maxTokens: 5, fillInterval: 1s}}"
    result = translate(load(SERVICE, text))
    (problem,) = result.errors
    assert problem.obj == "MetaRouter meta-dubbo/r" and "RuntimeError: boom" in problem.reason
    assert result.bootstrap.listeners[0].route_config.routes[0].name == "default"  # type: ignore[union-attr]


REDIS = """
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: ApplicationProtocol
metadata: {name: redis}
spec: {protocol: redis, codec: redis}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache, namespace: ns}
spec:
  hosts: [cache.example]
  ports: [{number: 6379, name: tcp-metaprotocol-redis}]
  endpoints: [{address: 127.0.0.1, ports: {tcp-metaprotocol-redis: 16379}}]
---
apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {name: cache, namespace: ns}
spec:
  hosts: [cache.example]
  routes:
  - route: [{destination: {host: cache.example}}]
    requestMutation: [{key: foo, value: bar}]
"""


def test_a_mutation_on_a_codec_that_cannot_carry_it_is_rejected() -> None:
    result = translate(load(REDIS))
    (problem,) = result.errors
    assert problem.obj == "MetaRouter ns/cache" and problem.path == "spec.routes[0].requestMutation"
    assert "the redis codec cannot carry request/response mutations" in problem.reason
    (rule,) = result.bootstrap.listeners[0].route_config.routes  # type: ignore[union-attr]
    assert rule.name == "default" and not rule.request_mutation  # never served


def test_listener_protocol_name_is_the_protocol_and_regex_is_the_current_form() -> None:
    routes = f"""  - match: {{attributes: {{method: {{regex: "say.*"}}}}}}
    route: [{{destination: {{host: {HOST}}}}}]"""
    result = translate(load(SERVICE, mr(routes)))
    lst = result.bootstrap.listeners[0]
    assert lst.protocol == "dubbo" and lst.codec.name == "aeraki.meta_protocol.codec.dubbo"
    listener = convert.listener_to_xds(lst)
    assert convert.listener_from_xds(listener).protocol == "dubbo"
    assert b"dubbo" in listener.filter_chains[0].filters[0].typed_config.value
    rule = lst.route_config.routes[0]  # type: ignore[union-attr]
    assert rule.match[0].kind is MatchKind.REGEX
    matcher = convert.header_matcher(rule.match[0])
    assert matcher.string_match.safe_regex.regex == "say.*" and not matcher.string_match.safe_regex.HasField("google_re2")


def test_unparseable_file_is_reported_with_its_line() -> None:
    out = load("apiVersion: v1\nkind: [unclosed\n")
    (problem,) = out.problems
    assert problem.line == 3 and str(problem).startswith("input0.yaml:3: not valid YAML")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", *args], capture_output=True, text=True, check=False)


def test_validate_lists_every_problem_and_translate_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(SE_ONLY)
    routes = f"""  - route:
    - {{destination: {{host: {HOST}, subset: v1}}, wieght: 20}}
    - {{destination: {{host: {HOST}, subset: v9}}, weight: 80}}"""
    (tmp_path / "mr.yaml").write_text(mr(routes))
    (tmp_path / "dr.yaml").write_text(dr("    connectionPool: {http: {idleTimeout: 30s}}", "  subsets: [{name: v1, labels: {version: v1}}]"))
    out = _cli("validate", str(tmp_path))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert f"error: {tmp_path}/mr.yaml:9: MetaRouter meta-dubbo/r: spec.routes[0].route[0].wieght: unknown field 'wieght' (did you mean 'weight'?)" in lines
    assert any("mr.yaml:10: MetaRouter meta-dubbo/r: spec.routes[0].route[1].destination.subset: unknown subset 'v9'" in line for line in lines)
    assert any(line.startswith("warning: ") and "http.idleTimeout" in line for line in lines)
    assert lines[-1].startswith("2 error(s) in 1 object(s)")
    translated = _cli("translate", str(tmp_path))
    assert translated.returncode == 1 and "listeners" in translated.stdout


# -- property: corrupting one object leaves every other object's translation unchanged ---------------


def _objects(i: int) -> list[str]:
    host, port = f"svc{i}.example", 20000 + 10 * i
    return [
        f"""apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: se{i}, namespace: ns}}
spec:
  hosts: [{host}]
  ports: [{{number: {port}, name: tcp-metaprotocol-dubbo}}]
  endpoints:
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {port + 1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{tcp-metaprotocol-dubbo: {port + 2}}}, labels: {{version: v2}}}}
""",
        f"""apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr{i}, namespace: ns}}
spec:
  host: {host}
  trafficPolicy: {{outlierDetection: {{baseEjectionTime: 1m{i}s}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}, trafficPolicy: {{loadBalancer: {{consistentHash: {{httpHeaderName: user}}}}}}}}
  - {{name: v2, labels: {{version: v2}}}}
""",
        f"""apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{name: mr{i}, namespace: ns}}
spec:
  hosts: [{host}]
  routes:
  - name: split
    match: {{attributes: {{method: {{exact: sayHello}}}}}}
    route:
    - {{destination: {{host: {host}, subset: v1}}, weight: {20 + i}}}
    - {{destination: {{host: {host}, subset: v2}}, weight: {80 - i}}}
""",
    ]


_CORRUPTIONS = [
    lambda t: t.replace("spec:", "spec: 7\nx:", 1),  # spec not a mapping
    lambda t: t.replace("weight:", "wieght:", 1),  # a misspelt field
    lambda t: t.replace("number: ", "number: x", 1),  # an ill-typed value
    lambda t: t.replace("1m", "1y", 1),  # a bad duration
    lambda t: t.replace("subset: v2", "subset: v9", 1),  # an unknown subset
    lambda t: t.replace("exact: sayHello", "regex: '('", 1),  # a bad regex
    lambda t: t.replace("hosts: [", "hosts: [x", 1) if "kind: MetaRouter" in t else t.replace("host: ", "host: x", 1),  # a host that is no service
    lambda t: t[: len(t) // 2],  # half written
    lambda t: t + "  routes: {}\n",  # a duplicate key of the wrong type
]


def _restricted(result: translate_module.Translation, host: str) -> tuple[object, ...]:
    return (
        tuple(lst for lst in result.bootstrap.listeners if not lst.name.startswith(host)),
        tuple(c for c in result.bootstrap.clusters if not c.name.endswith(f"|{host}")),
    )


@settings(max_examples=60, deadline=None)
@given(services=st.integers(1, 4), victim=st.integers(0, 11), corruption=st.integers(0, len(_CORRUPTIONS) - 1), data=st.data())
def test_a_corrupt_object_changes_nothing_of_the_others(services: int, victim: int, corruption: int, data: st.DataObject) -> None:
    texts = [t for i in range(services) for t in _objects(i)]
    victim %= len(texts)
    host = f"svc{victim // 3}.example"
    bad = list(texts)
    bad[victim] = _CORRUPTIONS[corruption](texts[victim])
    garbage = data.draw(st.text(max_size=20))
    if data.draw(st.booleans()):
        bad[victim] += garbage
    before = translate(load(*texts))
    assert not before.errors, before.problems
    after = translate(load(*bad))
    assert _restricted(after, host) == _restricted(before, host)
    # Errors are the victim's, or of objects of the same service (which lose what they refer to).
    assert all(p.source == f"input{victim}.yaml" or not p.fatal or host in str(p) for p in after.problems), after.problems
