"""L7 authorization end to end: Envoy's RBAC config in a bootstrap, real clients and servers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis

from metaprotocol_apps.dubbo import DubboConsumer, DubboError
from metaprotocol_codecs.dubbo import wire
from tests.integration.test_dubbo_proxy import DEMO, Providers
from tests.servers import RedisServer, bootstrap_dict, cluster, listener

pytestmark = pytest.mark.integration


def rbac_filter(action: str, policies: dict[str, object]) -> dict[str, object]:
    return {"name": "aeraki.meta_protocol.filters.rbac", "config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "stat_prefix": "authz", "rules": {"action": action, "policies": policies}}}  # fmt: skip


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


def test_redis_deny_by_key_prefix_with_pipelines_in_order(run_proxy: object) -> None:
    deny = rbac_filter("DENY", {"secrets": {
        "permissions": [{"header": {"name": "key", "string_match": {"prefix": "secret:"}}}],
        "principals": [{"any": True}]}})  # fmt: skip
    with RedisServer() as server:
        tree = bootstrap_dict([listener("redis", 0, "redis", [{"route": {"cluster": "c"}}], meta_protocol_filters=[deny, {"name": "aeraki.meta_protocol.filters.router"}])], [cluster("c", [server.port])])
        rp = run_proxy(tree)  # type: ignore[operator]
        r = redis.Redis(port=rp.port("redis"), protocol=2)
        pipe = r.pipeline(transaction=False)
        pipe.set("a", "1").set("secret:x", "2").get("a").get("secret:x").mget("a", "secret:x").mget("a", "a")
        results = pipe.execute(raise_on_error=False)
        assert results[0] is True and results[2] == b"1" and results[5] == [b"1", b"1"]
        for denied in (results[1], results[3], results[4]):
            assert isinstance(denied, redis.exceptions.NoPermissionError) and "RBAC: access denied" in str(denied)
        direct = redis.Redis(port=server.port, protocol=2)
        assert direct.get("secret:x") is None  # the denied SET never reached the server
        stats = rp.run(rp.proxy.stats_text)  # type: ignore[attr-defined]
        assert 'metaprotocol_rbac_denied_total{listener="redis",protocol="redis"} 3' in stats
        r.close()
        direct.close()


def test_dubbo_allow_list_of_methods(run_proxy: object, providers: Providers) -> None:
    allow = rbac_filter("ALLOW", {"greetings": {
        "permissions": [{"and_rules": {"rules": [
            {"header": {"name": "interface", "string_match": {"exact": DEMO}}},
            {"header": {"name": "method", "string_match": {"exact": "sayHello"}}}]}}],
        "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}]}})  # fmt: skip
    tree = bootstrap_dict([listener("dubbo", 0, "dubbo", [{"name": "main", "route": {"cluster": "v1"}}], meta_protocol_filters=[allow, {"name": "aeraki.meta_protocol.filters.router"}])],
                          [cluster("v1", [providers.port("v1")])])  # fmt: skip
    rp = run_proxy(tree)  # type: ignore[operator]

    async def calls() -> tuple[str, DubboError]:
        async with DubboConsumer("127.0.0.1", rp.port("dubbo"), timeout=10) as c:  # type: ignore[attr-defined]
            hello = await c.call(DEMO, "sayHello", ["x"], version="1.0.0")
            with pytest.raises(DubboError) as denied:
                await c.call(DEMO, "sayGoodbye", ["x"], version="1.0.0")
            return hello, denied.value

    hello, denied = asyncio.run(calls())
    assert hello.startswith("Hello x") and denied.status == wire.SERVICE_ERROR and "RBAC: access denied" in str(denied)
    assert not any(inv.method == "sayGoodbye" for inv in providers.providers["v1"].calls)
