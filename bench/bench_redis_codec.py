"""Redis codec costs per frame, with hiredis (C) as the reference figure."""

from __future__ import annotations

import hiredis

from metaprotocol.spi import ReadBuffer
from metaprotocol_codecs.redis import RedisCodecFactory
from metaprotocol_codecs.redis.resp import scan_reply

GET = b"*2\r\n$3\r\nGET\r\n$10\r\nuser:12345\r\n"
ARRAY_REPLY = b"*3\r\n$3\r\nabc\r\n:42\r\n*2\r\n+OK\r\n$-1\r\n"


def test_decode_get_request(benchmark: object) -> None:
    codec = RedisCodecFactory().server_codec()
    msg = benchmark(lambda: codec.decode(ReadBuffer(GET)))  # type: ignore[operator]
    assert msg.metadata == {"command": "GET", "key": "user:12345"}


def test_frame_nested_reply(benchmark: object) -> None:
    assert benchmark(scan_reply, ARRAY_REPLY, 0) == len(ARRAY_REPLY)  # type: ignore[operator]


def test_hiredis_full_parse_of_the_same_reply(benchmark: object) -> None:
    def parse() -> object:
        r = hiredis.Reader()
        r.feed(ARRAY_REPLY)
        return r.gets()

    assert benchmark(parse) == [b"abc", 42, [b"OK", None]]  # type: ignore[operator]
