"""metaprotocol proxy --concurrency 2 as a process: SO_REUSEPORT workers behind one admin endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from metaprotocol.io.workers import listener_ports, merge_prometheus
from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:  # noqa: ANN401
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def get(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
        return str(resp.read().decode())


def dump(admin: int) -> dict[str, Any]:
    return dict(json.loads(get(admin, "/config_dump")))


def ready(admin: int) -> bool:
    try:
        get(admin, "/ready")
    except urllib.error.HTTPError:
        return False
    return True


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    with RedisServer() as server:
        admin = free_port()
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}])], [cluster("c", [server.port])])
        path = tmp_path / "bootstrap.yaml"
        path.write_text(yaml.safe_dump(tree))
        proc = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "-c", str(path), "--admin", f"127.0.0.1:{admin}",
                                 "--concurrency", "2", "--log-level", "WARNING"], env=ENV)  # fmt: skip
        try:
            wait_for(lambda: ready(admin), what="/ready")
            yield proc, admin, listener_ports(dump(admin))["redis"]
        finally:
            proc.kill()
            proc.wait(10)


def requests_per_worker(admin: int) -> dict[int, float]:
    return {w["index"]: w["requests"] for w in dump(admin)["workers"]}


def test_two_workers_share_a_listener_sum_stats_restart_and_drain(workers: tuple[subprocess.Popen[bytes], int, int]) -> None:
    proc, admin, port = workers
    assert port != 0
    # Many connections: every one answered, and the kernel gave both workers some.
    for i in range(40):
        with redis.Redis(port=port, single_connection_client=True) as r:
            r.set(f"k{i}", i)
            assert r.get(f"k{i}") == str(i).encode()
    per_worker = requests_per_worker(admin)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    stats = get(admin, "/stats")
    total = metric(stats, "metaprotocol_requests_total{")
    assert total == sum(per_worker.values()) >= 80, stats
    assert metric(stats, "metaprotocol_downstream_cx_total{") == 40
    assert metric(stats, 'metaprotocol_request_duration_seconds_bucket{listener="redis",le="+Inf"}') == 80  # SET and GET (redis-py's CLIENT SETINFO is answered locally)
    assert metric(stats, 'metaprotocol_worker_requests_total{worker="0"}') == per_worker[0]

    # Kill a worker: it is restarted, and new connections are served meanwhile and after.
    victim = dump(admin)["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: not dump(admin)["workers"][0]["up"] or dump(admin)["workers"][0]["pid"] != victim["pid"], what="the parent to see the death")
    for i in range(10):
        with redis.Redis(port=port, single_connection_client=True) as r:
            assert r.incr("during") == i + 1
    restarted = wait_for(lambda: [w for w in dump(admin)["workers"] if w["up"] and w["restarts"] == 1], what="a restart")
    assert restarted[0]["index"] == 0 and restarted[0]["pid"] != victim["pid"]
    assert 'metaprotocol_worker_restarts_total{worker="0"} 1' in get(admin, "/stats")
    wait_for(lambda: ready(admin), what="/ready after the restart")

    def both_serve() -> bool:
        with redis.Redis(port=port, single_connection_client=True) as r:
            r.ping()
        return requests_per_worker(admin)[0] > 0

    wait_for(both_serve, what="the restarted worker to serve")

    # SIGTERM with requests in flight on several connections: each is answered, then all exit 0.
    socks = []
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(10)
        s.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$4\r\n0.05\r\n")
        socks.append(s)
    wait_for(lambda: metric(get(admin, "/stats"), "metaprotocol_active_requests{") == 6, what="6 requests in flight")
    proc.send_signal(signal.SIGTERM)
    for s in socks:
        data = b""
        with s:
            while chunk := s.recv(100):
                data += chunk
        assert data == b"+OK\r\n"
    assert proc.wait(10) == 0


def test_merge_prometheus_sums_per_label_set_and_keeps_families_whole() -> None:
    a = '# HELP m_total x\n# TYPE m_total counter\nm_total{l="a"} 1\n# TYPE g gauge\ng 2\nh_bucket{le="+Inf"} 3\n'
    b = '# HELP m_total x\n# TYPE m_total counter\nm_total{l="a"} 2\nm_total{l="b"} 5\n# TYPE g gauge\ng 0.5\nh_bucket{le="+Inf"} 4\n'
    assert merge_prometheus([a, b]) == (
        '# HELP m_total x\n# TYPE m_total counter\nm_total{l="a"} 3\nm_total{l="b"} 5\n# TYPE g gauge\ng 2.5\nh_bucket{le="+Inf"} 7\n'
    )


def test_xds_with_two_workers_one_stream_a_metarouter_change_reaches_both(tmp_path: Path) -> None:
    import asyncio
    from collections import Counter

    from metaprotocol_apps.dubbo import DubboConsumer
    from tests.integration.test_xds_live import Providers, calls, start_ctl, write_config

    providers = Providers()
    write_config(tmp_path, providers.ports, (50, 50))
    xds_port, listen_port, admin = free_port(), free_port(), free_port()
    ctl = start_ctl(tmp_path, xds_port, listen_port - 20880)
    proxy = subprocess.Popen([sys.executable, "-m", "metaprotocol.cli", "proxy", "--xds", f"127.0.0.1:{xds_port}", "--node-id", "test",
                              "--admin", f"127.0.0.1:{admin}", "--concurrency", "2", "--log-level", "WARNING"], env=ENV)  # fmt: skip

    async def fresh_connections(n: int) -> Counter[str]:  # one call per new connection: the kernel picks a worker each time
        total: Counter[str] = Counter()
        for _ in range(n):
            async with DubboConsumer("127.0.0.1", listen_port) as c:
                counts, failures = await calls(listen_port, 1, c)
                assert failures == 0
                total += counts
        return total

    try:
        wait_for(lambda: listener_ports(dump(admin)), what="the first configuration")
        wait_for(lambda: socket.create_connection(("127.0.0.1", listen_port), timeout=1).close() or True, what="the listener")
        assert set(asyncio.run(fresh_connections(30))) == {"v1", "v2"}
        per_worker = requests_per_worker(admin)
        assert all(n > 0 for n in per_worker.values()), per_worker
        assert dump(admin)["xds"]["connected"] is True
        write_config(tmp_path, providers.ports, (0, 100))
        wait_for(lambda: "|v1|" not in json.dumps(dump(admin)["route_tables"]), what="the change in the parent")
        before = requests_per_worker(admin)
        assert asyncio.run(fresh_connections(30)) == Counter({"v2": 30})
        after = requests_per_worker(admin)
        assert all(after[i] > before[i] for i in after), (before, after)  # both workers served the new routes
    finally:
        for p in (proxy, ctl):
            p.terminate()
            p.wait(10)
        providers.stop()
