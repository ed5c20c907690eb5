"""The atheris harnesses under fuzz/, run without atheris: each target's TestOneInput over its
seeds (read from the shared vectors) plus a fixed number of deterministic mutations, and every
committed crash reproducer under fuzz/regressions/ (those of still-open defects, listed in
fuzz/known_open.txt, are expected to fail until fixed: xfail, not strict).

Only documented exceptions (MetaProtocolError; HessianDecodeError for the Hessian targets) may
escape a codec; see fuzz/_harness.py. Long campaigns: scripts/fuzz.

A small differential run (fuzz/differential.py) feeds the same inputs to the compiled codecs and
to their pure-Python sources, in two processes, and requires identical outcomes."""

from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fuzz import _harness, _targets  # noqa: E402

MUTATIONS = 1000
"""Mutated inputs per target: all eleven targets together stay well under 30 s on two slow cores."""

_KNOWN = {k.reproducer: k for k in _harness.known_open()}
_KNOWN_SIGNATURES = {k.signature for k in _KNOWN.values()}


def _harness_module(name: str) -> ModuleType:
    path = _targets.harness_file(name)
    spec = importlib.util.spec_from_file_location(f"fuzz_harness_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_target_has_a_harness_file() -> None:
    files = {p.stem for p in (ROOT / "fuzz").glob("*.py") if not p.stem.startswith("_") and p.stem not in ("campaign", "differential")}
    assert files == set(_targets.TARGETS)


@pytest.mark.parametrize("name", list(_targets.TARGETS))
def test_harness_on_seeds_and_mutations(name: str) -> None:
    module = _harness_module(name)
    seeds = module.TARGET.seeds()
    assert seeds, f"{name}: no seeds (are the shared vectors at {_harness.vectors_dir()}?)"
    failures: dict[str, str] = {}
    inputs = [*seeds, *_harness.mutations(seeds, MUTATIONS, seed=zlib.crc32(name.encode()))]
    for data in inputs:
        try:
            module.TestOneInput(data)
        except (Exception, _harness.Hang) as exc:  # a hang is an exception here (a CPU-time timer)
            sig = _harness.signature(exc)
            if sig not in _KNOWN_SIGNATURES:  # a still-open defect is tracked by its reproducer
                failures.setdefault(sig, f"{_harness.stack_top(exc)} on {data[:48]!r}")
    assert not failures, "\n".join(f"{sig}: {where}" for sig, where in failures.items())


def _regressions() -> list[object]:
    params: list[object] = []
    for path in sorted(_harness.REGRESSIONS.glob("*/*")):
        key = f"{path.parent.name}/{path.name}"
        known = _KNOWN.get(key)
        marks = [pytest.mark.xfail(strict=False, reason=f"open: {known.note}")] if known else []
        params.append(pytest.param(path.parent.name, path, id=key, marks=marks))
    return params


@pytest.mark.parametrize(("name", "path"), _regressions())
def test_regression_reproducer(name: str, path: Path) -> None:
    """A crash once found stays fixed (the raw exception would propagate here)."""
    _targets.target(name).test_one_input(path.read_bytes())


def test_known_open_entries_have_reproducers() -> None:
    for key in _KNOWN:
        assert (_harness.REGRESSIONS / key).is_file(), f"fuzz/known_open.txt lists {key}, which is not under fuzz/regressions"


DIFFERENTIAL_INPUTS = 300
"""Inputs per target of the differential smoke run (two worker processes, a few seconds)."""


def test_compiled_and_pure_codecs_agree_on_fuzz_inputs() -> None:
    """Every decode, SPI call and error of the compiled codecs is the pure-Python one's."""
    from fuzz import differential

    mode, problems = differential.smoke(DIFFERENTIAL_INPUTS)
    if not mode.startswith("compiled"):
        pytest.skip(f"the compiled build is not in use ({mode}); tests/test_native.py says why")
    assert not problems, "\n".join(problems)
