"""aeraki-ctl serve -> metaprotocol proxy --xds, as processes: live updates with traffic flowing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from metaprotocol_apps.dubbo import DubboConsumer, DubboProvider
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
IFACE = "org.apache.dubbo.samples.basic.api.DemoService"
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Providers:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.ports = {}
        self.items = []
        for v in ("v1", "v2"):
            p = DubboProvider(name=v)
            p.expose(IFACE, "sayHello", lambda who, v=v: f"Hello {who}, response from provider-{v}")
            asyncio.run_coroutine_threadsafe(p.start(), self.loop).result(5)
            self.ports[v] = p.port
            self.items.append(p)

    def stop(self) -> None:
        for p in self.items:
            asyncio.run_coroutine_threadsafe(p.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


def write_config(d: Path, ports: dict[str, int], weights: tuple[int, int]) -> None:
    service = (ROOT / "examples/aeraki/dubbo-demo/service.yaml").read_text().replace("20881", str(ports["v1"])).replace("20882", str(ports["v2"]))
    (d / "service.yaml").write_text(service)
    router = yaml.safe_load((ROOT / "examples/aeraki/dubbo-demo/metarouter.yaml").read_text())
    route = [{"destination": {"host": HOST, "subset": s}, "weight": w} for s, w in zip(("v1", "v2"), weights, strict=True) if w]
    router["spec"]["routes"][0]["route"] = route
    tmp = d / "metarouter.yaml.tmp"
    tmp.write_text(yaml.safe_dump(router))
    tmp.replace(d / "metarouter.yaml")  # atomic: the watcher never sees half a file


def start_ctl(config_dir: Path, xds_port: int, offset: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config_dir), "--xds-address", f"127.0.0.1:{xds_port}",
                             "--port-offset", str(offset), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    wait_port(xds_port, 20)
    return proc


async def calls(port: int, n: int, consumer: DubboConsumer | None = None) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    failures = 0

    async def one(c: DubboConsumer, i: int) -> None:
        nonlocal failures
        try:
            counts[(await c.call(IFACE, "sayHello", [f"x{i}"], attachments={"foo": "bar"}, timeout=5)).rsplit("-", 1)[1]] += 1
        except Exception:  # noqa: BLE001 - counted
            failures += 1

    assert consumer is not None
    for start in range(0, n, 20):
        await asyncio.gather(*(one(consumer, i) for i in range(start, min(n, start + 20))))
    return counts, failures


def test_live_update_over_xds_with_no_failed_call_and_control_plane_loss(tmp_path: Path, providers: Providers) -> None:
    write_config(tmp_path, providers.ports, (20, 80))
    xds_port, listen_port = free_port(), free_port()
    offset = listen_port - 20880
    ctl = start_ctl(tmp_path, xds_port, offset)
    proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "test", "--log-level", "WARNING"], env=ENV)
    try:
        wait_port(listen_port, 20)

        async def scenario() -> None:
            nonlocal ctl
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                counts, failures = await calls(listen_port, 500, c)
                assert failures == 0 and 50 <= counts["v1"] <= 150, counts  # 20 % of 500 = 100, sd 9
                # Change the MetaRouter while traffic flows on the same connection.
                background = asyncio.ensure_future(calls(listen_port, 600, c))
                await asyncio.sleep(0.1)
                write_config(tmp_path, providers.ports, (0, 100))
                _, failures_during = await background
                assert failures_during == 0
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    counts, failures = await calls(listen_port, 100, c)
                    if counts["v1"] == 0:
                        break
                assert failures == 0 and counts == Counter({"v2": 100}), counts
                # The control plane goes away: the proxy keeps serving the last good config.
                ctl.send_signal(signal.SIGTERM)
                ctl.wait(10)
                counts, failures = await calls(listen_port, 100, c)
                assert failures == 0 and counts == Counter({"v2": 100})
                # It comes back with a different configuration: the proxy resynchronises.
                write_config(tmp_path, providers.ports, (100, 0))
                ctl = start_ctl(tmp_path, xds_port, offset)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    counts, failures = await calls(listen_port, 50, c)
                    if counts["v1"] == 50:
                        break
                    await asyncio.sleep(0.2)
                assert failures == 0 and counts == Counter({"v1": 50}), counts

        asyncio.run(scenario())
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
