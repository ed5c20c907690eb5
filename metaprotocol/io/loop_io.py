"""``ProxyIO`` on an asyncio event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from metaprotocol.proxy.context import Flushable
from metaprotocol.proxy.upstream import UpstreamConnection, Upstreams

log = logging.getLogger(__name__)

SWEEP_INTERVAL: Final = 0.01


class LoopIO:
    """Flush batching, connects and timers for the core, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.upstreams: Upstreams | None = None
        self._dirty: list[Flushable] = []
        self._flush_handle: asyncio.Handle | None = None
        self._sweeping = False
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        """Monotonic seconds."""
        return self.loop.time()

    def schedule_flush(self, conn: Flushable) -> None:
        """Queue ``conn`` for the end-of-pass flush."""
        self._dirty.append(conn)
        if self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    def connect(self, conn: UpstreamConnection, address: str, port: int, timeout: float) -> None:
        """Open a connection in the background; ``conn`` learns the outcome."""
        task = self.loop.create_task(self._connect(conn, address, port, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(
        self, conn: UpstreamConnection, address: str, port: int, timeout: float
    ) -> None:
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                await self.loop.create_connection(lambda: conn, address, port)  # type: ignore[arg-type, return-value]
        except (OSError, TimeoutError) as exc:
            conn.connect_failed(exc)
        except asyncio.CancelledError:
            conn.connect_failed(ConnectionAbortedError("connect cancelled"))
            raise

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` after ``delay`` seconds."""
        self.loop.call_later(delay, callback)

    def arm_sweeper(self) -> None:
        """Start the deadline sweeper if it is not running."""
        if not self._sweeping:
            self._sweeping = True
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        upstreams = self.upstreams
        if upstreams is None:
            self._sweeping = False
            return
        upstreams.sweep(self.loop.time())
        if upstreams.deadlines.size:
            self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        else:
            self._sweeping = False

    def report(self, event: str, detail: str) -> None:
        """Log an operator-visible event."""
        log.warning("%s: %s", event, detail)
