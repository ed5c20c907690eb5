"""The README's main job: `metaprotocol demo dubbo`, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_dubbo_demo_json_summary_meets_the_acceptance_criteria() -> None:
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "metaprotocol.cli", "demo", "dubbo", "--json"],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 30
    summary = json.loads(out.stdout)
    p1, p2 = summary["phase1"], summary["phase2"]
    assert p1["calls"] == p2["calls"] == 1000
    assert p1["failures"] == p2["failures"] == 0
    assert p1["weights"] == {"v1": 20, "v2": 80} and p2["weights"] == {"v2": 100}
    assert abs(p1["counts"]["v1"] / 10 - 20) <= 5  # within 5 points of 20/80
    assert p2["counts"] == {"v1": 0, "v2": 1000}
    # The change went over xDS and landed while calls continued on the same connection.
    assert summary["transition"]["failures"] == 0 and summary["transition"]["seconds"] < 10
    assert summary["nacks"] == []


def test_demo_is_a_plugin_subcommand_and_the_core_imports_no_app() -> None:
    from metaprotocol.cli import _parser

    assert "demo" in _parser().format_help()
