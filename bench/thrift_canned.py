"""A fast Thrift server for benchmarks: framed or THeader, binary; answers every CALL with a canned
REPLY carrying the call's name and seqid. Usage: python bench/thrift_canned.py PORT"""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprotocol_codecs.thrift import wire  # noqa: E402

I32 = struct.Struct(">i")
U16 = struct.Struct(">H")
RESULT = b"\x0b\x00\x00" + I32.pack(11) + b"hello world" + b"\x00"  # success: string, stop


def reply_message(name: bytes, seqid: int) -> bytes:
    return I32.pack(wire.BINARY_VERSION_1 - 2**32 + wire.REPLY) + I32.pack(len(name)) + name + I32.pack(seqid) + RESULT


class Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, n, out = 0, len(buf), []
        while n - pos >= 4:
            size = I32.unpack_from(buf, pos)[0]
            if n - pos < 4 + size:
                break
            frame = buf[pos : pos + 4 + size]
            pos += 4 + size
            header = frame[4] == 0x0F and frame[5] == 0xFF
            at = 14 + U16.unpack_from(frame, 12)[0] * 4 if header else 4
            namelen = I32.unpack_from(frame, at + 4)[0]
            name = frame[at + 8 : at + 8 + namelen]
            seqid = I32.unpack_from(frame, at + 8 + namelen)[0]
            if frame[at + 3] == wire.ONEWAY:
                continue
            message = reply_message(name, seqid)
            if header:
                out.append(wire.build_theader(seqid, wire.PROTOCOL_BINARY, {}, message))
            else:
                out.append(I32.pack(len(message)) + message)
        self.buf = buf[pos:]
        if out:
            self.transport.writelines(out)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Canned, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
