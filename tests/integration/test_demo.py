"""The README's main job: `metaprotocol demo dubbo`, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run_demo(*flags: str) -> dict[str, Any]:
    """``metaprotocol demo dubbo --json`` as a user runs it; its summary."""
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "metaprotocol.cli", "demo", "dubbo", "--json", *flags],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - start < 30
    summary: dict[str, Any] = json.loads(out.stdout)
    return summary


def assert_acceptance(summary: dict[str, Any]) -> None:
    """Both phases within tolerance of the weights, no failed call, the edit live over xDS."""
    p1, p2 = summary["phase1"], summary["phase2"]
    assert p1["calls"] == p2["calls"] == 1000
    assert p1["failures"] == p2["failures"] == 0
    assert p1["weights"] == {"v1": 20, "v2": 80} and p2["weights"] == {"v2": 100}
    assert abs(p1["counts"]["v1"] / 10 - 20) <= 5  # within 5 points of 20/80
    assert p2["counts"] == {"v1": 0, "v2": 1000}
    # The change went over xDS and landed while calls continued on the same connection.
    assert summary["transition"]["failures"] == 0 and summary["transition"]["seconds"] < 10
    assert summary["nacks"] == []
    assert summary["downstream_connections"] == 1  # the consumer's one connection carried both phases


def test_dubbo_demo_json_summary_meets_the_acceptance_criteria() -> None:
    summary = run_demo()
    assert summary["data_plane"] == "metaprotocol"
    assert_acceptance(summary)


def test_dubbo_demo_on_stock_envoy_meets_the_same_criteria() -> None:
    """``--data-plane envoy``: stock Envoy in the middle, configured by the demo's aeraki-ctl over
    ADS only; the live edit reaches it as a route table reload (its ``update_rejected`` counters,
    the ``nacks`` here, stay at zero), and the Envoy process is gone when the demo returns."""
    summary = run_demo("--data-plane", "envoy")
    assert summary["data_plane"] == "envoy" and summary["envoy"]["version"].startswith("1.")
    assert_acceptance(summary)
    assert not Path(f"/proc/{summary['envoy']['pid']}").exists()


def test_demo_is_a_plugin_subcommand_and_the_core_imports_no_app() -> None:
    from metaprotocol.cli import _parser

    assert "demo" in _parser().format_help()
