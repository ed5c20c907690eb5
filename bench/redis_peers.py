"""Redis through our proxy vs Envoy redis_proxy vs twemproxy vs direct, in one run.

    python bench/redis_peers.py [--requests 200000] [--repeat 1]

Runs ``redis-benchmark -t get,set -n N -c 50 -P {1,16}`` against each target (the peers are set up
as in ../shared/reference/peers/), reads each proxy's CPU time from /proc to report CPU
microseconds per request, and prints the throughput ratios against Envoy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peers import cpu_seconds  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402

def start_targets(tmp: Path, redis_port: int) -> dict[str, tuple[int, subprocess.Popen[bytes] | None]]:
    targets: dict[str, tuple[int, subprocess.Popen[bytes] | None]] = {"direct": (redis_port, None)}
    ours = free_port()
    boot = {
        "static_resources": {
            "listeners": [{
                "name": "redis",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": ours}},
                "filter_chains": [{"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
                    "stat_prefix": "redis", "codec": {"name": "redis"},
                    "route_config": {"name": "r", "routes": [{"route": {"cluster": "redis"}}]}}}]}],
            }],
            "clusters": [{"name": "redis", "connect_timeout": "1s", "load_assignment": {"cluster_name": "redis", "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": redis_port}}}}]}]}}],
        }
    }  # fmt: skip
    (tmp / "ours.yaml").write_text(yaml.safe_dump(boot))
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / "ours.yaml"), "--log-level", "WARNING"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    targets["metaprotocol"] = (ours, proc)
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if Path(envoy).exists():
        port, admin = free_port(), free_port()
        cfg = yaml.safe_load((ROOT.parent / "shared/reference/peers/envoy_redis.yaml").read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = admin
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = port
        ep = cfg["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        ep["endpoint"]["address"]["socket_address"]["port_value"] = redis_port
        (tmp / "envoy.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([envoy, "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "--log-level", "error"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        targets["envoy"] = (port, proc)
    if shutil.which("nutcracker"):
        port = free_port()
        conf = {"alpha": {"listen": f"127.0.0.1:{port}", "hash": "fnv1a_64", "distribution": "ketama", "redis": True,
                          "preconnect": True, "auto_eject_hosts": False, "server_connections": 1,
                          "servers": [f"127.0.0.1:{redis_port}:1"]}}  # fmt: skip
        (tmp / "nutcracker.yml").write_text(yaml.safe_dump(conf))
        proc = subprocess.Popen(["nutcracker", "-c", str(tmp / "nutcracker.yml"), "-o", str(tmp / "nc.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        targets["twemproxy"] = (port, proc)
    for port, _ in targets.values():
        wait_port(port)
    return targets


def redis_benchmark(port: int, requests: int, pipeline: int) -> dict[str, float]:
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "get,set", "-n", str(requests), "-c", "50", "-P", str(pipeline), "--csv"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout  # fmt: skip
    result = {}
    for line in out.splitlines()[1:]:
        cells = [c.strip('"') for c in line.split(",")]
        result[cells[0]] = float(cells[1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mp-bench-"))
    redis_port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    wait_port(redis_port)
    targets = start_targets(tmp, redis_port)
    rows = []
    try:
        time.sleep(1)
        for pipeline in (1, 16):
            for name, (port, proc) in targets.items():
                best: dict[str, float] = {}
                cpu = 0.0
                for _ in range(args.repeat):
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    got = redis_benchmark(port, args.requests, pipeline)
                    cpu = (cpu_seconds(proc.pid) - before) if proc else 0.0
                    for k, v in got.items():
                        best[k] = max(best.get(k, 0.0), v)
                us_per_req = cpu / (2 * args.requests) * 1e6 if proc else 0.0
                rows.append({"target": name, "pipeline": pipeline, "GET": best.get("GET", 0), "SET": best.get("SET", 0), "cpu_us_per_request": round(us_per_req, 2)})
    finally:
        for _, proc in targets.values():
            if proc:
                proc.terminate()
                proc.wait(10)
        server.terminate()
        server.wait(10)
    print(f"{'target':<14}{'-P':>4}{'GET ops/s':>12}{'SET ops/s':>12}{'CPU us/req':>12}{'GET vs envoy':>14}")
    for row in rows:
        envoy = next((r for r in rows if r["target"] == "envoy" and r["pipeline"] == row["pipeline"]), None)
        ratio = f"{row['GET'] / envoy['GET']:.2f}x" if envoy and envoy["GET"] else "-"
        print(f"{row['target']:<14}{row['pipeline']:>4}{row['GET']:>12.0f}{row['SET']:>12.0f}{row['cpu_us_per_request']:>12}{ratio:>14}")
    (ROOT / "bench/results/redis_peers.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
