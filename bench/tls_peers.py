"""TLS termination + origination for Redis: our proxy vs Envoy redis_proxy doing the same, in one run.

    python bench/tls_peers.py [--requests 200000] [--repeat 3] [--handshake-seconds 5]

Both proxies terminate mutual TLS from ``redis-benchmark --tls`` (client certificate, SAN-checked)
and originate mutual TLS to a redis-server that speaks TLS only (``--tls-port``, client
certificates required); certificates come from a test CA (tests/tls_certs.py). Plaintext runs of
both are included for the cost of TLS. Reports GET/SET ops/s at ``-P 1`` and ``-P 16`` (50
clients; medians of interleaved repetitions), CPU microseconds per request (from /proc), the ratio
against Envoy, a CPU calibration at the start and the end, and full mutual-TLS handshakes
(``openssl s_time -new``, one client at a time) per wall-clock second with the proxy's CPU per
handshake (s_time's own printed rate is per second of its user CPU, not of the wall clock).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peers import cpu_seconds  # noqa: E402
from bench.representative.run import calibrate  # noqa: E402
from bench.representative.targets import build_c  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402
from tests.tls_certs import CertAuthority  # noqa: E402

CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"
PROXY_ID = "spiffe://cluster.local/ns/mesh/sa/proxy"
REDIS_DNS = "redis.local"


def _tls_socket(kind: str, certs: dict[str, str], *, require: bool = False, sni: str = "", san: tuple[str, str] | None = None) -> dict[str, object]:
    common: dict[str, object] = {
        "tls_certificates": [{"certificate_chain": {"filename": certs["proxy_crt"]}, "private_key": {"filename": certs["proxy_key"]}}],
        "validation_context": {"trusted_ca": {"filename": certs["ca"]}},
    }
    if san is not None:
        common["validation_context"]["match_typed_subject_alt_names"] = [{"san_type": san[0], "matcher": {"exact": san[1]}}]  # type: ignore[index]
    ctx: dict[str, object] = {"@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}", "common_tls_context": common}
    if require:
        ctx["require_client_certificate"] = True
    if sni:
        ctx["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def start_targets(tmp: Path, plain_redis: int, tls_redis: int, certs: dict[str, str]) -> dict[str, tuple[int, subprocess.Popen[bytes] | None, bool]]:
    """name -> (port, process, speaks TLS)."""
    targets: dict[str, tuple[int, subprocess.Popen[bytes] | None, bool]] = {"direct": (plain_redis, None, False), "direct-tls": (tls_redis, None, True)}
    down = _tls_socket("DownstreamTlsContext", certs, require=True, san=("URI", CLIENT_ID))
    up = _tls_socket("UpstreamTlsContext", certs, sni=REDIS_DNS, san=("DNS", REDIS_DNS))
    for tls in (False, True):
        port = free_port()
        chain: dict[str, object] = {"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
            "stat_prefix": "redis", "codec": {"name": "redis"}, "route_config": {"name": "r", "routes": [{"route": {"cluster": "redis"}}]}}}]}
        cluster: dict[str, object] = {"name": "redis", "connect_timeout": "1s", "load_assignment": {"cluster_name": "redis", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": tls_redis if tls else plain_redis}}}}]}]}}
        if tls:
            chain["transport_socket"] = down
            cluster["transport_socket"] = up
        boot = {"static_resources": {"listeners": [{"name": "redis", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                                                    "filter_chains": [chain]}], "clusters": [cluster]}}  # fmt: skip
        name = "metaprotocol-tls" if tls else "metaprotocol"
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(boot))
        proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(tmp / f"{name}.yaml"), "--log-level", "WARNING"],
                                env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        targets[name] = (port, proc, tls)
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if Path(envoy).exists():
        for tls in (False, True):
            port, admin = free_port(), free_port()
            cfg = yaml.safe_load((ROOT.parent / "shared/reference/peers/envoy_redis.yaml").read_text())
            cfg["admin"]["address"]["socket_address"]["port_value"] = admin
            lst = cfg["static_resources"]["listeners"][0]
            lst["address"]["socket_address"]["port_value"] = port
            c = cfg["static_resources"]["clusters"][0]
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = tls_redis if tls else plain_redis
            if tls:
                lst["filter_chains"][0]["transport_socket"] = down
                c["transport_socket"] = up
            name = "envoy-tls" if tls else "envoy"
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            proc = subprocess.Popen([envoy, "-c", str(tmp / f"{name}.yaml"), "--concurrency", "1", "--log-level", "error", "--base-id", str(free_port())],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            targets[name] = (port, proc, tls)
    for port, _, _ in targets.values():
        wait_port(port, 30)
    return targets


def redis_benchmark(port: int, requests: int, pipeline: int, tls: bool, certs: dict[str, str]) -> dict[str, float]:
    args = ["redis-benchmark", "-p", str(port), "-t", "get,set", "-n", str(requests), "-c", "50", "-P", str(pipeline), "--csv"]
    if tls:
        args += ["--tls", "--sni", REDIS_DNS, "--cacert", certs["ca"], "--cert", certs["client_crt"], "--key", certs["client_key"]]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600).stdout
    result = {}
    for line in out.splitlines()[1:]:
        cells = [c.strip('"') for c in line.split(",")]
        result[cells[0]] = float(cells[1])
    return result


def handshake_count(port: int, seconds: int, certs: dict[str, str]) -> int:
    """Full mutual-TLS handshakes made by ``openssl s_time -new`` (it runs until its own *user
    CPU* reaches ``seconds``: its printed rate is per client user second, not per wall-clock
    second, so the caller divides by the wall-clock time it measures)."""
    out = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds), "-CAfile", certs["ca"],
         "-cert", certs["client_crt"], "-key", certs["client_key"]],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout  # fmt: skip
    m = re.search(r"(\d+) connections in ([\d.]+)s", out)
    return int(m.group(1)) if m else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; the medians are reported")
    parser.add_argument("--handshake-seconds", type=int, default=5)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mp-bench-tls-"))
    ca = CertAuthority()
    certs = {"ca": ca.write_ca(tmp)}
    certs["proxy_crt"], certs["proxy_key"] = ca.write(tmp, "proxy", "proxy", uris=(PROXY_ID,), dns=(REDIS_DNS,), ips=("127.0.0.1",))
    certs["client_crt"], certs["client_key"] = ca.write(tmp, "client", "client", uris=(CLIENT_ID,))
    plain_redis, tls_redis = free_port(), free_port()
    servers = [
        subprocess.Popen(["redis-server", "--port", str(plain_redis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL),
        subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(tls_redis), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--tls-cert-file", certs["proxy_crt"], "--tls-key-file", certs["proxy_key"], "--tls-ca-cert-file", certs["ca"],
                          "--tls-auth-clients", "yes"], stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    wait_port(plain_redis)
    wait_port(tls_redis)
    targets = start_targets(tmp, plain_redis, tls_redis, certs)
    rows = []
    exe = build_c(tmp)
    calibration = {"start": calibrate(exe["calibrate"])}
    try:
        time.sleep(1)
        # Repetitions interleaved (the targets' order rotated each time): noise from other work on
        # the machine spreads over every target instead of favouring the first ones.
        samples: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        names = list(targets)
        for rep in range(args.repeat):
            order = names[rep % len(names):] + names[: rep % len(names)]
            for pipeline in (1, 16):
                for name in order:
                    port, proc, tls = targets[name]
                    before = cpu_seconds(proc.pid) if proc else 0.0
                    got = redis_benchmark(port, args.requests, pipeline, tls, certs)
                    cpu = (cpu_seconds(proc.pid) - before) if proc else 0.0
                    samples.setdefault((name, pipeline), []).append((got.get("GET", 0.0), got.get("SET", 0.0), cpu / (2 * args.requests) * 1e6))
        for pipeline in (1, 16):
            for name in names:
                runs = samples[(name, pipeline)]
                gets, sets, cpus = ([r[i] for r in runs] for i in range(3))
                rows.append({"target": name, "pipeline": pipeline, "GET": statistics.median(gets), "GET_range": [min(gets), max(gets)],
                             "SET": statistics.median(sets), "cpu_us_per_request": round(statistics.median(cpus), 2)})  # fmt: skip
        handshakes = {}
        for name, (port, proc, tls) in targets.items():
            if tls and proc is not None:
                before = cpu_seconds(proc.pid)
                start = time.monotonic()
                count = handshake_count(port, args.handshake_seconds, certs)
                elapsed = time.monotonic() - start
                cpu = cpu_seconds(proc.pid) - before
                handshakes[name] = {"handshakes_per_s": round(count / elapsed), "proxy_cpu_share": round(cpu / elapsed, 2),
                                    "proxy_cpu_ms_per_handshake": round(cpu / count * 1000, 3) if count else None}  # fmt: skip
        calibration["end"] = calibrate(exe["calibrate"])
    finally:
        for _, proc, _ in targets.values():
            if proc:
                proc.terminate()
                proc.wait(10)
        for s in servers:
            s.terminate()
            s.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"calibration (CPU ms, Python loop / C loop): start {calibration['start']['python_loop_ms']} / {calibration['start']['c_loop_ms']}, "
          f"end {calibration.get('end', {}).get('python_loop_ms')} / {calibration.get('end', {}).get('c_loop_ms')}; load {calibration['start']['loadavg']}")
    print(f"{'target':<18}{'-P':>4}{'GET ops/s':>12}{'SET ops/s':>12}{'CPU us/req':>12}{'GET vs envoy':>14}")
    for row in rows:
        peer = "envoy-tls" if str(row["target"]).endswith("tls") else "envoy"
        envoy = next((r for r in rows if r["target"] == peer and r["pipeline"] == row["pipeline"]), None)
        ratio = f"{row['GET'] / envoy['GET']:.2f}x" if envoy and envoy["GET"] else "-"
        print(f"{row['target']:<18}{row['pipeline']:>4}{row['GET']:>12.0f}{row['SET']:>12.0f}{row['cpu_us_per_request']:>12}{ratio:>14}")
    print()
    for name, h in handshakes.items():
        print(f"{name:<18} {h['handshakes_per_s']:>6} mutual-TLS handshakes per wall-clock s, one client at a time "
              f"(proxy CPU {h['proxy_cpu_share']:.0%}, {h['proxy_cpu_ms_per_handshake']} ms per handshake)")
    (ROOT / "bench/results/tls_peers.json").write_text(json.dumps({"calibration": calibration, "repeat": args.repeat, "throughput": rows, "handshakes": handshakes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
