"""A fast Dubbo provider for benchmarks: answers every request with a canned response (same id).

It only reads headers, so it is never the bottleneck of a proxy measurement. Heartbeats are
answered as heartbeats. Usage: python bench/dubbo_canned.py PORT
"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprotocol_codecs.dubbo import wire  # noqa: E402

HEADER = struct.Struct(">HBBQI")
BODY = wire.build_response(0, wire.Result(value="Hello world, response from provider-canned", attachments={"dubbo": "2.0.2"}))[16:]


class Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        out = []
        n = len(buf)
        while n - pos >= 16:
            _, flag, _, rid, length = HEADER.unpack_from(buf, pos)
            if n - pos < 16 + length:
                break
            pos += 16 + length
            if flag & 0x20:
                out.append(wire.build_heartbeat(rid, reply=True))
            elif flag & 0x40:
                out.append(HEADER.pack(0xDABB, 0x02, 20, rid, len(BODY)) + BODY)
        self.buf = buf[pos:]
        if out:
            self.transport.writelines(out)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
