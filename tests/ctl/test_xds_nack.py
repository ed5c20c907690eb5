"""The proxy NACKs an update it cannot apply, with the reason, and keeps the last good config."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from aeraki_ctl.resources import load_directory
from aeraki_ctl.translate import translate
from aeraki_ctl.xds.server import AdsServer, start_server
from aeraki_ctl.xds.snapshot import snapshot_of
from metaprotocol.config.model import Bootstrap, CodecRef
from metaprotocol.io.proxy import Proxy
from metaprotocol.registry import CodecRegistry
from metaprotocol.xds import convert
from metaprotocol.xds.client import AdsClient

ROOT = Path(__file__).resolve().parents[2]


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_invalid_update_is_nacked_and_the_last_good_config_stays() -> None:
    good = translate(load_directory(ROOT / "examples/aeraki/dubbo-demo")).bootstrap
    good = replace(good, listeners=tuple(replace(lst, port=0) for lst in good.listeners))
    ads = AdsServer(snapshot_of(good))
    grpc_server, port = await start_server(ads, "127.0.0.1:0")
    proxy = Proxy(Bootstrap((), ()), CodecRegistry.from_entry_points())
    await proxy.start()
    client = AdsClient(proxy, f"127.0.0.1:{port}", "nack-test")
    task = asyncio.ensure_future(client.run())
    try:
        await _until(lambda: client.applied == 1)
        (name,) = proxy.contexts
        bound = proxy.bound_port(name)
        bad = replace(good, listeners=tuple(replace(lst, codec=CodecRef("no-such-codec")) for lst in good.listeners))
        await ads.set_snapshot(snapshot_of(bad))
        await _until(lambda: client.nacks)
        assert "unknown codec 'no-such-codec'" in client.nacks[0]
        await _until(lambda: any(i.nacks for i in ads.streams.values()))
        assert any("no-such-codec" in n for i in ads.streams.values() for n in i.nacks)
        # Still serving the good configuration on the same socket.
        assert proxy.contexts[name].factory.name == "dubbo" and proxy.bound_port(name) == bound
        # Only the listener was rejected; it kept its previous version, so nothing was re-applied.
        assert client.applied == 1 and client.status.rejected[convert.LISTENER_TYPE] == 1
        await ads.set_snapshot(snapshot_of(good))  # a good version after the bad one is ACKed
        await _until(lambda: client.status.accepted[convert.LISTENER_TYPE] == 2)
        assert proxy.contexts[name].factory.name == "dubbo" and convert.LISTENER_TYPE not in client.status.nacked_now
    finally:
        task.cancel()
        await proxy.close()
        await grpc_server.stop(0)
