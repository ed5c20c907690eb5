"""Our Dubbo consumer -> our proxy -> our Dubbo providers, over loopback."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from metaprotocol_apps.dubbo import DubboConsumer, DubboError, DubboProvider, RemoteException
from metaprotocol_codecs.dubbo import wire
from tests.servers import bootstrap_dict, cluster, listener

pytestmark = pytest.mark.integration
DEMO = "org.apache.dubbo.samples.basic.api.DemoService"


class Providers:
    """Providers v1 and v2 on their own event loop thread."""

    def __init__(self, names: tuple[str, ...] = ("v1", "v2")) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.providers: dict[str, DubboProvider] = {}
        for name in names:
            p = DubboProvider(name=f"provider-{name}")
            p.expose(DEMO, "sayHello", lambda who, name=name: f"Hello {who}, response from provider-{name}", version="1.0.0")
            p.expose(DEMO, "fail", self._fail)
            p.expose(DEMO, "slow", self._slow)
            p.expose(DEMO, "echoAttachment", lambda key, call: call.invocation.attachments.get(key))
            self.run(p.start())
            self.providers[name] = p

    @staticmethod
    def _fail(reason: str) -> str:
        raise ValueError(reason)

    @staticmethod
    async def _slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slow done"

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def port(self, name: str) -> int:
        return self.providers[name].port

    def stop(self, name: str | None = None) -> None:
        for n in [name] if name else list(self.providers):
            self.run(self.providers[n].close())
        if name is None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture
def providers() -> Iterator[Providers]:
    p = Providers()
    yield p
    p.stop()


def demo_proxy(run_proxy: object, providers: Providers, **extra: object) -> int:
    tree = bootstrap_dict(
        [listener("dubbo", 0, "aeraki.meta_protocol.codec.dubbo", [
            {"name": "foo-bar-to-v1", "match": {"metadata": [
                {"name": "interface", "exact_match": DEMO}, {"name": "foo", "exact_match": "bar"}]},
             "route": {"cluster": "outbound|20880|v1|demo"}},
            {"name": "split", "match": {"metadata": [{"name": "interface", "exact_match": DEMO}, {"name": "method", "exact_match": "sayHello"}]},
             "route": {"weighted_clusters": {"clusters": [{"name": "outbound|20880|v1|demo", "weight": 20}, {"name": "outbound|20880|v2|demo", "weight": 80}]}},
             "request_mutation": [{"key": "x-mesh", "value": "metaprotocol"}]},
            {"name": "rest", "match": {"metadata": [{"name": "interface", "prefix_match": "org.apache.dubbo.samples"}]},
             "route": {"cluster": "outbound|20880|v2|demo", "timeout": "1s"}, "request_mutation": [{"key": "x-mesh", "value": "metaprotocol"}]},
        ], **extra)],
        [cluster("outbound|20880|v1|demo", [providers.port("v1")]), cluster("outbound|20880|v2|demo", [providers.port("v2")])],
    )  # fmt: skip
    rp = run_proxy(tree)  # type: ignore[operator]
    return rp.port("dubbo")  # type: ignore[no-any-return]


def test_weighted_split_attachment_route_and_mutation(run_proxy: object, providers: Providers) -> None:
    port = demo_proxy(run_proxy, providers)

    async def scenario() -> tuple[Counter[str], set[str], object, bool]:
        async with DubboConsumer("127.0.0.1", port) as c:
            replies = await asyncio.gather(*(c.call(DEMO, "sayHello", [f"n{i}"], version="1.0.0") for i in range(1000)))
            split = Counter(r.rsplit("-", 1)[1] for r in replies)
            pinned = {await c.call(DEMO, "sayHello", ["x"], version="1.0.0", attachments={"foo": "bar"}) for _ in range(30)}
            mutated = await c.call(DEMO, "echoAttachment", ["x-mesh"])
            beat = await c.heartbeat()
            return split, pinned, mutated, beat

    split, pinned, mutated, beat = asyncio.run(scenario())
    # Binomial(1000, 0.2): sd 12.6, so +-5 points is about 4 sd.
    assert 150 <= split["v1"] <= 250 and split["v1"] + split["v2"] == 1000, split
    assert pinned == {"Hello x, response from provider-v1"}
    assert mutated == "metaprotocol"
    assert beat
    assert providers.providers["v1"].heartbeats == 0 and providers.providers["v2"].heartbeats == 0


def test_exceptions_statuses_and_timeouts_reach_the_consumer(run_proxy: object, providers: Providers) -> None:
    port = demo_proxy(run_proxy, providers)

    async def scenario() -> None:
        async with DubboConsumer("127.0.0.1", port, timeout=5) as c:
            with pytest.raises(RemoteException, match="java.lang.RuntimeException: boom"):
                await c.call(DEMO, "fail", ["boom"])
            with pytest.raises(DubboError) as info:
                await c.call("com.example.Unknown", "x")
            assert info.value.status == wire.SERVICE_NOT_FOUND and "no route matched" in str(info.value.message)
            with pytest.raises(DubboError) as info:
                await c.call(DEMO, "slow", [3.0])
            assert info.value.status == wire.SERVER_TIMEOUT
            assert await c.call(DEMO, "sayHello", ["after"], version="1.0.0")

    asyncio.run(scenario())


def test_provider_lost_mid_request_fails_that_call_only(run_proxy: object, providers: Providers) -> None:
    port = demo_proxy(run_proxy, providers)

    async def scenario() -> None:
        async with DubboConsumer("127.0.0.1", port, timeout=5) as c:
            assert await c.call(DEMO, "sayHello", ["warm"], version="1.0.0", attachments={"foo": "bar"})
            slow = asyncio.ensure_future(c.call(DEMO, "slow", [0.8]))
            await asyncio.sleep(0.2)
            await asyncio.get_running_loop().run_in_executor(None, providers.stop, "v2")
            with pytest.raises(DubboError) as info:
                await slow
            assert info.value.status == wire.SERVER_ERROR
            # v1 still answers on the same consumer connection.
            assert await c.call(DEMO, "sayHello", ["x"], version="1.0.0", attachments={"foo": "bar"}) == "Hello x, response from provider-v1"

    asyncio.run(scenario())


def test_many_consumers_concurrently(run_proxy: object, providers: Providers) -> None:
    port = demo_proxy(run_proxy, providers)

    async def one(i: int) -> int:
        async with DubboConsumer("127.0.0.1", port) as c:
            got = await asyncio.gather(*(c.call(DEMO, "sayHello", [f"{i}-{j}"], version="1.0.0", attachments={"foo": "bar"}) for j in range(50)))
            assert got == [f"Hello {i}-{j}, response from provider-v1" for j in range(50)]
            return len(got)

    async def scenario() -> int:
        return sum(await asyncio.gather(*(one(i) for i in range(20))))

    assert asyncio.run(scenario()) == 1000
