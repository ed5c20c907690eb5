"""``aeraki-ctl envoy-bootstrap``: what it prints is a bootstrap the real Envoy loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.envoy_node import envoy_binary


def bootstrap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", "envoy-bootstrap", *args], capture_output=True, text=True, timeout=60)


def test_the_printed_bootstrap_is_valid_for_envoy(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    out = bootstrap("--xds", "aeraki-ctl.aeraki.svc:15010", "--node-id", "gw-1", "--admin-port", "9901", "--token-file", str(token), "--delta")
    assert out.returncode == 0, out.stderr
    tree = yaml.safe_load(out.stdout)
    assert tree["node"] == {"id": "gw-1", "cluster": "aeraki-envoy", "metadata": {"DATA_PLANE": "envoy"}}
    ads = tree["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC" and ads["grpc_services"][0]["initial_metadata"] == [{"key": "authorization", "value": "Bearer s3cret"}]
    path = tmp_path / "envoy.yaml"
    path.write_text(out.stdout)
    check = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "error"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    as_json = bootstrap("--xds", "127.0.0.1:15010", "--node-id", "gw-2", "--format", "json")
    assert json.loads(as_json.stdout)["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "127.0.0.1", "port_value": 15010}}


def test_an_unreadable_token_file_is_a_usage_error(tmp_path: Path) -> None:
    out = bootstrap("--xds", "127.0.0.1:15010", "--node-id", "gw", "--token-file", str(tmp_path / "missing"))
    assert out.returncode == 2 and "cannot read" in out.stderr
