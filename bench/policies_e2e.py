"""End-to-end throughput with mirroring (10 %) and a local rate limit on, versus off, in one run.

    python bench/policies_e2e.py [--seconds 4]

Two proxies in front of the same canned Dubbo provider (a second canned provider is the mirror);
bench/loadgen.c drives each at 1 and 16 requests in flight on 50 connections.
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
from bench.dubbo_peers import our_bootstrap, request_hex  # noqa: E402
from bench.peers import build_loadgen, print_table, run_case  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mp-policies-"))
    loadgen = build_loadgen(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream, mirror, off, on = free_port(), free_port(), free_port(), free_port()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "bench/dubbo_canned.py"), str(p)], env=env) for p in (upstream, mirror)]
    plain = our_bootstrap(off, upstream)
    policed = our_bootstrap(on, upstream)
    f = policed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]  # type: ignore[index]
    f["meta_protocol_filters"] = [{"name": "aeraki.meta_protocol.filters.local_ratelimit", "config": {
        "stat_prefix": "dubbo", "token_bucket": {"max_tokens": 10**9, "tokens_per_fill": 10**9, "fill_interval": "1s"}}}]  # fmt: skip
    for route in f["route_config"]["routes"]:
        route["route"]["request_mirror_policies"] = [{"cluster": "mirror", "runtime_fraction": {"default_value": {"numerator": 10, "denominator": "HUNDRED"}}}]
    policed["static_resources"]["clusters"].append({"name": "mirror", "load_assignment": {"cluster_name": "mirror", "endpoints": [  # type: ignore[index]
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": mirror}}}}]}]}})  # fmt: skip
    for name, boot in (("off", plain), ("on", policed)):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(boot))
    proxies = {name: subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / f"{name}.yaml"), "--log-level", "WARNING"], env=env) for name in ("off", "on")}
    rows = []
    try:
        for p in (upstream, mirror, off, on):
            wait_port(p, 20)
        for depth in (1, 16):
            for name, port in (("policies off", off), ("mirror 10% + local rate limit", on)):
                proc = proxies["off" if port == off else "on"]
                result = run_case(loadgen, port, proc.pid, connections=50, depth=depth, seconds=args.seconds, request_hex=request_hex(), framing=(12, 4, 16), request_id=(4, 8))
                rows.append({"target": name, "in_flight": depth, **result})
    finally:
        for p in [*procs, *proxies.values()]:
            p.terminate()
            p.wait(10)
    print_table(rows, lambda r: r["target"] == "policies off", "vs off", ROOT / "bench/results/policies_e2e.json")


if __name__ == "__main__":
    main()
