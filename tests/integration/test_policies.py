"""Traffic policies end to end with real Dubbo (app kit) and Redis traffic over loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from metaprotocol_codecs.dubbo import wire
from tests.integration.test_dubbo_proxy import DEMO, Providers
from tests.servers import RedisServer, ResettingServer, bootstrap_dict, cluster, free_port, listener

pytestmark = pytest.mark.integration


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


def dubbo_tree(providers: Providers, route: dict[str, object], **extra: object) -> dict[str, object]:
    return bootstrap_dict(
        [listener("dubbo", 0, "dubbo", [{"name": "main", **route}], **extra)],
        [cluster("v1", [providers.port("v1")]), cluster("v2", [providers.port("v2")]), cluster("dead", [free_port()]),
         cluster("flaky", [free_port(), providers.port("v1")])],
    )  # fmt: skip


async def say(port: int, n: int, concurrency: int = 20) -> tuple[Counter[str], list[Exception]]:
    counts: Counter[str] = Counter()
    errors: list[Exception] = []
    async with DubboConsumer("127.0.0.1", port, timeout=10) as c:

        async def one(i: int) -> None:
            try:
                counts[(await c.call(DEMO, "sayHello", [f"p{i}"], version="1.0.0")).rsplit("-", 1)[1]] += 1
            except Exception as exc:  # noqa: BLE001 - collected for the assertions
                errors.append(exc)

        for start in range(0, n, concurrency):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + concurrency))))
    return counts, errors


def test_mirror_receives_its_fraction_and_a_dead_mirror_changes_nothing(run_proxy: object, providers: Providers) -> None:
    route = {"route": {"cluster": "v1", "request_mirror_policies": [
        {"cluster": "v2", "runtime_fraction": {"default_value": {"numerator": 10, "denominator": "HUNDRED"}}},
        {"cluster": "dead"}]}}  # fmt: skip
    rp = run_proxy(dubbo_tree(providers, route))  # type: ignore[operator]
    counts, errors = asyncio.run(say(rp.port("dubbo"), 1000))
    assert not errors and counts == Counter({"v1": 1000})  # clients only ever see the primary
    time.sleep(0.3)
    mirrored = sum(1 for inv in providers.providers["v2"].calls if inv.method == "sayHello")
    assert 60 <= mirrored <= 140, mirrored  # Binomial(1000, 0.1): sd 9.5
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert 'metaprotocol_upstream_cx_connect_fail_total{cluster="dead"}' in stats


def test_local_rate_limit_5_per_10s_with_the_protocols_error(run_proxy: object, providers: Providers) -> None:
    limit = {"meta_protocol_filters": [
        {"name": "aeraki.meta_protocol.filters.local_ratelimit", "config": {
            "stat_prefix": "dubbo", "token_bucket": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1s"},
            "conditions": [{"match": {"metadata": [{"name": "method", "exact_match": "sayHello"}]},
                            "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "10s"}}]}},
        {"name": "aeraki.meta_protocol.filters.router"}]}  # fmt: skip
    rp = run_proxy(dubbo_tree(providers, {"route": {"cluster": "v1"}}, **limit))  # type: ignore[operator]
    counts, errors = asyncio.run(say(rp.port("dubbo"), 20, concurrency=1))
    assert counts == Counter({"v1": 5}) and len(errors) == 15
    assert all(isinstance(e, DubboError) and e.status == wire.SERVER_THREADPOOL_EXHAUSTED_ERROR for e in errors)
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert 'metaprotocol_local_rate_limit_ok_total{listener="dubbo",protocol="dubbo"} 5' in stats
    assert 'metaprotocol_local_rate_limit_rate_limited_total{listener="dubbo",protocol="dubbo"} 15' in stats


def test_local_rate_limit_on_redis(run_proxy: object) -> None:
    with RedisServer() as server:
        limit = {"meta_protocol_filters": [{"name": "aeraki.meta_protocol.filters.local_ratelimit", "config": {
            "stat_prefix": "r", "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "10s"}}}]}  # fmt: skip
        rp = run_proxy(bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}], **limit)], [cluster("c", [server.port])]))  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"), protocol=2)
        results = []
        for i in range(8):
            try:
                results.append(r.set(f"k{i}", i))
            except redis.ResponseError as exc:
                results.append(str(exc))
        assert results[:5] == [True] * 5 and results[5:] == ["rate limited"] * 3
        r.close()


def test_retry_turns_a_dead_endpoint_into_success(run_proxy: object, providers: Providers) -> None:
    route = {"route": {"cluster": "flaky", "retry_policy": {"num_retries": 2, "retry_on": "connect-failure,upstream-reset"}}}
    rp = run_proxy(dubbo_tree(providers, route))  # type: ignore[operator]
    counts, errors = asyncio.run(say(rp.port("dubbo"), 100))
    assert not errors and counts == Counter({"v1": 100})
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert 'metaprotocol_retries_total{listener="dubbo",protocol="dubbo"} 0' not in stats



@pytest.mark.parametrize(
    ("command", "opt_in", "retried"),
    [("incr", False, False), ("get", False, True), ("incr", True, True)],
)
def test_a_reset_is_retried_only_for_idempotent_requests_or_by_opt_in(run_proxy: object, command: str, opt_in: bool, retried: bool) -> None:
    """A reset request may have run on the server: INCR (a write) is not resent unless the route
    opts in; GET (read-only, as the Redis codec says) is."""
    with RedisServer() as server, ResettingServer() as resetter:
        policy = {"num_retries": 1, "retry_on": "upstream-reset", "retry_non_idempotent": opt_in}
        tree = bootstrap_dict(
            [listener("redis", 0, "redis", [{"route": {"cluster": "two", "retry_policy": policy}}])],
            [cluster("two", [resetter.port, server.port])],
        )  # fmt: skip
        rp = run_proxy(tree)  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"), protocol=2, socket_timeout=10)
        outcomes = []
        for _ in range(2):  # round robin: the resetting endpoint gets at least one of them
            try:
                outcomes.append(r.incr("n") if command == "incr" else r.get("n"))
            except redis.ResponseError as exc:
                outcomes.append(str(exc))
        r.close()
        resets = len(resetter.received)
        assert resets >= 1 and all(command.encode() in data.lower() for data in resetter.received)
        stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
        labels = '{listener="redis",protocol="redis"}'
        if retried:
            assert all(not isinstance(o, str) for o in outcomes), outcomes
            assert f"metaprotocol_retries_total{labels} {resets}" in stats
            assert f"metaprotocol_retries_not_idempotent_total{labels} 0" in stats
        else:
            assert sum(isinstance(o, str) and "closed the connection" in o for o in outcomes) == resets, outcomes
            assert f"metaprotocol_retries_total{labels} 0" in stats
            assert f"metaprotocol_retries_not_idempotent_total{labels} {resets}" in stats


def test_fault_injection_aborts_and_delays(run_proxy: object, providers: Providers) -> None:
    route = {"route": {"cluster": "v1"}, "fault": {"abort": {"error": "over_limit", "percentage": {"numerator": 30, "denominator": "HUNDRED"}}}}
    rp = run_proxy(dubbo_tree(providers, route))  # type: ignore[operator]
    counts, errors = asyncio.run(say(rp.port("dubbo"), 1000))
    assert 230 <= len(errors) <= 370, len(errors)  # Binomial(1000, 0.3): sd 14.5
    assert all(isinstance(e, DubboError) and e.status == wire.SERVER_THREADPOOL_EXHAUSTED_ERROR for e in errors)
    delay = {"route": {"cluster": "v1"}, "fault": {"delay": {"fixed_delay": "0.3s", "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}
    rp2 = run_proxy(dubbo_tree(providers, delay))  # type: ignore[operator]
    start = time.monotonic()
    counts, errors = asyncio.run(say(rp2.port("dubbo"), 5, concurrency=5))
    assert not errors and time.monotonic() - start >= 0.3


def test_idle_connections_are_closed(run_proxy: object, providers: Providers) -> None:
    rp = run_proxy(dubbo_tree(providers, {"route": {"cluster": "v1"}}, idle_timeout="0.3s"))  # type: ignore[operator]
    with socket.create_connection(("127.0.0.1", rp.port("dubbo"))) as s:
        s.settimeout(5)
        start = time.monotonic()
        assert s.recv(10) == b""  # closed by the proxy
        assert 0.25 <= time.monotonic() - start < 2.5


def test_access_log_writes_json_lines(run_proxy: object, providers: Providers, tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    access = {"access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": str(log),
        "log_format": {"json_format": {"start": "%START_TIME%", "protocol": "%PROTOCOL%", "route": "%ROUTE_NAME%",
                                       "cluster": "%UPSTREAM_CLUSTER%", "upstream": "%UPSTREAM_HOST%", "method": "%REQ(method)%",
                                       "interface": "%REQ(interface)%", "code": "%RESPONSE_CODE%", "details": "%RESPONSE_CODE_DETAILS%",
                                       "ms": "%DURATION%", "in": "%BYTES_RECEIVED%", "out": "%BYTES_SENT%", "id": "%REQUEST_ID%"}}}}]}  # fmt: skip
    rp = run_proxy(dubbo_tree(providers, {"route": {"cluster": "v1"}}, **access))  # type: ignore[operator]
    counts, errors = asyncio.run(say(rp.port("dubbo"), 3, concurrency=1))
    assert not errors
    time.sleep(0.2)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["protocol"] == "dubbo" and first["route"] == "main" and first["cluster"] == "v1" and first["method"] == "sayHello"
    assert first["interface"] == DEMO and first["code"] == 0 and first["details"] == "ok" and first["in"] > 100 and first["out"] > 20
    assert first["upstream"] == f"127.0.0.1:{providers.port('v1')}" and first["start"].endswith("+00:00") and first["ms"] >= 0


def test_outlier_detection_ejects_a_failing_endpoint_and_brings_it_back(run_proxy: object, providers: Providers) -> None:
    # v1's DemoService has no "fail2" method: every call to it is an error reply (SERVICE_NOT_FOUND).
    providers.providers["v2"].expose(DEMO, "flaky", lambda: "ok from v2")
    providers.providers["v1"].expose(DEMO, "flaky", lambda: (_ for _ in ()).throw(RuntimeError("v1 is broken")))
    tree = bootstrap_dict(
        [listener("dubbo", 0, "dubbo", [{"route": {"cluster": "both"}}])],
        [cluster("both", [providers.port("v1"), providers.port("v2")],
                 outlier_detection={"consecutive_5xx": 3, "base_ejection_time": "0.5s", "max_ejection_percent": 50})],
    )  # fmt: skip
    rp = run_proxy(tree)  # type: ignore[operator]

    async def calls(n: int) -> Counter[str]:
        out: Counter[str] = Counter()
        async with DubboConsumer("127.0.0.1", rp.port("dubbo"), timeout=5) as c:
            for _ in range(n):
                try:
                    out[await c.call(DEMO, "flaky")] += 1
                except Exception:  # noqa: BLE001
                    out["error"] += 1
        return out

    first = asyncio.run(calls(20))
    assert first["error"] == 3  # three failures in a row on v1, then it is ejected
    assert first["ok from v2"] == 17
    later = asyncio.run(calls(10))
    assert later == Counter({"ok from v2": 10})  # still ejected
    time.sleep(0.6)
    back = asyncio.run(calls(4))
    assert back["error"] >= 1  # the ejection time is over: v1 receives traffic again
    stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
    assert 'metaprotocol_upstream_errors_total{cluster="both",kind="ejected"}' in stats


def test_circuit_breaker_max_requests(run_proxy: object, providers: Providers) -> None:
    tree = bootstrap_dict(
        [listener("dubbo", 0, "dubbo", [{"route": {"cluster": "v1"}}])],
        [cluster("v1", [providers.port("v1")], circuit_breakers={"thresholds": [{"max_requests": 5}]})],
    )
    rp = run_proxy(tree)  # type: ignore[operator]

    async def burst() -> tuple[int, list[Exception]]:
        errors: list[Exception] = []
        ok = 0
        async with DubboConsumer("127.0.0.1", rp.port("dubbo"), timeout=5) as c:
            results = await asyncio.gather(*(c.call(DEMO, "slow", [0.3]) for _ in range(20)), return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                errors.append(r)
            else:
                ok += 1
        return ok, errors

    ok, errors = asyncio.run(burst())
    assert ok == 5 and len(errors) == 15
    assert all(isinstance(e, DubboError) and e.status == wire.SERVER_THREADPOOL_EXHAUSTED_ERROR for e in errors)


def test_a_live_rate_limit_update_reaches_pipelines_on_open_connections(run_proxy: object) -> None:
    """Pipelines are forwarded as units only while nothing is decided per request; a rate limit
    added by a live update applies at once, on a connection opened before it."""
    from metaprotocol.config.bootstrap import parse_bootstrap

    with RedisServer() as server:
        routes = [{"route": {"cluster": "c"}}]
        rp = run_proxy(bootstrap_dict([listener("redis", 0, "redis", routes)], [cluster("c", [server.port])]))  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"), protocol=2)
        pipe = r.pipeline(transaction=False)
        for i in range(20):
            pipe.set(f"k{i}", i)
        assert pipe.execute() == [True] * 20
        limit = {"meta_protocol_filters": [{"name": "aeraki.meta_protocol.filters.local_ratelimit", "config": {
            "stat_prefix": "r", "token_bucket": {"max_tokens": 5, "tokens_per_fill": 5, "fill_interval": "60s"}}}]}  # fmt: skip
        tree = bootstrap_dict([listener("redis", rp.port("redis"), "redis", routes, **limit)], [cluster("c", [server.port])])  # type: ignore[operator]
        rp.call(rp.proxy.apply(parse_bootstrap(tree, "update")))  # type: ignore[attr-defined]
        for i in range(20):
            pipe.set(f"k{i}", i)
        results = pipe.execute(raise_on_error=False)
        assert results[:5] == [True] * 5 and all(isinstance(x, redis.ResponseError) for x in results[5:])
        r.close()
