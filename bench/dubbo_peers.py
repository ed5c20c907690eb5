"""Dubbo end to end: direct vs our proxy vs Envoy dubbo_proxy / generic_proxy, in one run.

    python bench/dubbo_peers.py [--seconds 5] [--connections 50]

A canned provider (bench/dubbo_canned.py) answers; bench/loadgen.c (built with gcc) keeps 1 or
16 requests in flight on each of 50 connections. Our proxy routes with full metadata (interface,
method and an attachment matcher, as the traffic-splitting demo does). Reports requests/s,
p50/p99, the proxy's CPU microseconds per request (from /proc), and ratios against Envoy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peers import build_loadgen, print_table, run_case  # noqa: E402
from metaprotocol_codecs.dubbo import wire  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402

IFACE = "org.apache.dubbo.samples.basic.api.DemoService"


def request_hex() -> str:
    inv = wire.Invocation(IFACE, "sayHello", "Ljava/lang/String;", ["world"],
                          {"path": IFACE, "interface": IFACE, "version": "1.0.0", "timeout": 3000, "foo": "bar"}, "1.0.0")  # fmt: skip
    return wire.build_request(1, inv).hex()


def our_bootstrap(port: int, upstream: int) -> dict[str, object]:
    routes = [
        {"name": "by-attachment", "match": {"metadata": [{"name": "interface", "exact_match": IFACE}, {"name": "method", "exact_match": "sayHello"}, {"name": "foo", "exact_match": "bar"}]},
         "route": {"cluster": "provider"}},
        {"name": "default", "route": {"cluster": "provider"}},
    ]  # fmt: skip
    return {"static_resources": {
        "listeners": [{"name": "dubbo", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
                           "stat_prefix": "dubbo", "codec": {"name": "dubbo"}, "route_config": {"name": "r", "routes": routes}}}]}]}],
        "clusters": [{"name": "provider", "connect_timeout": "1s", "load_assignment": {"cluster_name": "provider", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}],
    }}  # fmt: skip


def envoy_config(ports: dict[str, int], upstream: int) -> dict[str, object]:
    cfg = yaml.safe_load((ROOT.parent / "shared/reference/peers/envoy_dubbo.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    listeners = cfg["static_resources"]["listeners"]
    listeners[0]["address"]["socket_address"]["port_value"] = ports["envoy_dubbo_proxy"]
    listeners[1]["address"]["socket_address"]["port_value"] = ports["envoy_generic_proxy"]
    listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["multiple_route_config"]["route_config"][0]["interface"] = IFACE
    listeners[1]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["hosts"] = [IFACE]
    ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    ep["address"]["socket_address"]["port_value"] = upstream
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mp-dubbo-bench-"))
    loadgen = build_loadgen(tmp)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = free_port()
    procs["provider"] = subprocess.Popen([sys.executable, str(ROOT / "bench/dubbo_canned.py"), str(upstream)], env=env)
    ours = free_port()
    (tmp / "ours.yaml").write_text(yaml.safe_dump(our_bootstrap(ours, upstream)))
    procs["metaprotocol"] = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / "ours.yaml"), "--log-level", "WARNING"], env=env)
    eports = {"admin": free_port(), "envoy_dubbo_proxy": free_port(), "envoy_generic_proxy": free_port()}
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(envoy_config(eports, upstream)))
    envoy = str(Path(sys.executable).parent / "envoy")
    procs["envoy"] = subprocess.Popen([envoy, "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets = {"direct": (upstream, None), "metaprotocol": (ours, procs["metaprotocol"]),
               "envoy_dubbo_proxy": (eports["envoy_dubbo_proxy"], procs["envoy"]), "envoy_generic_proxy": (eports["envoy_generic_proxy"], procs["envoy"])}  # fmt: skip
    rows = []
    try:
        for port, _ in targets.values():
            wait_port(port, 30)
        hexreq = request_hex()
        for depth in (1, 16):
            for name, (port, proc) in targets.items():
                result = run_case(loadgen, port, proc.pid if proc else None, connections=args.connections, depth=depth, seconds=args.seconds,
                                  request_hex=hexreq, framing=(12, 4, 16), request_id=(4, 8))  # fmt: skip
                rows.append({"target": name, "in_flight": depth, **result})
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(10)
    print_table(rows, lambda r: r["target"] == "envoy_dubbo_proxy", "vs envoy dubbo", ROOT / "bench/results/dubbo_peers.json")


if __name__ == "__main__":
    main()
