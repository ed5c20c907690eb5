"""The global rate limit service (Envoy's RLS API, counters in Redis) and the proxy's client of it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from aeraki_ctl.ratelimit import RateLimitService, load_config
from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from metaprotocol_codecs.dubbo import wire
from tests.integration.test_dubbo_proxy import DEMO, Providers
from tests.servers import RedisServer, bootstrap_dict, cluster, free_port, listener, wait_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
domain: dubbo
descriptors:
- key: method
  value: sayHello
  rate_limit: {unit: minute, requests_per_unit: 5}
- key: user
  rate_limit: {unit: second, requests_per_unit: 2}
  descriptors:
  - key: method
    value: slow
    rate_limit: {unit: second, requests_per_unit: 1}
"""


def request(*entries: tuple[str, str], domain: str = "dubbo") -> rls_pb2.RateLimitRequest:
    return rls_pb2.RateLimitRequest(domain=domain, descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])])


@pytest_asyncio.fixture
async def rls() -> AsyncIterator[tuple[rls_pb2_grpc.RateLimitServiceStub, list[float]]]:
    server_redis = RedisServer()
    clock = [1_000_000.0]
    r = aioredis.Redis(port=server_redis.port)
    service = RateLimitService(load_config(CONFIG), r, clock=lambda: clock[0])
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield rls_pb2_grpc.RateLimitServiceStub(channel), clock
    await channel.close()
    await server.stop(0)
    await r.aclose()
    server_redis.stop()


@pytest.mark.asyncio
async def test_limits_windows_and_nested_descriptors(rls: tuple[rls_pb2_grpc.RateLimitServiceStub, list[float]]) -> None:
    stub, clock = rls
    OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
    codes = [(await stub.ShouldRateLimit(request(("method", "sayHello")))).overall_code for _ in range(7)]
    assert codes == [OK] * 5 + [OVER] * 2
    assert (await stub.ShouldRateLimit(request(("method", "other")))).overall_code == OK  # no rule: allowed
    assert (await stub.ShouldRateLimit(request(("method", "sayHello"), domain="elsewhere"))).overall_code == OK
    # Per-value counters for a key without value, and the deeper nested rule.
    assert [(await stub.ShouldRateLimit(request(("user", "alice")))).overall_code for _ in range(3)] == [OK, OK, OVER]
    assert (await stub.ShouldRateLimit(request(("user", "bob")))).overall_code == OK
    assert [(await stub.ShouldRateLimit(request(("user", "carol"), ("method", "slow")))).overall_code for _ in range(2)] == [OK, OVER]
    clock[0] += 60  # a new minute
    assert (await stub.ShouldRateLimit(request(("method", "sayHello")))).overall_code == OK


@pytest.fixture
def providers() -> Providers:
    p = Providers()
    yield p  # type: ignore[misc]
    p.stop()


def test_proxy_global_limit_with_the_shipped_service_and_deny_on_fail(run_proxy: object, providers: Providers, tmp_path: Path) -> None:
    with RedisServer() as redis_server:
        (tmp_path / "rls.yaml").write_text(CONFIG)
        port = free_port()
        service = subprocess.Popen([sys.executable, "-m", "aeraki_ctl.cli", "ratelimit", "--config", str(tmp_path / "rls.yaml"), "--redis", f"127.0.0.1:{redis_server.port}",
                                    "--address", f"127.0.0.1:{port}", "--log-level", "WARNING"], env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
        try:
            wait_port(port, 20)

            def tree(deny: bool) -> dict[str, object]:
                filters = {"meta_protocol_filters": [{"name": "aeraki.meta_protocol.filters.ratelimit", "config": {
                    "match": {"metadata": [{"name": "interface", "exact_match": DEMO}]}, "domain": "dubbo", "timeout": "1s", "failure_mode_deny": deny,
                    "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "rate-limit-server"}}},
                    "descriptors": [{"property": "method", "descriptor_key": "method"}]}}]}  # fmt: skip
                return bootstrap_dict([listener("dubbo", 0, "dubbo", [{"route": {"cluster": "v1"}}], **filters)],
                                      [cluster("v1", [providers.port("v1")]), cluster("rate-limit-server", [port])])  # fmt: skip

            rp = run_proxy(tree(deny=False))  # type: ignore[operator]

            async def calls(p: int, n: int) -> tuple[int, list[Exception]]:
                ok, errors = 0, []
                async with DubboConsumer("127.0.0.1", p, timeout=5) as c:
                    for i in range(n):
                        try:
                            await c.call(DEMO, "sayHello", [f"g{i}"], version="1.0.0")
                            ok += 1
                        except DubboError as exc:
                            errors.append(exc)
                return ok, errors

            ok, errors = asyncio.run(calls(rp.port("dubbo"), 8))
            assert ok == 5 and len(errors) == 3 and all(e.status == wire.SERVER_THREADPOOL_EXHAUSTED_ERROR for e in errors)
            service.terminate()
            service.wait(10)
            ok, errors = asyncio.run(calls(rp.port("dubbo"), 3))  # service gone, deny_on_fail false: allowed
            assert ok == 3 and not errors
            rp_deny = run_proxy(tree(deny=True))  # type: ignore[operator]
            ok, errors = asyncio.run(calls(rp_deny.port("dubbo"), 3))  # service gone, deny_on_fail true: refused
            assert ok == 0 and len(errors) == 3
        finally:
            service.terminate()
            service.wait(10)
