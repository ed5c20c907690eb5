"""Fakes for driving the sans-IO core: a transport that records, an IO that never sleeps."""

from __future__ import annotations

from collections.abc import Callable

from metaprotocol.proxy.context import Flushable
from metaprotocol.proxy.upstream import UpstreamConnection


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.writes = 0
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        self.written.append(bytes(data))

    def writelines(self, data: list[bytes | bytearray]) -> None:
        self.writes += 1
        self.written.extend(bytes(d) for d in data)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def take(self) -> bytes:
        out = b"".join(self.written)
        self.written.clear()
        return out


class FakeIO:
    def __init__(self) -> None:
        self.clock = 0.0
        self.dirty: list[Flushable] = []
        self.connects: list[tuple[UpstreamConnection, str, int]] = []
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self.reports: list[tuple[str, str]] = []
        self.upstreams = None

    def now(self) -> float:
        return self.clock

    def schedule_flush(self, conn: Flushable) -> None:
        self.dirty.append(conn)

    def flush(self) -> None:
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn.flush()

    def connect(self, conn: UpstreamConnection, address: str, port: int, timeout: float) -> None:
        self.connects.append((conn, address, port))

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        self.timers.append((self.clock + delay, callback))

    def arm_sweeper(self) -> None:
        pass

    def report(self, event: str, detail: str, exc: BaseException | None = None) -> None:
        self.reports.append((event, detail))

    def rate_limit(self, ctx: object, entries: list[tuple[str, str]], done: Callable[[bool], None]) -> None:
        self.timers.append((self.clock, lambda: done(True)))

    def advance(self, seconds: float) -> None:
        self.clock += seconds
        if self.upstreams is not None:
            self.upstreams.sweep(self.clock)
        due = [t for t in self.timers if t[0] <= self.clock]
        self.timers = [t for t in self.timers if t[0] > self.clock]
        for _, cb in due:
            cb()
        self.flush()
