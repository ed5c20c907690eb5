"""Long atheris campaigns over the fuzz targets, one target at a time (``scripts/fuzz``).

    scripts/fuzz [target|all|codecs ...] [--runs N] [--seconds S] [--max-len N] [--restarts N]

Corpora live in the git-ignored ``.fuzz-work/<target>/corpus`` (seeded from the shared vectors
at run time); crash inputs go to the git-ignored ``fuzz/crashes/<target>/`` with a minimized copy
(``min-<sha1>``). A crash stops libFuzzer, so the campaign records its signature, adds it to the
ignore list of this campaign and restarts on the remaining budget: one run finds every distinct
crash it can, not only the first. Crashes of still-open defects (fuzz/known_open.txt) are skipped
from the start. Executions come from libFuzzer's final stats; a JSON summary is written to
``.fuzz-work/summary.json`` (and a timestamped copy).

On the compiled build (``metaprotocol --version``; ``METAPROTOCOL_PURE_PYTHON=1`` runs the
sources) atheris cannot instrument the compiled codecs: libFuzzer sees little or no coverage and
would reduce the corpus to one input, so campaigns there pass ``-keep_seed=1`` and fuzz by
mutating the seeds (coverage-guided only where pure-Python code is reached). The differential
campaign, compiled against pure Python, is ``fuzz/differential.py`` (``scripts/fuzz differential``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz import _harness, _targets  # noqa: E402
from metaprotocol import _native  # noqa: E402

ROOT = _harness.ROOT
WORK = ROOT / ".fuzz-work"
CRASHES = ROOT / "fuzz" / "crashes"
_UNITS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


@dataclass
class Crash:
    """One distinct crash of a campaign."""

    signature: str
    stack_top: str
    artifact: str
    minimized: str = ""


@dataclass
class Result:
    """A target's campaign: executions over all restarts, wall time, distinct crashes."""

    target: str
    runs: int = 0
    seconds: float = 0.0
    restarts: int = 0
    crashes: list[Crash] = field(default_factory=list)
    stopped: str = ""

    @property
    def exec_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def seed_corpus(name: str, target: _harness.Target) -> Path:
    """Write the target's seeds and crash reproducers into its work corpus (named by content, so
    re-runs add nothing)."""
    corpus = WORK / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    reproducers = [p.read_bytes() for p in sorted((_harness.REGRESSIONS / name).glob("*"))]
    for seed in [*target.seeds(), *reproducers]:
        path = corpus / hashlib.sha1(seed).hexdigest()  # noqa: S324 - a file name, not security
        if not path.exists():
            path.write_bytes(seed)
    return corpus


def _executions(log: str) -> int:
    m = _UNITS.search(log) or _DONE.search(log)
    return int(m.group(1)) if m else 0


def _artifact(log: str) -> str:
    m = re.search(r"Test unit written to (\S+)", log)
    return m.group(1) if m else ""


def run_target(name: str, runs: int, seconds: float, max_len: int, restarts: int) -> Result:
    """Fuzz one target until ``runs`` executions or ``seconds`` pass (whichever first)."""
    target = _targets.target(name)
    result = Result(name)
    corpus = seed_corpus(name, target)
    artifacts = CRASHES / name
    artifacts.mkdir(parents=True, exist_ok=True)
    ignore = WORK / name / "ignore.txt"
    ignore.write_text("")
    sig_out = WORK / name / "signature.txt"
    env = {**os.environ, "FUZZ_IGNORE_KNOWN": "1", "FUZZ_IGNORE_FILE": str(ignore), "FUZZ_SIGNATURE_OUT": str(sig_out)}
    while result.restarts <= restarts:
        left_runs = runs - result.runs
        left_time = int(seconds - result.seconds)
        if left_runs <= 0 or left_time <= 0:
            break
        sig_out.unlink(missing_ok=True)
        cmd = [
            sys.executable, str(_targets.harness_file(name)), str(corpus),
            f"-runs={left_runs}", f"-max_total_time={left_time}", f"-max_len={max_len}",
            f"-artifact_prefix={artifacts}/", "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048",
        ]  # fmt: skip
        if _native.mode()[0] == "compiled":
            cmd.append("-keep_seed=1")  # no coverage from compiled code: keep every seed to mutate
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        result.seconds += time.monotonic() - start
        log = proc.stdout + proc.stderr
        (WORK / name / f"log-{result.restarts}.txt").write_text(log)
        result.runs += _executions(log)
        if proc.returncode == 0:
            break
        artifact = _artifact(log)
        if sig_out.exists():
            sig, top = (sig_out.read_text().splitlines() + ["", ""])[:2]
            crash = Crash(sig, top, artifact)
            if artifact and Path(artifact).exists():
                small = _harness.minimize(target, Path(artifact).read_bytes(), sig)
                path = artifacts / f"min-{hashlib.sha1(small).hexdigest()}"  # noqa: S324
                path.write_bytes(small)
                crash.minimized = str(path)
            result.crashes.append(crash)
            with ignore.open("a") as f:
                f.write(sig + "\n")
            print(f"  {name}: crash {sig} ({top})", flush=True)
            result.restarts += 1
            continue
        kind = "timeout" if "libFuzzer: timeout" in log else "out-of-memory" if "out-of-memory" in log else f"exit {proc.returncode}"
        result.crashes.append(Crash(kind, kind, artifact))
        result.stopped = kind
        print(f"  {name}: {kind}, artifact {artifact}", flush=True)
        break
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the campaigns, print executions per target and write the JSON summary."""
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=["all"], help=f"all, codecs, or any of {', '.join(_targets.TARGETS)}")
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target (default 1,000,000)")
    parser.add_argument("--seconds", type=float, default=300, help="wall-time cap per target (default 300)")
    parser.add_argument("--max-len", type=int, default=512, help="largest input libFuzzer makes")
    parser.add_argument("--restarts", type=int, default=10, help="new crashes to skip past per target")
    args = parser.parse_args(argv)
    names: list[str] = []
    for t in args.targets:
        names += list(_targets.TARGETS) if t == "all" else list(_targets.CODEC_TARGETS) if t == "codecs" else [t]
    unknown = [n for n in names if n not in _targets.TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    mode, why = _native.mode()
    print(f"hot path: {mode} ({why})", flush=True)
    results = []
    for name in names:
        print(f"fuzzing {name} (up to {args.runs} runs, {args.seconds:.0f} s)", flush=True)
        results.append(run_target(name, args.runs, args.seconds, args.max_len, args.restarts))
    print(f"\n{'target':18} {'executions':>12} {'seconds':>8} {'exec/s':>8}  crashes")
    for r in results:
        print(f"{r.target:18} {r.runs:12,} {r.seconds:8.0f} {r.exec_per_s:8.0f}  {len(r.crashes)}")
        for c in r.crashes:
            print(f"{'':20}{c.signature}: {c.stack_top}")
    summary = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "mode": mode,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip(),
        "targets": [{**asdict(r), "exec_per_s": round(r.exec_per_s)} for r in results],
    }
    WORK.mkdir(exist_ok=True)
    text = json.dumps(summary, indent=2)
    (WORK / "summary.json").write_text(text)
    (WORK / f"summary-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    print(f"\nsummary: {WORK / 'summary.json'}")
    return 1 if any(r.crashes for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
