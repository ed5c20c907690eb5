"""``metaprotocol demo dubbo``: the traffic-splitting demo on loopback, in one command.

Two Dubbo providers (v1, v2) answer ``sayHello``; ``aeraki-ctl``'s translation turns the bundled
Aeraki resources (ServiceEntry, DestinationRule, MetaRouter: 20 % v1 / 80 % v2 for calls with the
attachment ``foo: bar``) into the proxy's configuration; a consumer calls through the proxy on one
long-lived connection while a table and a bar chart show the split against the weights. Then the
MetaRouter is rewritten (100 % v2) and applied live: the same connection sees the shift, with no
failed call. Everything started is stopped at the end (unless ``--keep-running``).
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
    from metaprotocol.io.proxy import Proxy
    from metaprotocol.registry import CodecRegistry

    say = (lambda *a: None) if as_json else print
    workdir = Path(tempfile.mkdtemp(prefix="metaprotocol-demo-"))
    providers = []
    proxy = None
    try:
        for version in ("v1", "v2"):
            p = DubboProvider(name=f"provider-{version}")
            p.expose(INTERFACE, "sayHello", lambda who, v=version: f"Hello {who}, response from provider-{v}", version="1.0.0")
            await p.start()
            providers.append(p)
        service = (CONFIG / "service.yaml").read_text().replace("20881", str(providers[0].port)).replace("20882", str(providers[1].port))
        (workdir / "service.yaml").write_text(service)
        router = yaml.safe_load((CONFIG / "metarouter.yaml").read_text())
        (workdir / "metarouter.yaml").write_text(yaml.safe_dump(router, sort_keys=False))
        result = translate(load_directory(workdir), Options(port_offset=0))
        if result.errors:
            print("\n".join(map(str, result.errors)), file=sys.stderr)
            return 1
        boot = _bind_any_port(result.bootstrap)
        proxy = Proxy(boot, CodecRegistry.from_entry_points())
        await proxy.start()
        port = proxy.bound_port(f"{HOST}_20880")
        say(f"providers v1 :{providers[0].port}, v2 :{providers[1].port}; proxy (configured by aeraki-ctl's translation of {CONFIG}) on 127.0.0.1:{port}")
        async with DubboConsumer("127.0.0.1", port, application="demo-consumer") as consumer:
            phase1 = await _phase(consumer, requests, _weights(router), "phase 1: MetaRouter 20 % v1 / 80 % v2", as_json)
            # Rewrite the MetaRouter: everything to v2; apply live on the running proxy.
            router["spec"]["routes"][0]["route"] = [{"destination": {"host": HOST, "subset": "v2"}, "weight": 100}]
            (workdir / "metarouter.yaml").write_text(yaml.safe_dump(router, sort_keys=False))
            updated = translate(load_directory(workdir))
            await proxy.apply(_bind_any_port(updated.bootstrap))
            say("\nMetaRouter rewritten to 100 % v2 and applied live (same consumer connection)")
            phase2 = await _phase(consumer, requests, _weights(router), "phase 2: MetaRouter 100 % v2", as_json)
        summary = {"phase1": phase1, "phase2": phase2, "proxy_port": port}
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            ok = phase1["failures"] == 0 and phase2["failures"] == 0
            print(f"\n{'OK' if ok else 'FAILED'}: {phase1['failures'] + phase2['failures']} failed calls")
        if keep_running:
            print(f"\nstill running: point a Dubbo consumer at 127.0.0.1:{port} (interface {INTERFACE}, method sayHello,"
                  " version 1.0.0, attachment foo=bar); Ctrl-C to stop", file=sys.stderr)  # fmt: skip
            await asyncio.Event().wait()
        return 0 if phase1["failures"] == 0 and phase2["failures"] == 0 else 1
    finally:
        if proxy is not None:
            await proxy.close()
        for p in providers:
            await p.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _bind_any_port(boot: Any) -> Any:
    """The translated configuration with its listener on a free loopback port."""
    from dataclasses import replace

    return replace(boot, listeners=tuple(replace(lst, port=0) for lst in boot.listeners))
