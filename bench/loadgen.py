"""A closed-loop loopback load generator usable with any codec plugin.

Each of ``--connections`` connections keeps ``--depth`` requests in flight: it writes a batch of
``depth`` copies of the request, waits until the codec's client side has framed ``depth`` replies,
and repeats. Reports requests/s and latency percentiles (per request, batch round trip).

    python bench/loadgen.py --port 16380 --codec redis --request '*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass

from metaprotocol.registry import CodecRegistry
from metaprotocol.spi import NEED_DATA, ClientCodec, ReadBuffer


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"rps": round(self.rps), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "requests": self.requests, "errors": self.errors}


class _Conn(asyncio.Protocol):
    def __init__(self, codec: ClientCodec, batch: bytes, depth: int, deadline: float, done: asyncio.Future[None], latencies: list[float]) -> None:
        self.codec = codec
        self.batch = batch
        self.depth = depth
        self.deadline = deadline
        self.done = done
        self.latencies = latencies
        self.buffer = ReadBuffer()
        self.waiting = 0
        self.sent_at = 0.0
        self.count = 0
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.waiting = self.depth
        self.sent_at = time.perf_counter()
        self.transport.write(self.batch)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer.feed(data)
        while self.waiting and (msg := self.codec.decode(self.buffer)) is not NEED_DATA:
            self.waiting -= 1
            if msg.type.name == "ERROR":  # type: ignore[union-attr]
                self.errors += 1
        if self.waiting == 0:
            now = time.perf_counter()
            self.latencies.append(now - self.sent_at)
            self.count += self.depth
            if now < self.deadline:
                self._send()
            else:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def run_load(host: str, port: int, codec: str, request: bytes, connections: int, depth: int, seconds: float, warmup: float = 0.5) -> Result:
    factory = CodecRegistry.from_entry_points().get(codec)()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    start = time.perf_counter() + warmup
    deadline = start + seconds
    conns: list[_Conn] = []
    waits = []
    for _ in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda done=done: _Conn(factory.client_codec(), request * depth, depth, deadline, done, latencies), host, port
        )
        conns.append(proto)
        waits.append(done)
    await asyncio.sleep(warmup)
    base = sum(c.count for c in conns)
    latencies.clear()
    await asyncio.wait_for(asyncio.gather(*waits), seconds + 30)
    total = sum(c.count for c in conns) - base
    lat = sorted(latencies) or [0.0]
    return Result(
        requests=total,
        seconds=seconds,
        p50_ms=round(statistics.median(lat) * 1000, 3),
        p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 3),
        errors=sum(c.errors for c in conns),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--codec", required=True)
    parser.add_argument("--request", help="request bytes (Python escapes)")
    parser.add_argument("--request-hex")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    request = bytes.fromhex(args.request_hex) if args.request_hex else args.request.encode().decode("unicode_escape").encode("latin-1")
    import uvloop

    result = uvloop.run(run_load(args.host, args.port, args.codec, request, args.connections, args.depth, args.seconds))
    print(json.dumps(result.as_dict()))


if __name__ == "__main__":
    main()
