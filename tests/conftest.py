"""Shared fixtures: hypothesis profiles, a proxy running in a background event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator, Mapping

import pytest
from hypothesis import HealthCheck, settings

from metaprotocol.config.bootstrap import parse_bootstrap
from metaprotocol.io.proxy import Proxy
from metaprotocol.registry import CodecRegistry

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nightly", max_examples=50_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


class RunningProxy:
    """A Proxy serving on its own uvloop event loop in a daemon thread."""

    def __init__(self, tree: Mapping[str, object], registry: CodecRegistry | None = None) -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        self.proxy = Proxy(parse_bootstrap(tree, "test"), registry or CodecRegistry.from_entry_points(), seed=7)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.proxy.start())

    def call(self, coro: object, timeout: float = 30.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def run(self, fn: object) -> object:
        async def wrapper() -> object:
            return fn()  # type: ignore[operator]

        return self.call(wrapper())

    def port(self, listener: str) -> int:
        return self.proxy.bound_port(listener)

    def stop(self) -> None:
        try:
            self.call(self.proxy.close(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def run_proxy() -> Iterator[object]:
    started: list[RunningProxy] = []

    def start(tree: Mapping[str, object], registry: CodecRegistry | None = None) -> RunningProxy:
        rp = RunningProxy(tree, registry)
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.stop()


@pytest.fixture
def header_servers() -> Iterator[dict[str, tuple[int, list[dict[str, str]]]]]:
    """Two Apache Thrift THeader echo servers (``a``, ``b``): port, and the headers of every call
    each got (the Thrift tests of our proxy and of stock Envoy)."""
    from tests.integration.test_thrift_proxy import _apache_header_server
    from tests.servers import free_port, wait_port

    stop = threading.Event()
    servers = {}
    for name in ("a", "b"):
        port = free_port()
        seen: list[dict[str, str]] = []
        threading.Thread(target=_apache_header_server, args=(port, seen, stop), daemon=True).start()
        wait_port(port)
        servers[name] = (port, seen)
    yield servers
    stop.set()
