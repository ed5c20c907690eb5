"""aeraki-ctl serve --admin and metaprotocol proxy --xds, as processes: the proxy rejects one
resource (a listener whose port is taken on its host), applies the others (traffic flows through the
other listener), NACKs naming it, and `aeraki-ctl proxy-status` shows NACKED with the reason and
SYNCED for the rest; the proxy's /config_dump and /stats show the NACK too."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from metaprotocol_apps.dubbo import DubboConsumer
from tests.integration.test_xds_live import IFACE, Providers, providers, write_config  # noqa: F401 - providers is a fixture
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
OTHER = """\
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: other
  namespace: meta-dubbo
spec:
  hosts:
  - org.apache.dubbo.samples.other
  ports:
  - number: 20990
    name: tcp-metaprotocol-dubbo
    protocol: TCP
  resolution: STATIC
  endpoints:
  - address: 127.0.0.1
    ports: {tcp-metaprotocol-dubbo: PORT}
"""


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aeraki_ctl.cli", *args], env=ENV, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_nacked_listener_shows_in_proxy_status_and_the_rest_is_applied(tmp_path: Path, providers: Providers, delta: bool) -> None:  # noqa: F811 - fixture
    write_config(tmp_path, providers.ports, (0, 100))
    (tmp_path / "other.yaml").write_text(OTHER.replace("PORT", str(providers.ports["v1"])))
    xds_port, admin_port, proxy_admin = free_port(), free_port(), free_port()
    for _ in range(100):  # a port offset whose second listener's port we can hold (it is not free_port's)
        listen_port = free_port()
        offset = listen_port - 20880
        taken = socket.socket()  # the second listener's port is busy on the proxy's host
        try:
            taken.bind(("127.0.0.1", 20990 + offset))
            break
        except OSError:
            taken.close()
    taken.listen()
    serve = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(tmp_path), "--xds-address", f"127.0.0.1:{xds_port}",
                              "--admin", f"127.0.0.1:{admin_port}", "--port-offset", str(offset), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    proxy = None
    try:
        wait_port(admin_port, 20)
        deadline = time.monotonic() + 20
        while http(admin_port, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "aeraki-ctl never ready"
            time.sleep(0.1)
        assert http(admin_port, "/healthz") == (200, "ok\n")
        proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "proxy-1",
                                  "--admin", f"127.0.0.1:{proxy_admin}", "--log-level", "CRITICAL", *(["--xds-delta"] if delta else [])], env=ENV)  # fmt: skip
        wait_port(listen_port, 20)

        async def traffic() -> set[str]:
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                replies = [await c.call(IFACE, "sayHello", ["x"], attachments={"foo": "bar"}, timeout=5) for _ in range(10)]
            return {r.rsplit("-", 1)[1] for r in replies}

        assert asyncio.run(traffic()) == {"v2"}  # the valid listener serves, with its route
        # aeraki-ctl's view: LDS NACKED with the reason, every other type SYNCED.
        deadline = time.monotonic() + 20
        while True:
            out = ctl("proxy-status", "--admin", f"127.0.0.1:{admin_port}")
            lines = out.stdout.splitlines()
            if len(lines) > 1 and lines[1].split()[:6] == ["proxy-1", "metaprotocol", "SYNCED", "NACKED", "SYNCED", "SYNCED"]:
                break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.2)
        assert out.returncode == 0 and lines[0].split()[:6] == ["NAME", "DATA-PLANE", "CDS", "LDS", "EDS", "RDS"]
        assert lines[2].startswith("    LDS NACKED version ") and f"cannot listen on 127.0.0.1:{20990 + offset}" in lines[2], lines
        assert "org.apache.dubbo.samples.other_20990: " in lines[2]
        proxies = json.loads(http(admin_port, "/proxies")[1])["proxies"]
        assert [p["node_id"] for p in proxies] == ["proxy-1"] and proxies[0]["types"]["LDS"]["nack"]["nonce"]
        assert proxies[0]["stream"] == ("delta" if delta else "sotw")
        metrics = http(admin_port, "/metrics")[1].splitlines()
        assert 'aeraki_ctl_xds_nacks_total{type="LDS"} 1' in metrics and "aeraki_ctl_connected_proxies 1" in metrics
        status = ctl("status", "--admin", f"127.0.0.1:{admin_port}")
        assert status.returncode == 0 and "ServiceEntry meta-dubbo/other" in status.stdout, status.stdout + status.stderr
        # The proxy's own view.
        dump = json.loads(http(proxy_admin, "/config_dump")[1])
        lds = dump["xds"]["types"]["LDS"]
        assert lds["state"] == "NACKED" and list(lds["last_nack"]["rejected"]) == ["org.apache.dubbo.samples.other_20990"]
        assert dump["xds"]["types"]["RDS"]["state"] == "ACKED" and dump["xds"]["connected"] is True
        assert 'metaprotocol_xds_update_rejected_total{type="LDS"} 1' in http(proxy_admin, "/stats")[1].splitlines()
    finally:
        taken.close()
        for p in (proxy, serve):
            if p is not None:
                p.terminate()
                p.wait(10)
    assert ctl("proxy-status", "--admin", f"127.0.0.1:{admin_port}").returncode == 4  # nothing answers any more
