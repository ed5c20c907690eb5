"""aeraki-ctl serve --admin -> metaprotocol proxy --xds, as processes, Dubbo traffic flowing: a bad
edit to a MetaRouter, or a half-written file, moves no traffic; a later valid edit is applied."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml

from metaprotocol_apps.dubbo import DubboConsumer
from tests.integration.test_xds_live import ENV, HOST, ROOT, Providers, calls, providers, write_config  # noqa: F401 - fixture
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROUTER = "MetaRouter meta-dubbo/test-metaprotocol-dubbo-route"


def _status(admin: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())  # type: ignore[no-any-return]


def _wait_state(admin: int, state: str, syncs_after: int = 0) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = _status(admin)
        objects = status["objects"]
        if objects.get(ROUTER, {}).get("state") == state and status["syncs"] > syncs_after:  # type: ignore[union-attr, operator]
            return status
        time.sleep(0.05)
    raise AssertionError(f"{ROUTER} never became {state}: {status}")


def _write_router(d: Path, text: str) -> None:
    tmp = d / "metarouter.yaml.tmp"
    tmp.write_text(text)
    tmp.replace(d / "metarouter.yaml")


def test_a_bad_metarouter_edit_and_a_half_written_file_move_no_traffic(tmp_path: Path, providers: Providers) -> None:  # noqa: F811
    write_config(tmp_path, providers.ports, (30, 70))
    xds_port, admin, listen_port = free_port(), free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(tmp_path), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--port-offset", str(listen_port - 20880), "--admin", f"127.0.0.1:{admin}", "--log-level", "CRITICAL"], env=ENV)  # fmt: skip
    proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "t", "--log-level", "WARNING"], env=ENV)
    try:
        wait_port(admin, 20)
        wait_port(listen_port, 20)
        good = (tmp_path / "metarouter.yaml").read_text()

        async def split(c: DubboConsumer) -> Counter[str]:
            counts, failures = await calls(listen_port, 400, c)
            assert failures == 0
            return counts

        async def scenario() -> None:
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                before = await split(c)
                assert 70 <= before["v1"] <= 170, before  # 30 % of 400 = 120, sd 9
                syncs = _status(admin)["syncs"]
                # A bad edit: an unknown subset. Rejected alone; the last valid version serves.
                bad = yaml.safe_load(good)
                bad["spec"]["routes"][0]["route"][0]["destination"]["subset"] = "v9"
                _write_router(tmp_path, yaml.safe_dump(bad))
                status = _wait_state(admin, "serving-last-valid", syncs)  # type: ignore[arg-type]
                assert any("v9" in p for p in status["objects"][ROUTER]["problems"])  # type: ignore[index]
                after = await split(c)
                assert 70 <= after["v1"] <= 170 and set(after) == {"v1", "v2"}, after  # no fail-open to 50/50
                out = subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "status", "--admin", f"127.0.0.1:{admin}"], capture_output=True, text=True, env=ENV, timeout=30, check=False)
                assert out.returncode == 1 and "serving-last-valid" in out.stdout
                # A half-written file: nothing changes either.
                syncs = _status(admin)["syncs"]
                _write_router(tmp_path, good[: len(good) // 2] + "\n  - [unclosed\n")
                _wait_state(admin, "serving-last-valid", syncs)  # type: ignore[arg-type]
                half = await split(c)
                assert 70 <= half["v1"] <= 170, half
                # A later valid edit is applied.
                syncs = _status(admin)["syncs"]
                write_config(tmp_path, providers.ports, (0, 100))
                _wait_state(admin, "accepted", syncs)  # type: ignore[arg-type]
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    counts, failures = await calls(listen_port, 100, c)
                    if counts == Counter({"v2": 100}):
                        break
                    await asyncio.sleep(0.1)
                assert failures == 0 and counts == Counter({"v2": 100}), counts

        asyncio.run(scenario())
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
