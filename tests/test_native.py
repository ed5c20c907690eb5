"""The compiled hot path (mypyc, setup.py) and its pure-Python reference behave the same.

CI builds the compiled modules (scripts/install); the suite then runs on them, and these tests
run the reference too: the same seeded traffic through both must give byte-identical results,
and the core's own tests must pass on the sources alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from metaprotocol import _native

ROOT = Path(__file__).resolve().parents[1]
BUILT = (ROOT / "metaprotocol" / "_native_build.json").exists()


def _python(code: str, pure: bool) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(_native.ENV, None)
    if pure:
        env[_native.ENV] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT).stdout


def _native_sources() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["metaprotocol"]["native"]["modules"])


def _module(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".").replace("codecs.", "metaprotocol_codecs.", 1)


LOAD_ALL = "import importlib, json, metaprotocol._native as n; mods = {mods!r}; [importlib.import_module(m) for m in mods]; print(json.dumps([n.mode(), n.compiled_modules()]))"


@pytest.mark.skipif(shutil.which("gcc") is None or bool(os.environ.get(_native.ENV)), reason="no C compiler, or pure Python asked for")
def test_where_a_compiler_exists_every_listed_module_runs_compiled() -> None:
    assert BUILT, "scripts/install did not build the native modules: see .venv/native-build.log"
    mods = [_module(s) for s in _native_sources()]
    mode, compiled = json.loads(_python(LOAD_ALL.format(mods=mods), pure=False))
    assert mode == ["compiled", "mypyc"]
    assert compiled == sorted(mods)


def test_the_reference_runs_when_asked_and_loads_no_compiled_module() -> None:
    mods = [_module(s) for s in _native_sources()]
    mode, compiled = json.loads(_python(LOAD_ALL.format(mods=mods), pure=True))
    assert mode == ["pure", f"{_native.ENV} is set"] and compiled == []


def test_a_changed_source_makes_the_build_stale() -> None:
    source = _native_sources()[0]
    assert "changed since the native build" in _native._stale({source: "0" * 64})
    assert "is missing" in _native._stale({"metaprotocol/no_such_module.py": "0" * 64})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_compiled_and_reference_give_identical_results(seed: int) -> None:
    """Seeded Dubbo, Redis and multiplexed traffic with retries, mirrors, faults, fan-out, rate
    limits, timeouts, resets and garbage: every byte out and every counter must agree."""
    script = f"import runpy, sys; sys.argv = ['s', '{seed}']; runpy.run_path('tests/native_scenarios.py', run_name='__main__')"
    compiled = json.loads(_python(script, pure=False))
    reference = json.loads(_python(script, pure=True))
    assert compiled == reference
    assert all(run["clients"] and run["stats"] for run in reference.values())


def test_the_core_tests_pass_on_the_pure_python_reference() -> None:
    env = {**os.environ, _native.ENV: "1", "PYTHONPATH": str(ROOT)}
    targets = ["tests/proxy", "tests/spi", "tests/router", "tests/cluster", "tests/codecs", "-k", "not fuzz"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--timeout", "300", *targets],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
