from __future__ import annotations

import pytest

from metaprotocol.registry import CodecRegistry, RegistryError
from metaprotocol.spi import NEED_DATA, CodecFactory, ReadBuffer
from metaprotocol_codecs.redis import RedisCodecFactory


def test_need_data_is_a_unique_falsy_sentinel() -> None:
    assert not NEED_DATA
    assert NEED_DATA is not None
    assert repr(NEED_DATA) == "NEED_DATA"


def test_read_buffer_keeps_unconsumed_bytes_across_feeds() -> None:
    buf = ReadBuffer()
    buf.feed(b"abcdef")
    buf.pos = 4
    buf.feed(b"gh")
    assert buf.view() == b"efgh"
    assert buf.pending() == 4
    buf.pos = 2
    buf.feed(b"ij")
    assert buf.view() == b"ghij"


def test_read_buffer_fully_consumed_takes_new_chunk_without_copy() -> None:
    buf = ReadBuffer()
    chunk = b"xyz"
    buf.feed(chunk)
    assert buf.data is chunk
    buf.pos = 3
    nxt = b"next"
    buf.feed(nxt)
    assert buf.data is nxt and buf.pos == 0


def test_registry_finds_builtin_codec_through_entry_points() -> None:
    reg = CodecRegistry.from_entry_points()
    assert "redis" in reg.names()
    assert reg.get("redis") is RedisCodecFactory
    assert reg.get("aeraki.meta_protocol.codec.redis") is RedisCodecFactory
    assert reg.get("envoy.filters.network.redis_proxy") is RedisCodecFactory


def test_registry_unknown_name_lists_installed() -> None:
    reg = CodecRegistry.from_entry_points()
    with pytest.raises(RegistryError, match="installed: .*redis"):
        reg.get("nope")


def test_registry_accepts_injected_factories() -> None:
    from tests.lenprefix import LenPrefixFactory

    reg = CodecRegistry({"lenprefix": LenPrefixFactory})
    assert reg.get("aeraki.meta_protocol.codec.lenprefix") is LenPrefixFactory
    assert issubclass(reg.get("lenprefix"), CodecFactory)
