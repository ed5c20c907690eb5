"""The processes of the representative suite: providers, our proxy, Envoy, twemproxy, haproxy.

Every peer is configured as in ../shared/reference/peers/ (Envoy 1.40 ``--concurrency 1``,
twemproxy with one server connection, haproxy in TCP mode with one thread), adapted to the mix:
4 services x 3 methods routed by interface/service and method to one cluster of 2 provider
endpoints (so 2+ upstream connections). Each Envoy configuration runs in its own process
(``--disable-hot-restart``, so several coexist), as the bound generic_proxy must (it crashed Envoy 1.40 when shared).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.representative.corpus import METHODS, NOUNS, SERVICES
from tests.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT.parent / "shared/reference/peers"
HERE = Path(__file__).resolve().parent


def envoy_binary() -> str | None:
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    return found if Path(found).exists() else None


@dataclass
class Target:
    """Something the load generator can aim at: a port, and the process whose CPU it costs."""

    name: str
    port: int
    pid: int | None = None
    kind: str = "proxy"  # direct, l4, proxy


@dataclass
class Stack:
    """The processes started for the suite, and the targets per protocol."""

    tmp: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    targets: dict[str, list[Target]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    argvs: dict[str, tuple[list[str], dict[str, Any]]] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs.append((name, proc))
        self.argvs[name] = (argv, kw)
        return proc

    def restart_peers(self) -> list[str]:
        """Start again each peer (Envoy, twemproxy, haproxy) that exited (Envoy 1.40's bound
        generic_proxy segfaults when downstream connections close: reference README); count it.
        Raise if one of ours (a provider, redis-server, our proxy) exited."""
        dead = [(i, name, proc) for i, (name, proc) in enumerate(self.procs) if proc.poll() is not None]
        ours = [name for _, name, _ in dead if not name.startswith(("envoy", "twemproxy", "haproxy"))]
        if ours:
            raise RuntimeError(f"exited during the run: {ours} (logs in {self.tmp})")
        for i, name, proc in dead:
            argv, kw = self.argvs[name]
            with open(self.tmp / f"{name}.log", "ab") as log:
                fresh = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kw)
            self.procs[i] = (name, fresh)
            self.crashes[name] = self.crashes.get(name, 0) + 1
            for targets in self.targets.values():
                for t in targets:
                    if t.pid == proc.pid:
                        t.pid = fresh.pid
        if dead:
            self.wait()
        return [name for _, name, _ in dead]

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def envoy(self, name: str, cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        exe = envoy_binary()
        assert exe
        return self.start(name, [exe, "-c", str(path), "--concurrency", "1", "--log-level", "error", "--disable-hot-restart"])

    def ours(self, name: str, boot: dict[str, Any]) -> subprocess.Popen[bytes]:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(boot))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return self.start(name, [sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(path), "--log-level", "WARNING"], env=env)

    def wait(self) -> None:
        for proto, targets in self.targets.items():
            for t in targets:
                for _ in range(60):
                    dead = [n for n, p in self.procs if p.poll() is not None]
                    if dead:
                        tails = {n: (self.tmp / f"{n}.log").read_text(errors="replace")[-400:] for n in dead}
                        raise RuntimeError(f"exited at start: {tails} (logs in {self.tmp})")
                    try:
                        wait_port(t.port, 0.5)
                        break
                    except TimeoutError:
                        continue
                else:
                    raise RuntimeError(f"{proto} {t.name}: nothing listens on {t.port} (logs in {self.tmp})")


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, ports: list[int]) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": _addr(p)}} for p in ports]}]}}  # fmt: skip


def our_bootstrap(codec: str, port: int, upstreams: list[int], routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"static_resources": {
        "listeners": [{"name": codec, "address": _addr(port), "filter_chains": [{"filters": [{"name": "aeraki.meta_protocol_proxy", "typed_config": {
            "stat_prefix": codec, "codec": {"name": codec}, "route_config": {"name": "r", "routes": routes}}}]}]}],
        "clusters": [_cluster("backend", upstreams)],
    }}  # fmt: skip


def dubbo_routes() -> list[dict[str, Any]]:
    return [{"name": f"{m.interface}.{m.name}", "match": {"metadata": [{"name": "interface", "exact_match": m.interface}, {"name": "method", "exact_match": m.name}]},
             "route": {"cluster": "backend"}} for m in METHODS]  # fmt: skip


def thrift_routes() -> list[dict[str, Any]]:
    return [{"name": m.thrift_name, "match": {"metadata": [{"name": "service", "exact_match": f"{m.noun}Service"}, {"name": "method", "exact_match": m.name}]},
             "route": {"cluster": "backend"}} for m in METHODS]  # fmt: skip


def _envoy_cluster(cfg: dict[str, Any], upstreams: list[int]) -> None:
    cluster = cfg["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [{"endpoint": {"address": _addr(p)}} for p in upstreams]


def _generic_matchers() -> list[dict[str, Any]]:
    return [{"name": f"vh{s}", "hosts": [SERVICES[s]], "routes": {"matcher_list": {"matchers": [{
        "predicate": {"single_predicate": {"input": {"name": "method", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.matcher.v3.MethodMatchInput"}},
            "value_match": {"exact": m.name}}},
        "on_match": {"action": {"name": "route", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.action.v3.RouteAction", "cluster": "dubbo_backend"}}}}
        for m in METHODS if m.service == s]}}} for s in range(len(NOUNS))]  # fmt: skip


def envoy_dubbo(ports: dict[str, int], upstreams: list[int]) -> dict[str, Any]:
    cfg = yaml.safe_load((PEERS / "envoy_dubbo.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    dubbo, generic = cfg["static_resources"]["listeners"]
    dubbo["address"]["socket_address"]["port_value"] = ports["envoy_dubbo_proxy"]
    generic["address"]["socket_address"]["port_value"] = ports["envoy_generic_proxy"]
    dubbo["filter_chains"][0]["filters"][0]["typed_config"]["multiple_route_config"]["route_config"] = [
        {"name": f"svc{s}", "interface": SERVICES[s], "routes": [{"match": {"method": {"name": {"exact": m.name}}}, "route": {"cluster": "dubbo_backend"}}
                                                                  for m in METHODS if m.service == s]} for s in range(len(NOUNS))]  # fmt: skip
    generic["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = _generic_matchers()
    _envoy_cluster(cfg, upstreams)
    return cfg


def envoy_dubbo_bound(ports: dict[str, int], upstreams: list[int]) -> dict[str, Any]:
    cfg = yaml.safe_load((PEERS / "envoy_dubbo_bound.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin_bound"]
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ports["envoy_generic_bound"]
    listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"] = _generic_matchers()
    _envoy_cluster(cfg, upstreams)
    return cfg


def envoy_thrift(ports: dict[str, int], upstreams: list[int]) -> dict[str, Any]:
    """thrift_proxy with THeader clients and THeader to the provider (the trace id travels in a
    THeader header), full decode and payload passthrough."""
    cfg = yaml.safe_load((PEERS / "envoy_thrift.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    full, passthrough = cfg["static_resources"]["listeners"]
    for listener, name in ((full, "envoy_thrift_proxy"), (passthrough, "envoy_thrift_passthrough")):
        listener["address"]["socket_address"]["port_value"] = ports[name]
        tc = listener["filter_chains"][0]["filters"][0]["typed_config"]
        tc["transport"] = "HEADER"
        tc["route_config"]["routes"] = [{"match": {"method_name": m.thrift_name}, "route": {"cluster": "thrift_backend"}} for m in METHODS]
    cluster = cfg["static_resources"]["clusters"][0]
    cluster["typed_extension_protocol_options"]["envoy.filters.network.thrift_proxy"]["transport"] = "HEADER"
    _envoy_cluster(cfg, upstreams)
    return cfg


def envoy_redis(ports: dict[str, int], redis_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load((PEERS / "envoy_redis.yaml").read_text())
    cfg["admin"]["address"]["socket_address"]["port_value"] = ports["admin"]
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = ports["envoy_redis_proxy"]
    _envoy_cluster(cfg, [redis_port])
    return cfg


def haproxy_config(frontends: dict[str, tuple[int, list[int]]]) -> str:
    """One haproxy (TCP mode, one thread) relaying each frontend to its servers (the L4 floor)."""
    lines = ["global", "    nbthread 1", "    maxconn 4000", "defaults", "    mode tcp", "    timeout connect 5s",
             "    timeout client 120s", "    timeout server 120s"]  # fmt: skip
    for name, (port, servers) in frontends.items():
        lines += [f"frontend {name}_in", f"    bind 127.0.0.1:{port}", f"    default_backend {name}_out", f"backend {name}_out", "    balance roundrobin"]
        lines += [f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(servers)]
    return "\n".join(lines) + "\n"


def build_c(tmp: Path) -> dict[str, Path]:
    """Compile bench/loadgen.c and the canned provider with gcc."""
    out = {}
    for name, src in (("loadgen", ROOT / "bench/loadgen.c"), ("provider", HERE / "provider.c"), ("calibrate", HERE / "calibrate.c")):
        out[name] = tmp / name
        subprocess.run(["gcc", "-O2", "-o", str(out[name]), str(src)], check=True)
    return out


def start_all(tmp: Path, exe: dict[str, Path], files: dict[str, Path], protocols: list[str], peers: bool = True) -> Stack:
    """Providers, redis-server (prefilled by the caller), our proxy and, with ``peers``, every
    installed peer, for each protocol in ``protocols``."""
    st = Stack(tmp)
    envoy = envoy_binary() if peers else None
    haproxy = shutil.which("haproxy") if peers else None
    nutcracker = shutil.which("nutcracker") if peers else None
    if peers:
        for what, found in (("envoy", envoy), ("haproxy", haproxy), ("twemproxy (nutcracker)", nutcracker)):
            if not found:
                st.skipped[what] = "not installed: run scripts/bench-install"
    l4: dict[str, tuple[int, list[int]]] = {}
    try:
        for proto in ("dubbo", "thrift"):
            if proto not in protocols:
                continue
            upstreams = [free_port(), free_port()]
            st.start(f"{proto}_provider", [str(exe["provider"]), proto, str(files[f"{proto}_replies"]), *map(str, upstreams)])
            targets = [Target("direct", upstreams[0], None, "direct")]
            ours = free_port()
            proc = st.ours(f"{proto}_metaprotocol", our_bootstrap(proto, ours, upstreams, dubbo_routes() if proto == "dubbo" else thrift_routes()))
            targets.append(Target("metaprotocol", ours, proc.pid))
            if envoy and proto == "dubbo":
                ports = {k: free_port() for k in ("admin", "admin_bound", "envoy_dubbo_proxy", "envoy_generic_proxy", "envoy_generic_bound")}
                e1 = st.envoy("envoy_dubbo", envoy_dubbo(ports, upstreams))
                e2 = st.envoy("envoy_dubbo_bound", envoy_dubbo_bound(ports, upstreams))
                targets += [Target("envoy_dubbo_proxy", ports["envoy_dubbo_proxy"], e1.pid), Target("envoy_generic_proxy", ports["envoy_generic_proxy"], e1.pid),
                            Target("envoy_generic_bound", ports["envoy_generic_bound"], e2.pid)]  # fmt: skip
            if envoy and proto == "thrift":
                ports = {k: free_port() for k in ("admin", "envoy_thrift_proxy", "envoy_thrift_passthrough")}
                e = st.envoy("envoy_thrift", envoy_thrift(ports, upstreams))
                targets += [Target("envoy_thrift_proxy", ports["envoy_thrift_proxy"], e.pid), Target("envoy_thrift_passthrough", ports["envoy_thrift_passthrough"], e.pid)]
            if haproxy:
                l4[proto] = (free_port(), upstreams)
                targets.append(Target("haproxy_l4", l4[proto][0], None, "l4"))
            st.targets[proto] = targets
        if "redis" in protocols:
            redis_port = free_port()
            st.start("redis_server", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            targets = [Target("direct", redis_port, None, "direct")]
            ours = free_port()
            proc = st.ours("redis_metaprotocol", our_bootstrap("redis", ours, [redis_port], [{"route": {"cluster": "backend"}}]))
            targets.append(Target("metaprotocol", ours, proc.pid))
            if envoy:
                ports = {"admin": free_port(), "envoy_redis_proxy": free_port()}
                e = st.envoy("envoy_redis", envoy_redis(ports, redis_port))
                targets.append(Target("envoy_redis_proxy", ports["envoy_redis_proxy"], e.pid))
            if nutcracker:
                port = free_port()
                conf = {"alpha": {"listen": f"127.0.0.1:{port}", "hash": "fnv1a_64", "distribution": "ketama", "redis": True, "preconnect": True,
                                  "auto_eject_hosts": False, "server_connections": 1, "servers": [f"127.0.0.1:{redis_port}:1"]}}  # fmt: skip
                (tmp / "nutcracker.yml").write_text(yaml.safe_dump(conf))
                # its stats port too (default 22222): two runs at once must not collide
                stats = ["-a", "127.0.0.1", "-s", str(free_port())]
                n = st.start("twemproxy", [nutcracker, "-c", str(tmp / "nutcracker.yml"), "-o", str(tmp / "nutcracker.out"), *stats])
                targets.append(Target("twemproxy", port, n.pid))
            if haproxy:
                l4["redis"] = (free_port(), [redis_port])
                targets.append(Target("haproxy_l4", l4["redis"][0], None, "l4"))
            st.targets["redis"] = targets
        if haproxy and l4:
            (tmp / "haproxy.cfg").write_text(haproxy_config(l4))
            h = st.start("haproxy", [haproxy, "-f", str(tmp / "haproxy.cfg"), "-db"])
            for targets in st.targets.values():
                for t in targets:
                    if t.kind == "l4":
                        t.pid = h.pid
        st.wait()
    except BaseException:
        st.stop()
        raise
    return st
