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
    assert {f.name: f.number for f in route.fields} == {"name": 1, "match": 2, "route": 3, "request_mutation": 19, "response_mutation": 20}
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
