"""End to end on loopback, Kubernetes as the only source: the contract server -> aeraki-ctl's
controller (KubernetesSource, in process, ADS on gRPC; then ``aeraki-ctl serve --kubernetes
--kubeconfig`` as a process) -> metaprotocol proxy --xds (a process) -> Dubbo providers. A Service named in Aeraki's convention with EndpointSlices and Pods is the
routable host; a MetaRouter splits by weight, an edit re-splits live, a bad edit moves no traffic,
and a Pod relabelled moves its endpoint between subsets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aeraki_ctl.controller import Controller
from aeraki_ctl.lifecycle import ACCEPTED, SERVING_LAST_VALID
from aeraki_ctl.translate import Options
from aeraki_ctl.xds.server import AdsServer, start_server
from metaprotocol_apps.dubbo import DubboConsumer
from tests.integration.test_xds_live import ENV, Providers, calls, providers  # noqa: F401 - fixture
from tests.k8s_contract import ContractServer
from tests.servers import free_port, wait_port

pytest.importorskip("kubernetes_asyncio")
from kubernetes_asyncio import client  # noqa: E402

from aeraki_ctl.sources.kubernetes import KubernetesSource  # noqa: E402
from tests.ctl.test_kubernetes import NS, SVC_HOST, destination_rule, endpoint_slice, k8s_service, metarouter, pod  # noqa: E402

pytestmark = pytest.mark.integration
ROUTER = f"MetaRouter {NS}/route"


async def _until(pred: Callable[[], object], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


def test_kubernetes_source_end_to_end(providers: Providers) -> None:  # noqa: F811
    async def scenario() -> None:
        api = ContractServer()
        await api.start()
        api.apply(pod("provider-v1", "v1"))
        api.apply(pod("provider-v2", "v2"))
        api.apply(k8s_service())
        api.apply(endpoint_slice("demo-v1", providers.ports["v1"], [("127.0.0.1", "provider-v1", True)]))
        api.apply(endpoint_slice("demo-v2", providers.ports["v2"], [("127.0.0.1", "provider-v2", True)]))
        api.apply(destination_rule(SVC_HOST, "demo"))
        api.apply(metarouter((30, 70), host=SVC_HOST))

        listen_port = free_port()
        ads = AdsServer()
        grpc_server, xds_port = await start_server(ads, "127.0.0.1:0")
        source = KubernetesSource(client.ApiClient(client.Configuration(host=api.url)), backoff=0.05, max_backoff=0.5)
        controller = Controller(None, ads, Options("127.0.0.1", listen_port - 20880), quiet=0.05, sources=[source])
        task = asyncio.ensure_future(controller.run())
        proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "k8s", "--log-level", "WARNING"], env=ENV)
        try:
            await _until(lambda: controller.objects.get(ROUTER) is not None and controller.objects[ROUTER].state == ACCEPTED)

            async def split(consumer: DubboConsumer) -> dict[str, int]:
                counts, failures = await calls(listen_port, 300, consumer)
                assert failures == 0
                return dict(counts)

            async def listening() -> bool:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", listen_port)
                except OSError:
                    return False
                w.close()
                return True

            deadline = time.monotonic() + 20
            while not await listening():
                assert time.monotonic() < deadline, "the proxy never listened"
                await asyncio.sleep(0.1)

            async with DubboConsumer("127.0.0.1", listen_port) as consumer:
                first = await split(consumer)
                assert set(first) == {"v1", "v2"} and 0.15 < first["v1"] / 300 < 0.45, first

                # an edit re-splits live
                api.apply(metarouter((100, 0), host=SVC_HOST))
                await _until(lambda: controller.objects[ROUTER].valid_versions == 2)
                await asyncio.sleep(0.5)  # the proxy applies the pushed route table
                assert await split(consumer) == {"v1": 300}

                # a bad edit is reported and moves no traffic
                bad = metarouter((100, 0), host=SVC_HOST)
                bad["spec"]["routes"][0]["route"][0]["weight"] = -5
                api.apply(bad)
                await _until(lambda: controller.objects[ROUTER].state == SERVING_LAST_VALID)
                assert await split(consumer) == {"v1": 300}

                # provider-v2's Pod relabelled v1: its endpoint joins subset v1
                api.apply(pod("provider-v2", "v1"))
                deadline = time.monotonic() + 15
                while True:  # calls in flight while the cluster's endpoints change may fail
                    counts, _ = await calls(listen_port, 100, consumer)
                    if set(counts) == {"v1", "v2"}:
                        break
                    assert time.monotonic() < deadline, counts
                    await asyncio.sleep(0.2)
                settled = await split(consumer)  # then every call succeeds, on both providers
                assert set(settled) == {"v1", "v2"}, settled
        finally:
            proxy.terminate()
            proxy.wait(10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await grpc_server.stop(0)
            await api.close()

    asyncio.run(scenario())


class ThreadedContract:
    """The contract server on its own loop in a thread, for a test that runs aeraki-ctl as a process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = ContractServer()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def call(self, fn: Callable[..., object], *args: object) -> object:
        async def on_loop() -> object:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _status(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=5) as r:  # noqa: S310 - loopback
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_serve_kubernetes_with_a_kubeconfig_as_a_process(tmp_path: Path, providers: Providers) -> None:  # noqa: F811
    api = ThreadedContract()
    for obj in (pod("provider-v1", "v1"), pod("provider-v2", "v2"), k8s_service(), destination_rule(SVC_HOST, "demo"), metarouter((30, 70), host=SVC_HOST),
                endpoint_slice("demo-v1", providers.ports["v1"], [("127.0.0.1", "provider-v1", True)]),
                endpoint_slice("demo-v2", providers.ports["v2"], [("127.0.0.1", "provider-v2", True)])):  # fmt: skip
        api.call(api.server.apply, obj)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\n"
        f"clusters: [{{name: t, cluster: {{server: '{api.server.url}'}}}}]\n"
        "contexts: [{name: t, context: {cluster: t, user: u}}]\nusers: [{name: u, user: {token: abc}}]\n"
    )
    xds_port, admin, listen_port = free_port(), free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", NS,
                            "--xds-address", f"127.0.0.1:{xds_port}", "--port-offset", str(listen_port - 20880), "--admin", f"127.0.0.1:{admin}",
                            "--log-level", "CRITICAL"], env=ENV)  # fmt: skip
    proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "k8s", "--log-level", "WARNING"], env=ENV)
    try:
        wait_port(admin, 20)
        wait_port(listen_port, 20)
        status = _status(admin)
        assert status["objects"][ROUTER]["state"] == ACCEPTED
        assert status["objects"][ROUTER]["source"] == f"k8s://{NS}/MetaRouter/route"
        assert status["objects"][f"ServiceEntry {NS}/demo.svc"]["source"] == f"k8s://{NS}/Service/demo"

        async def until_split(c: DubboConsumer, want: set[str]) -> None:
            deadline = time.monotonic() + 15
            while True:
                counts, _ = await calls(listen_port, 100, c)
                if set(counts) == want:
                    return
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.2)

        async def scenario() -> None:
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                await until_split(c, {"v1", "v2"})
                api.call(api.server.apply, metarouter((100, 0), host=SVC_HOST))
                await until_split(c, {"v1"})
                # the watches are cut and the history compacted: aeraki-ctl relists and follows on
                api.call(api.server.drop_watches)
                api.call(api.server.apply, metarouter((0, 100), host=SVC_HOST))
                api.call(api.server.compact)
                await until_split(c, {"v2"})

        asyncio.run(scenario())
        assert ctl.poll() is None
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
        api.stop()
