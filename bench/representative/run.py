"""The representative benchmark suite (issue 15), in one run: ``scripts/bench-representative``.

    python -m bench.representative.run [--quick] [--reps 3] [--seconds 3] [--protocols dubbo,thrift,redis]

Builds the corpora (bench/representative/corpus.py) and the C tools (bench/loadgen.c, the canned
provider, the calibration loop), starts every target (targets.py), prefills Redis, then runs every
case once per repetition, interleaved (A B C A B C ...), and reports medians with min-max spread,
proxy CPU per request (from /proc), p50/p99 latency, ratios, the issue's targets, machine details
and a CPU calibration timed at the start and at the end, into bench/results/representative.md and
.json. Finally py-spy profiles of our proxy under the Dubbo and Redis mixes (top functions by self
time). A benchmark, never a timed test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.peers import cpu_seconds  # noqa: E402
from bench.representative import check, corpus, profile  # noqa: E402
from bench.representative.targets import Stack, Target, build_c, envoy_binary, start_all  # noqa: E402

IDENTICAL = "metaprotocol_identical_frame"
FRAMING = {"dubbo": "dubbo", "thrift": "thrift", "redis": "resp"}
ENVOY_PREFIX = {"dubbo": "envoy_", "thrift": "envoy_", "redis": "envoy_"}


@dataclass(frozen=True)
class Case:
    protocol: str
    target: str
    connections: int
    depth: int
    mode: str  # window: DEPTH in flight, one write per request; batch: DEPTH per write (redis-benchmark -P)
    corpus: str = ""  # default: the protocol's mix

    @property
    def load(self) -> str:
        if self.protocol == "redis":
            return f"{self.connections} conn, -P {self.depth}"
        if self.mode == "batch":
            return f"{self.connections} conn, {self.depth} per write"
        return f"{self.connections} conn, {self.depth} in flight"


def loads(protocol: str, connections: int, depths: list[int]) -> list[tuple[int, int, str]]:
    if protocol == "redis":
        return [(connections, d, "batch") for d in (1, 16)] + [(1, 1, "batch")]
    return [(connections, d, "window") for d in depths] + [(1, 1, "window")]


# ------------------------------------------------------------------------------ machine, calibration


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0][:120] if text else "?"


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    envoy = envoy_binary()
    envoy_version = "not installed"
    if envoy:
        raw = _version([envoy, "--version"])
        envoy_version = next((part for part in raw.split("/") if part.count(".") == 2 and part[0].isdigit()), raw)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "metaprotocol", "codecs"], capture_output=True, text=True, cwd=ROOT).stdout.splitlines()
    if dirty:  # the working tree is what runs: say when it is not the commit
        commit += f" + {len(dirty)} uncommitted files under metaprotocol/, codecs/"

    return {
        "cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "envoy": envoy_version, "haproxy": _version(["haproxy", "-v"]), "nutcracker": _version(["nutcracker", "--version"]),
        "redis": _version(["redis-server", "--version"]), "commit": commit,
    }  # fmt: skip


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def py_loop(iterations: int = 2_000_000) -> float:
    """CPU seconds of a fixed pure-Python loop (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t = time.process_time()
        acc = 0
        for i in range(iterations):
            acc = (acc + i * i) % 1_000_003
        best = min(best, time.process_time() - t)
    return best


def calibrate(c_loop: Path, scale: float = 1.0) -> dict[str, Any]:
    """CPU milliseconds of a fixed pure-Python loop (2e6 iterations) and a fixed C loop (2e8), best
    of 3 and 2 (``scale`` < 1 only for the smoke test: the figures are then not comparable)."""
    c = min(float(subprocess.run([str(c_loop), str(int(200_000_000 * scale))], capture_output=True, text=True, check=True).stdout) for _ in range(2))
    return {"python_loop_ms": round(py_loop(int(2_000_000 * scale)) * 1000, 1), "c_loop_ms": round(c * 1000, 1), "loadavg": loadavg(), "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


# ------------------------------------------------------------------------------ running


def prefill_redis(port: int, keys: int) -> None:
    commands = corpus.redis_prefill(keys=keys)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for at in range(0, len(commands), 2000):
            chunk = commands[at : at + 2000]
            s.sendall(b"".join(chunk))
            want, got = 5 * len(chunk), b""
            while len(got) < want:
                data = s.recv(1 << 20)
                if not data:
                    raise RuntimeError("redis closed the connection during the prefill")
                got += data


def measure(loadgen: Path, corpus_file: Path, target: Target, case: Case, seconds: float, warmup: float) -> dict[str, Any]:
    """One closed-loop run of the load generator; CPU per request of the target's process."""
    before = cpu_seconds(target.pid) if target.pid else 0.0
    argv = [str(loadgen), "corpus", str(corpus_file), "127.0.0.1", str(target.port), str(case.connections), str(case.depth), str(seconds),
            FRAMING[case.protocol], case.mode, str(warmup)]  # fmt: skip
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + warmup + 60, check=False)
        stdout, stderr = out.stdout, out.stderr.strip()
    except subprocess.TimeoutExpired:
        stdout, stderr = "", "load generator timed out"
    cpu = (cpu_seconds(target.pid) - before) if target.pid else 0.0
    try:
        result: dict[str, Any] = json.loads(stdout)
    except ValueError:
        result = {"rps": 0, "p50_ms": 0, "p99_ms": 0, "mean_ms": 0, "requests": 0, "total": 0, "classes": {}}
    if stderr:
        result["stderr"] = stderr[-300:]
    total = int(result.get("total", 0))
    result["cpu_us_per_request"] = round(cpu / total * 1e6, 2) if target.pid and total else None
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else {"median": 0.0, "min": 0.0, "max": 0.0}


def summarize(runs: list[dict[str, Any]], cases: list[Case]) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        mine = [r for r in runs if r["case"] == asdict(case)]
        direct = [r for r in runs if r["case"] == {**asdict(case), "target": "direct"}]
        classes: dict[str, int] = {}
        for r in mine:
            for k, v in r["result"].get("classes", {}).items():
                classes[k] = classes.get(k, 0) + v
        added = []
        for r in mine:
            d = next((x for x in direct if x["rep"] == r["rep"]), None)
            if d and d["result"]["p50_ms"] and r["result"]["p50_ms"]:
                added.append(1000 * (r["result"]["p50_ms"] - d["result"]["p50_ms"]))
        cpu = [r["result"]["cpu_us_per_request"] for r in mine if r["result"].get("cpu_us_per_request")]
        out.append({
            **asdict(case), "reps": len(mine),
            "rps": _spread([r["result"]["rps"] for r in mine]),
            "p50_ms": _spread([r["result"]["p50_ms"] for r in mine]), "p99_ms": _spread([r["result"]["p99_ms"] for r in mine]),
            "cpu_us_per_request": _spread(cpu) if cpu else None,
            "added_p50_us": _spread(added) if added and case.target != "direct" else None,
            "classes": classes, "failures": [r["result"].get("stderr") for r in mine if r["result"].get("stderr")],
        })  # fmt: skip
    for row in out:
        ref = next((r for r in out if r["protocol"] == row["protocol"] and r["connections"] == row["connections"] and r["depth"] == row["depth"] and r["target"] == "direct"), None)
        row["mix"] = "one frame" if row["corpus"] else mix_check(row["classes"], ref["classes"] if ref else {})
    return out


def mix_check(classes: dict[str, int], reference: dict[str, int]) -> str:
    """'ok' when the replies' classes (shape by status/type) match the direct run's shares."""
    n, m = sum(classes.values()), sum(reference.values())
    if not n:
        return "no replies"
    if not m:
        return "ok" if classes else "?"
    worst = max(abs(classes.get(k, 0) / n - reference.get(k, 0) / m) for k in set(classes) | set(reference))
    if worst <= 0.03:
        return "ok"
    return "differs: " + ", ".join(f"{k} {100 * v / n:.0f}%" for k, v in sorted(classes.items(), key=lambda kv: -kv[1])[:4])


def _find(summary: list[dict[str, Any]], protocol: str, connections: int, depth: int, pred: Any) -> list[dict[str, Any]]:
    return [r for r in summary if r["protocol"] == protocol and r["connections"] == connections and r["depth"] == depth and pred(r["target"])]


def _cpu(row: dict[str, Any]) -> str:
    return f"{row['cpu_us_per_request']['median']:.1f}"


def targets_table(summary: list[dict[str, Any]], connections: int) -> list[dict[str, Any]]:
    """Issue 15's targets against this run."""
    rows: list[dict[str, Any]] = []

    def ratio(protocol: str, depth: int, peer: Any, want: float, label: str, conns: int = connections) -> None:
        ours = _find(summary, protocol, conns, depth, lambda t: t == "metaprotocol")
        peers = [r for r in _find(summary, protocol, conns, depth, peer) if r["rps"]["median"]]
        if not ours or not peers:
            rows.append({"target": label, "want": f">= {want:.2f}x", "got": "not measured", "met": None})
            return
        best = max(peers, key=lambda r: r["rps"]["median"])
        got = ours[0]["rps"]["median"] / best["rps"]["median"]
        if not got:
            rows.append({"target": label, "want": f">= {want:.2f}x", "got": "0 (our runs failed)", "met": False, "short_by": "no replies"})
            return
        cpu = f"; CPU {_cpu(ours[0])} vs {_cpu(best)} us/req" if ours[0]["cpu_us_per_request"] and best["cpu_us_per_request"] else ""
        rows.append({"target": label, "want": f">= {want:.2f}x", "got": f"{got:.2f}x (vs {best['target']}{cpu})", "ratio": round(got, 3), "met": got >= want,
                     "short_by": None if got >= want else f"{100 * (1 - got / want):.0f}% short (needs {want / got:.2f}x more)"})  # fmt: skip

    for p in ("dubbo", "thrift"):
        ratio(p, 16, lambda t: t.startswith("envoy_"), 1.5, f"{p}: 16 in flight vs Envoy's best")
        ratio(p, 1, lambda t: t.startswith("envoy_"), 1.3, f"{p}: 1 in flight vs Envoy's best")
    ratio("redis", 16, lambda t: t == "twemproxy", 1.0, "redis: -P 16 vs twemproxy")
    ratio("redis", 1, lambda t: t == "envoy_redis_proxy", 0.85, "redis: -P 1 vs Envoy")
    for p in ("dubbo", "thrift", "redis"):
        ours = _find(summary, p, 1, 1, lambda t: t == "metaprotocol")
        envoys = [r for r in _find(summary, p, 1, 1, lambda t: t.startswith("envoy_")) if r["added_p50_us"]]
        if not ours or not ours[0]["added_p50_us"] or not envoys:
            continue
        best = min(envoys, key=lambda r: r["added_p50_us"]["median"])
        mine, theirs = ours[0]["added_p50_us"]["median"], best["added_p50_us"]["median"]
        rows.append({"target": f"{p}: added p50 latency, 1 connection, 1 in flight", "want": f"<= Envoy's ({best['target']})",
                     "got": f"+{mine:.0f} us vs +{theirs:.0f} us", "met": mine <= theirs,
                     "short_by": None if mine <= theirs else f"{mine - theirs:.0f} us over"})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------ report


def _fmt_spread(s: dict[str, float] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not s:
        return "-"
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'] * scale)} ({f.format(s['min'] * scale)}-{f.format(s['max'] * scale)})"


def machine_line(info: dict[str, Any]) -> str:
    m, c0, c1 = info["machine"], info["calibration"]["start"], info["calibration"]["end"]
    return (f"*Machine: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, Envoy {m['envoy']}, code at {m['commit']}; load average "
            f"{c0['loadavg']} at start, {c1['loadavg']} at end. Calibration (CPU ms, start -> end): pure-Python loop "
            f"{c0['python_loop_ms']} -> {c1['python_loop_ms']}, C loop {c0['c_loop_ms']} -> {c1['c_loop_ms']}.*")  # fmt: skip


TITLES = {"dubbo": "Dubbo (hessian2) mix", "thrift": "Thrift (THeader, binary) mix", "redis": "Redis mix (GET 45 % / SET 30 % / MGET 10 % / INCR 15 %)"}


def markdown(info: dict[str, Any]) -> str:
    summary = info["summary"]
    cfg = info["config"]
    lines = [
        "# Representative suite (issue 15): one run", "",
        f"`{cfg['command']}`, {cfg['reps']} interleaved repetitions of {cfg['seconds']} s (+{cfg['warmup']} s warm-up) per case, "
        f"{cfg['corpus_frames']} distinct frames per corpus, started {info['calibration']['start']['utc']} UTC, finished {info['calibration']['end']['utc']} UTC. "
        "Cells: median (min-max) over the repetitions. `ours / this`: our requests per second divided by this row's, same load. "
        "CPU per request is the proxy process's user+system time (from /proc) over all replies of the run. Added p50: the row's p50 "
        "minus the direct run's p50 in the same repetition.", "",
        machine_line(info), "",
        "## Targets (issue 15)", "", "| target | wanted | this run | met |", "|---|---|---|---|",
    ]  # fmt: skip
    for t in info["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else f"**no**: {t.get('short_by')}")
        lines.append(f"| {t['target']} | {t['want']} | {t['got']} | {met} |")
    for proto in cfg["protocols"]:
        rows = [r for r in summary if r["protocol"] == proto]
        if not rows:
            continue
        lines += ["", f"## {TITLES[proto]}", "", "| target | load | req/s | p50 ms | p99 ms | added p50 us | proxy CPU us/req | ours / this | reply mix |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in rows:
            case = Case(r["protocol"], r["target"], r["connections"], r["depth"], r["mode"], r["corpus"])
            ours = next((x for x in rows if x["target"] == "metaprotocol" and x["connections"] == r["connections"] and x["depth"] == r["depth"]), None)
            ratio = f"{ours['rps']['median'] / r['rps']['median']:.2f}x" if ours and r["rps"]["median"] and r["target"] != "metaprotocol" else ""
            name = f"**{r['target']}**" if r["target"] == "metaprotocol" else "metaprotocol, one identical frame (best case)" if r["target"] == IDENTICAL else r["target"]
            lines.append(f"| {name} | {case.load} | {_fmt_spread(r['rps'])} | {r['p50_ms']['median']:.3f} | {r['p99_ms']['median']:.3f} | "
                         f"{_fmt_spread(r['added_p50_us'])} | {_fmt_spread(r['cpu_us_per_request'], 1)} | {ratio} | {r['mix']} |")  # fmt: skip
        checked = info.get("reply_check", {}).get(proto, {})
        if checked:
            lines += ["", "Reply check (2 requests per method/command, one at a time, every reply decoded with the project's decoders; shape as the provider "
                      "answers that method): " + "; ".join(f"{name} {c['ok']} ok" + (f", wrong: {c['wrong']}" if c["wrong"] else "") + (f", {c['error']}" if c.get("error") else "")
                                                          for name, c in checked.items()) + "."]  # fmt: skip
        lines += ["", machine_line(info)]
        crashed = {k: v for k, v in (info.get("crashes") or {}).items() if k.startswith(f"envoy_{proto}") or (proto == "redis" and k == "twemproxy")}
        if crashed:
            lines += ["", "Peer processes that exited during the run and were started again (the measurement before each exit completed): "
                      + ", ".join(f"{k} {v} times" for k, v in crashed.items()) + ". Envoy 1.40's generic_proxy with bound upstream connections "
                      "segfaults when downstream connections close (../shared/reference/peers/README.md)."]  # fmt: skip
        skipped = info.get("skipped") or {}
        if skipped:
            lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    if info.get("profiles"):
        lines += ["", "## Profiles of our proxy (py-spy, self time)", "",
                  "py-spy `record --native` at 200 Hz on our proxy while the load generator runs the mix (a separate run: sampling slows the "
                  "proxy). Self time: samples whose innermost frame is the function; `writev`/`read`/`send` (libc) are the kernel's share "
                  "(system calls); `Runner.run` self time is the event loop's own C code.", ""]  # fmt: skip
        for name, prof in info["profiles"].items():
            lines += [f"### {name} ({prof['samples']} samples)", "", "| # | function | self % |", "|---:|---|---:|"]
            lines += [f"| {i} | `{row['function']}` | {row['self_pct']} |" for i, row in enumerate(prof["top"], 1)]
            lines += ["", "Self time by area: " + ", ".join(f"{k} {v} %" for k, v in prof.get("areas", {}).items()) + ".", ""]
        lines.append(machine_line(info))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def check_replies(st: Stack, files: dict[str, Path], protocols: list[str]) -> dict[str, dict[str, Any]]:
    """Every target's replies to a sample (2 requests per method or command), decoded."""
    out: dict[str, dict[str, Any]] = {}
    for proto in protocols:
        frames = check.sample(corpus.read_corpus(files[proto]), proto)
        out[proto] = {}
        for t in st.targets[proto]:
            try:
                out[proto][t.name] = check.check_target(t.port, proto, frames)
            except (OSError, ValueError) as exc:
                out[proto][t.name] = {"ok": 0, "wrong": {}, "error": f"{type(exc).__name__}: {exc}"}
    return out


def run_profiles(st: Stack, exe: dict[str, Path], files: dict[str, Path], seconds: float, tmp: Path, out_base: Path) -> dict[str, Any]:
    if not profile.pyspy_binary():
        st.skipped["profiles"] = "py-spy not installed: run scripts/bench-install"
        return {}
    out: dict[str, Any] = {}
    plan = [("dubbo", 50, 16, "window"), ("dubbo", 50, 1, "window"), ("redis", 50, 16, "batch"), ("redis", 50, 1, "batch")]
    for proto, conns, depth, mode in plan:
        ours = next((t for t in st.targets.get(proto, []) if t.name == "metaprotocol"), None)
        if not ours or not ours.pid:
            continue
        raw = tmp / f"profile-{proto}-{depth}.txt"
        spy = profile.record(ours.pid, seconds, raw)
        time.sleep(0.5)
        case = Case(proto, "metaprotocol", conns, depth, mode)
        result = measure(exe["loadgen"], files[proto], ours, case, seconds, 0.2)
        _, err = spy.communicate(timeout=seconds + 60)
        if not raw.exists():
            st.skipped[f"profile {proto}"] = err.decode(errors="replace")[-200:]
            continue
        total, top = profile.top_self(raw)
        out[f"{proto}, {case.load}"] = {"samples": total, "top": top, "areas": profile.areas(raw), "rps_while_sampled": result["rps"]}
        shutil.copy(raw, out_base.with_name(f"{out_base.name}-profile-{proto}-{'P' if proto == 'redis' else 'd'}{depth}.txt"))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs to check the harness (2 reps of 0.5 s, a small corpus, 2 s profiles; results in the work directory)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depths", default="1,4,16")
    parser.add_argument("--frames", type=int, default=4096, help="distinct frames per corpus")
    parser.add_argument("--protocols", default="dubbo,thrift,redis")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="0: no profiles")
    parser.add_argument("--smoke", action="store_true", help="the smallest end-to-end run (tests/test_bench_representative.py): no peers, no timing value")
    parser.add_argument("--keys", type=int, default=corpus.KEYS, help="Redis keys")
    parser.add_argument("--no-peers", action="store_true", help="only direct and our proxy (the smoke test)")
    parser.add_argument("--out", type=Path, help="results path without suffix (default bench/results/representative; --quick: the work directory)")
    args = parser.parse_args(argv)
    if args.quick:
        args.reps, args.seconds, args.warmup, args.frames, args.profile_seconds = 2, 0.5, 0.2, 1024, 2.0
    scale = 1.0
    if args.smoke:
        args.reps, args.seconds, args.warmup, args.frames, args.keys, args.profile_seconds = 1, 0.4, 0.1, 128, 1000, 0.0  # long enough that a loaded CI host still completes requests
        args.no_peers, args.depths, args.connections, scale = True, "1", 4, 0.02
    protocols = [p for p in args.protocols.split(",") if p]
    depths = [int(d) for d in args.depths.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="mp-representative-"))
    out_base = args.out or (tmp / "representative-quick" if args.quick or args.smoke else ROOT / "bench/results/representative")
    out_base.parent.mkdir(parents=True, exist_ok=True)
    print(f"work directory {tmp}", file=sys.stderr)
    exe = build_c(tmp)
    files = corpus.build_all(tmp / "corpus", args.frames, args.keys)
    info: dict[str, Any] = {"machine": machine(), "calibration": {"start": calibrate(exe["calibrate"], scale)}}
    flags = " --quick" if args.quick else " --smoke" if args.smoke else ""
    info["config"] = {"command": "scripts/bench-representative" + flags, "reps": args.reps, "seconds": args.seconds,
                      "warmup": args.warmup, "connections": args.connections, "depths": depths, "corpus_frames": args.frames, "protocols": protocols,
                      "redis_keys": args.keys}  # fmt: skip
    st = start_all(tmp, exe, files, protocols, peers=not args.no_peers)
    runs: list[dict[str, Any]] = []
    try:
        if "redis" in protocols:
            prefill_redis(st.targets["redis"][0].port, args.keys)
        info["reply_check"] = check_replies(st, files, protocols)
        cases = [Case(p, t.name, c, d, m) for p in protocols for (c, d, m) in loads(p, args.connections, depths) for t in st.targets[p]]
        # The old best case beside the mix, through our proxy: one identical frame, 16 per write.
        cases += [Case(p, IDENTICAL, args.connections, d, "batch", f"{p}_identical") for p in protocols if p != "redis" for d in (1, 16)]
        by_name = {(p, t.name): t for p in protocols for t in st.targets[p]}
        by_name.update({(p, IDENTICAL): by_name[(p, "metaprotocol")] for p in protocols})
        time.sleep(1.0)
        for rep in range(args.reps):
            for i, case in enumerate(cases):
                result = measure(exe["loadgen"], files[case.corpus or case.protocol], by_name[(case.protocol, case.target)], case, args.seconds, args.warmup)
                runs.append({"rep": rep, "case": asdict(case), "result": result})
                restarted = st.restart_peers()
                if restarted:
                    result["peer_exited_after"] = restarted
                    print(f"  exited after this case, restarted: {restarted}", file=sys.stderr)
                print(f"rep {rep + 1}/{args.reps} case {i + 1}/{len(cases)} {case.protocol} {case.target:<26} {case.load:<22} {result['rps']:>9.0f} req/s "
                      f"p50 {result['p50_ms']:.3f} ms cpu {result['cpu_us_per_request']} us/req {result.get('stderr', '')}", file=sys.stderr)  # fmt: skip
        info["calibration"]["end"] = calibrate(exe["calibrate"], scale)
        info["profiles"] = run_profiles(st, exe, files, args.profile_seconds, tmp, out_base) if args.profile_seconds > 0 else {}
    finally:
        st.stop()
    info["skipped"] = st.skipped
    info["crashes"] = st.crashes
    info["summary"] = summarize(runs, cases)
    info["targets"] = targets_table(info["summary"], args.connections)
    info["runs"] = runs
    md, js = out_base.with_name(out_base.name + ".md"), out_base.with_name(out_base.name + ".json")
    md.write_text(markdown(info))
    js.write_text(json.dumps(info, indent=1) + "\n")
    print(md.read_text())
    print(f"wrote {md} and {js}", file=sys.stderr)
    if args.smoke and args.out:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
