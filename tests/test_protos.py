"""The API in protos/: generated code is current, and names and numbers match Aeraki's."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import yaml
from google.protobuf import json_format

ROOT = Path(__file__).resolve().parents[1]


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("protos_generate", ROOT / "protos/generate.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_generated_code_is_current() -> None:
    gen = _generator()
    with tempfile.TemporaryDirectory() as tmp:
        gen.generate(Path(tmp))  # type: ignore[attr-defined]
        fresh = {p.relative_to(tmp): p.read_bytes() for p in Path(tmp).rglob("*_pb2.py*")}
    committed = {p.relative_to(ROOT / "protos"): p.read_bytes() for p in (ROOT / "protos").rglob("*_pb2.py*")}
    assert fresh.keys() == committed.keys()
    stale = [str(k) for k in fresh if fresh[k] != committed[k]]
    assert not stale, f"run scripts/genproto: stale {stale}"


def test_type_urls_and_field_numbers_match_aeraki() -> None:
    from metaprotocol_api.aeraki.meta_protocol_proxy.config.route.v1alpha import route_pb2
    from metaprotocol_api.aeraki.meta_protocol_proxy.v1alpha import meta_protocol_proxy_pb2
    from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1 import metaprotocol_pb2

    proxy = meta_protocol_proxy_pb2.MetaProtocolProxy.DESCRIPTOR
    assert proxy.full_name == "aeraki.meta_protocol_proxy.v1alpha.MetaProtocolProxy"
    assert {f.name: f.number for f in proxy.fields if f.number < 1000} == {
        "stat_prefix": 1, "application_protocol": 2, "rds": 3, "route_config": 4, "codec": 5,
        "meta_protocol_filters": 6, "tracing": 7, "access_log": 8, "idle_timeout": 11, "protocol": 12,
    }  # fmt: skip
    route = route_pb2.Route.DESCRIPTOR
    assert route.full_name == "aeraki.meta_protocol_proxy.config.route.v1alpha.Route"
    assert {f.name: f.number for f in route.fields if f.number < 1000} == {"name": 1, "match": 2, "route": 3, "request_mutation": 19, "response_mutation": 20}
    action = route_pb2.RouteAction.DESCRIPTOR
    assert {f.name: f.number for f in action.fields if f.number < 1000} == {"cluster": 1, "weighted_clusters": 2, "hash_policy": 10, "request_mirror_policies": 11}
    mr = metaprotocol_pb2.MetaRouter.DESCRIPTOR
    assert mr.full_name == "metaprotocol.aeraki.io.v1alpha1.MetaRouter"
    assert {f.name: f.number for f in mr.fields} == {"hosts": 1, "gateways": 2, "routes": 3, "local_rate_limit": 4, "global_rate_limit": 5, "export_to": 20}


def test_aeraki_metarouter_yaml_parses_in_camel_case() -> None:
    from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1 import metaprotocol_pb2

    spec = yaml.safe_load((ROOT / "examples/aeraki/dubbo-demo/metarouter.yaml").read_text())["spec"]
    spec["localRateLimit"] = {"tokenBucket": {"maxTokens": 5, "tokensPerFill": 5, "fillInterval": "10s"}}
    spec["routes"][0]["mirrorPercentage"] = {"value": 10.0}
    spec["routes"][0]["requestMutation"] = [{"key": "foo", "value": "bar"}]
    msg = json_format.ParseDict(spec, metaprotocol_pb2.MetaRouter())
    assert msg.routes[0].route[1].weight == 80 and msg.routes[0].route[1].destination.subset == "v2"
    assert msg.routes[0].match.attributes["method"].exact == "sayHello"
    assert msg.local_rate_limit.token_bucket.fill_interval.seconds == 10
    assert msg.routes[0].mirror_percentage.value == 10.0


def test_istio_names_and_field_numbers() -> None:
    """ServiceEntry and DestinationRule as istio/api declares them (networking/v1alpha3)."""
    from metaprotocol_api.istio.networking.v1alpha3 import destination_rule_pb2 as dr
    from metaprotocol_api.istio.networking.v1alpha3 import service_entry_pb2 as se
    from metaprotocol_api.istio.networking.v1alpha3 import workload_entry_pb2 as we

    def numbers(d: object) -> dict[str, int]:
        return {f.name: f.number for f in d.fields}  # type: ignore[attr-defined]

    assert se.ServiceEntry.DESCRIPTOR.full_name == "istio.networking.v1alpha3.ServiceEntry"
    assert numbers(se.ServiceEntry.DESCRIPTOR) == {
        "hosts": 1, "addresses": 2, "ports": 3, "location": 4, "resolution": 5, "endpoints": 6, "workload_selector": 9, "export_to": 7, "subject_alt_names": 8,
    }  # fmt: skip
    assert numbers(se.ServicePort.DESCRIPTOR) == {"number": 1, "protocol": 2, "name": 3, "target_port": 4}
    assert numbers(we.WorkloadEntry.DESCRIPTOR) == {"address": 1, "ports": 2, "labels": 3, "network": 4, "locality": 5, "weight": 6, "service_account": 7}
    assert dr.DestinationRule.DESCRIPTOR.full_name == "istio.networking.v1alpha3.DestinationRule"
    assert numbers(dr.DestinationRule.DESCRIPTOR) == {"host": 1, "traffic_policy": 2, "subsets": 3, "export_to": 4, "workload_selector": 5}
    assert numbers(dr.TrafficPolicy.DESCRIPTOR) == {
        "load_balancer": 1, "connection_pool": 2, "outlier_detection": 3, "tls": 4, "port_level_settings": 5, "tunnel": 6, "proxy_protocol": 7,
    }  # fmt: skip
    assert numbers(dr.Subset.DESCRIPTOR) == {"name": 1, "labels": 2, "traffic_policy": 3}
    lb = dr.LoadBalancerSettings
    assert numbers(lb.DESCRIPTOR) == {"simple": 1, "consistent_hash": 2, "locality_lb_setting": 3, "warmup_duration_secs": 4, "warmup": 5}
    assert numbers(lb.ConsistentHashLB.DESCRIPTOR) == {
        "http_header_name": 1, "http_cookie": 2, "use_source_ip": 3, "http_query_parameter_name": 5, "ring_hash": 6, "maglev": 7, "minimum_ring_size": 4,
    }  # fmt: skip
    assert dict(lb.SimpleLB.items()) == {"UNSPECIFIED": 0, "LEAST_CONN": 1, "RANDOM": 2, "PASSTHROUGH": 3, "ROUND_ROBIN": 4, "LEAST_REQUEST": 5}
    pool = dr.ConnectionPoolSettings
    assert numbers(pool.TCPSettings.DESCRIPTOR) == {"max_connections": 1, "connect_timeout": 2, "tcp_keepalive": 3, "max_connection_duration": 4, "idle_timeout": 5}
    assert numbers(pool.HTTPSettings.DESCRIPTOR) == {
        "http1_max_pending_requests": 1, "http2_max_requests": 2, "max_requests_per_connection": 3, "max_retries": 4, "idle_timeout": 5,
        "h2_upgrade_policy": 6, "use_client_protocol": 7, "max_concurrent_streams": 8,
    }  # fmt: skip
    assert numbers(dr.OutlierDetection.DESCRIPTOR) == {
        "consecutive_errors": 1, "interval": 2, "base_ejection_time": 3, "max_ejection_percent": 4, "min_health_percent": 5,
        "consecutive_gateway_errors": 6, "consecutive_5xx_errors": 7, "split_external_local_origin_errors": 8, "consecutive_local_origin_failures": 9,
    }  # fmt: skip
    assert numbers(dr.LocalityLoadBalancerSetting.DESCRIPTOR) == {"distribute": 1, "failover": 2, "enabled": 3, "failover_priority": 4}
    assert {f.name: f.json_name for f in dr.OutlierDetection.DESCRIPTOR.fields}["consecutive_5xx_errors"] == "consecutive5xxErrors"
