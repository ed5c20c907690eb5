"""Real Envoy parses what aeraki-ctl serves our proxies: it receives and ACKs the clusters,
endpoints and routes of the MetaProtocol data plane.

The node says ``DATA_PLANE: metaprotocol``, so aeraki-ctl serves it our proxies' rendering (an
Envoy node would get Envoy's own filters, tests/envoy). Stock Envoy has no MetaProtocol network
filter, so it subscribes to clusters (CDS+EDS over ADS) and, through a probe HTTP listener, to the
route table (RDS over ADS): this pins that those resources are valid Envoy messages. No update may
be rejected.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from aeraki_ctl.envoy.bootstrap import envoy_bootstrap as bootstrap_of
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ROUTE = "org.apache.dubbo.samples.basic.api.demoservice_20880"


def envoy_bootstrap(xds_port: int, admin: int, probe: int) -> dict[str, object]:
    """``aeraki-ctl envoy-bootstrap``'s, as a MetaProtocol node, with a probe HTTP listener whose
    routes come over RDS (and no LDS: the MetaProtocol listeners are not Envoy's to run)."""
    tree = bootstrap_of(("127.0.0.1", xds_port), "envoy-test", cluster="test", admin_port=admin, metadata={"DATA_PLANE": "metaprotocol"})
    ads = {"ads": {}, "resource_api_version": "V3"}
    del tree["dynamic_resources"]["lds_config"]  # type: ignore[index]
    tree["static_resources"]["listeners"] = [{  # type: ignore[index]
        "name": "rds_probe",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": probe}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "probe",
            "rds": {"route_config_name": ROUTE, "config_source": ads},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}],
    }]  # fmt: skip
    return tree


def stats(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as resp:
        out = {}
        for line in resp.read().decode().splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


def test_envoy_accepts_what_aeraki_ctl_serves(tmp_path: Path) -> None:
    xds_port, admin, probe = free_port(), free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(ROOT / "examples/aeraki/dubbo-demo"),
                            "--xds-address", f"127.0.0.1:{xds_port}", "--log-level", "WARNING"], env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    (tmp_path / "envoy.yaml").write_text(yaml.safe_dump(envoy_bootstrap(xds_port, admin, probe)))
    envoy = subprocess.Popen([str(Path(sys.executable).parent / "envoy"), "-c", str(tmp_path / "envoy.yaml"), "--concurrency", "1", "--log-level", "error", "--base-id", str(free_port())],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(xds_port, 20)
        wait_port(admin, 30)
        deadline = time.monotonic() + 20
        s: dict[str, int] = {}
        while time.monotonic() < deadline:
            s = stats(admin)
            if s.get("cluster_manager.cds.update_success", 0) >= 1 and s.get(f"http.probe.rds.{ROUTE}.update_success", 0) >= 1 and s.get("cluster_manager.active_clusters", 0) >= 4:
                break
            time.sleep(0.2)
        assert s.get("cluster_manager.cds.update_success", 0) >= 1, s
        assert s.get("cluster_manager.cds.update_rejected", 0) == 0
        assert s.get(f"http.probe.rds.{ROUTE}.update_success", 0) >= 1
        assert s.get(f"http.probe.rds.{ROUTE}.update_rejected", 0) == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as resp:
            clusters = resp.read().decode()
        # Endpoints arrived over EDS for each subset cluster.
        assert "outbound|20880|v1|org.apache.dubbo.samples.basic.api.demoservice::127.0.0.1:20881::" in clusters
        assert "outbound|20880|v2|org.apache.dubbo.samples.basic.api.demoservice::127.0.0.1:20882::" in clusters
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/config_dump", timeout=5) as resp:
            dump = resp.read().decode()
        assert "traffic-split" in dump and '"weight": 80' in dump
        rejected = {k: v for k, v in s.items() if k.endswith("update_rejected") and v}
        assert not rejected, rejected
    finally:
        envoy.terminate()
        ctl.terminate()
        envoy.wait(10)
        ctl.wait(10)
