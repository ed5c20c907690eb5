"""``metaprotocol demo dubbo``: the traffic-splitting demo on loopback, in one command.

Two Dubbo providers (v1, v2) answer ``sayHello``; ``aeraki-ctl`` (controller and ADS server) serves
the bundled Aeraki resources (ServiceEntry, DestinationRule, MetaRouter: 20 % v1 / 80 % v2 for
calls with the attachment ``foo: bar``) over xDS to a proxy that has no other configuration; a
consumer calls through the proxy on one long-lived connection while a table and a bar chart show
the split against the weights. Then the MetaRouter file is rewritten (100 % v2): aeraki-ctl pushes
it, the proxy applies it live, the same connection sees the shift, with no failed call. Everything
started is stopped at the end (unless ``--keep-running``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import Options, translate
from metaprotocol_apps.dubbo import DubboConsumer, DubboError, DubboProvider, RemoteException

CONFIG = Path(__file__).resolve().parent / "demo_config"
INTERFACE = "org.apache.dubbo.samples.basic.api.DemoService"
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
BAR = 40


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``demo`` to the ``metaprotocol`` command line (entry point ``metaprotocol.commands``)."""
    demo = sub.add_parser("demo", help="run a demo on loopback (dubbo: traffic splitting)")
    demo.add_argument("name", choices=["dubbo"])
    demo.add_argument("--requests", type=int, default=1000, help="calls per phase")
    demo.add_argument("--json", action="store_true", help="print a machine-readable summary only")
    demo.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    demo.set_defaults(run=lambda args: asyncio.run(run_demo(args.requests, args.json, args.keep_running)))


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


async def run_demo(requests: int, as_json: bool, keep_running: bool) -> int:
    """Run both phases; returns the exit code."""
    from aeraki_ctl.controller import Controller
    from aeraki_ctl.xds.server import AdsServer, start_server
    from metaprotocol.config.model import Bootstrap
    from metaprotocol.io.proxy import Proxy
    from metaprotocol.registry import CodecRegistry
    from metaprotocol.xds.client import AdsClient

    say = (lambda *a: None) if as_json else print
    workdir = Path(tempfile.mkdtemp(prefix="metaprotocol-demo-"))
    providers: list[DubboProvider] = []
    tasks: list[asyncio.Task[None]] = []
    proxy = None
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
        # The proxy, configured over xDS only.
        proxy = Proxy(Bootstrap((), (), None, "xds"), CodecRegistry.from_entry_points())
        await proxy.start()
        client = AdsClient(proxy, f"127.0.0.1:{xds_port}", "demo-proxy")
        tasks.append(asyncio.ensure_future(client.run()))
        await _until(lambda: client.applied > 0, 10)
        say(f"providers v1 :{providers[0].port}, v2 :{providers[1].port}; aeraki-ctl serving {workdir} over xDS on :{xds_port};"
            f" proxy configured over xDS, listening on 127.0.0.1:{listen_port}")  # fmt: skip
        async with DubboConsumer("127.0.0.1", listen_port, application="demo-consumer") as consumer:
            phase1 = await _phase(consumer, requests, _weights(router), "phase 1: MetaRouter 20 % v1 / 80 % v2", as_json)
            # Rewrite the MetaRouter file: aeraki-ctl notices, pushes over xDS, the proxy applies live.
            router["spec"]["routes"][0]["route"] = [{"destination": {"host": HOST, "subset": "v2"}, "weight": 100}]
            applied_before = client.applied
            changed_at = time.monotonic()
            _write(workdir / "metarouter.yaml", router)
            transition: dict[str, float] = {"calls": 0, "failures": 0}
            while client.applied == applied_before:
                step = await _phase(consumer, 20, _weights(router), "transition", True)
                transition["calls"] += step["calls"]
                transition["failures"] += step["failures"]
                if time.monotonic() - changed_at > 15:  # noqa: PLR2004
                    raise TimeoutError("the MetaRouter change did not reach the proxy")
            transition["seconds"] = round(time.monotonic() - changed_at, 3)
            say(f"\nMetaRouter rewritten to 100 % v2: pushed by aeraki-ctl over xDS and applied by the proxy in"
                f" {transition['seconds']} s, while {transition['calls']} calls went on ({transition['failures']} failed) on the same connection")  # fmt: skip
            phase2 = await _phase(consumer, requests, _weights(router), "phase 2: MetaRouter 100 % v2", as_json)
        summary = {"phase1": phase1, "transition": transition, "phase2": phase2, "proxy_port": listen_port, "xds_port": xds_port, "nacks": client.nacks}
        failures = phase1["failures"] + phase2["failures"] + transition["failures"]
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"\n{'OK' if failures == 0 else 'FAILED'}: {failures} failed calls")
        if keep_running:
            print(f"\nstill running: point a Dubbo consumer at 127.0.0.1:{listen_port} (interface {INTERFACE}, method sayHello,"
                  f" version 1.0.0, attachment foo=bar); edit {workdir}/metarouter.yaml to change routing; Ctrl-C to stop", file=sys.stderr)  # fmt: skip
            await asyncio.Event().wait()
        return 0 if failures == 0 else 1
    finally:
        for t in tasks:
            t.cancel()
        if proxy is not None:
            await proxy.close()
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


async def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the proxy received no configuration over xDS")
        await asyncio.sleep(0.02)
