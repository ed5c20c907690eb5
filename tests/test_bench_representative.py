"""The representative benchmark suite (bench/representative/, issue 15) runs end to end.

A smoke test of fixed size, with no timing assertion (a benchmark is never a timed test): the
corpora build and decode with the project's decoders, the C tools build, one tiny run of the one
command goes through our proxy for Dubbo, Thrift and Redis and gets the expected reply mix, and
each installed peer answers the mix as the provider does (peers not installed are skipped).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.representative import check, corpus, run
from bench.representative.targets import build_c, start_all

EXPECTED_CLASSES = {
    "dubbo": {corpus.expected_dubbo_class(m) for m in corpus.METHODS},
    "thrift": {corpus.expected_thrift_class(m) for m in corpus.METHODS},
    "redis": {f"{ord(c):04x}" for c in "$+*:"},
}


def _need(*programs: str) -> None:
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (scripts/install, scripts/bench-install)")


def test_corpora_build_and_decode(tmp_path: Path) -> None:
    files = corpus.build_all(tmp_path, 256, keys=1000)
    frames = {p: corpus.read_corpus(files[p]) for p in ("dubbo", "thrift", "redis")}
    assert set(corpus.verify_dubbo(frames["dubbo"])) == {m.name for m in corpus.METHODS}
    assert set(corpus.verify_thrift(frames["thrift"])) == {m.thrift_name for m in corpus.METHODS}
    assert set(corpus.verify_redis(frames["redis"])) == {"GET", "SET", "MGET", "INCR"}
    for p in ("dubbo", "thrift"):
        assert len({f.data for f in frames[p]}) == len(frames[p])  # distinct frames, distinct trace ids
    kinds = {m.kind for m in corpus.METHODS}
    assert kinds == {"get", "update", "query"} and {m.shape for m in corpus.METHODS} == {"value", "value+attachments", "exception", "error"}
    sizes = [corpus.value_size(k) for k in range(1000)]
    assert 16 <= min(sizes) and max(sizes) <= 4096


def test_one_command_end_to_end_through_our_proxy(tmp_path: Path) -> None:
    _need("gcc", "redis-server")
    assert run.main(["--smoke", "--out", str(tmp_path / "rep")]) == 0
    info = json.loads((tmp_path / "rep.json").read_text())
    for proto in ("dubbo", "thrift", "redis"):
        checked = info["reply_check"][proto]["metaprotocol"]
        assert checked["wrong"] == {} and checked["ok"] == (8 if proto == "redis" else 24), checked
        rows = [r for r in info["summary"] if r["protocol"] == proto and r["target"] == "metaprotocol"]
        assert rows and all(r["reps"] == 1 and r["rps"]["median"] > 0 and not r["failures"] for r in rows), rows
        for r in rows:
            assert set(r["classes"]) <= EXPECTED_CLASSES[proto], r["classes"]
    for r in info["runs"]:
        assert r["result"]["unmatched"] == 0 and r["result"]["errors"] == 0, r
    md = (tmp_path / "rep.md").read_text()
    assert "Calibration" in md and "| **metaprotocol** |" in md and "## Targets (issue 15)" in md


def test_installed_peers_answer_the_mix(tmp_path: Path) -> None:
    _need("gcc", "redis-server")
    exe = build_c(tmp_path)
    files = corpus.build_all(tmp_path / "corpus", 128, keys=1000)
    st = start_all(tmp_path, exe, files, ["dubbo", "thrift", "redis"], peers=True)
    try:
        run.prefill_redis(st.targets["redis"][0].port, 1000)
        checked = run.check_replies(st, files, ["dubbo", "thrift", "redis"])
    finally:
        st.stop()
    peers = {proto: [name for name in results if name not in ("direct", "metaprotocol")] for proto, results in checked.items()}
    for proto, names in peers.items():
        for name in names:
            assert checked[proto][name]["wrong"] == {} and not checked[proto][name].get("error"), (proto, name, checked[proto][name])
    if st.skipped:
        pytest.skip("peers not installed: " + ", ".join(st.skipped) + " (scripts/bench-install); the installed ones answered the mix")
    assert check.REDIS_TYPES
