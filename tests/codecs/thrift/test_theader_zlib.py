"""THeader zlib payloads: not zlib, cut short, or inflating past the frame limit are protocol
errors, refused without allocating past the limit."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest

from metaprotocol.spi import NEED_DATA, ErrorKind, ReadBuffer, RemoteProtocolError
from metaprotocol_codecs.thrift import ThriftCodecFactory, wire

SEQID = 4242


def _binary_call(body: bytes, name: bytes = b"getUser", mtype: int = wire.CALL) -> bytes:
    return wire.I32.pack(wire.BINARY_VERSION_1 - 2**32 + mtype) + wire.I32.pack(len(name)) + name + wire.I32.pack(SEQID) + body


# -- THeader zlib ---------------------------------------------------------------------------------


def _theader(payload: bytes, transforms: list[int], protocol_id: int = wire.PROTOCOL_BINARY) -> bytes:
    return wire.build_theader(1, protocol_id, {}, payload, transforms=transforms)


def test_theader_payload_that_is_not_zlib_is_a_protocol_error() -> None:
    b = b"\x0f\xff\x00\x00" + struct.pack(">I", 1) + b"\x00\x01" + b"\x00\x01\x01\x00" + b"not-zlib"
    frame = struct.pack(">I", len(b)) + b
    for codec, kind in ((ThriftCodecFactory().server_codec(), ErrorKind.BAD_REQUEST), (ThriftCodecFactory().client_codec(), ErrorKind.BAD_RESPONSE)):
        with pytest.raises(RemoteProtocolError, match="zlib") as info:
            codec.decode(ReadBuffer(frame))
        assert info.value.kind is kind


@pytest.mark.parametrize("cut", [1, 4])
def test_theader_zlib_payload_cut_short_is_a_protocol_error(cut: int) -> None:
    payload = zlib.compress(_binary_call(b"\x00"))
    with pytest.raises(RemoteProtocolError, match="zlib"):
        ThriftCodecFactory().server_codec().decode(ReadBuffer(_theader(payload[:-cut], [wire.TRANSFORM_ZLIB])))


LIMIT = 64 * 1024


def _bomb(inflated: int) -> bytes:
    call = _binary_call(b"\x0b\x00\x01" + wire.I32.pack(inflated) + b"\x00" * inflated + b"\x00")
    return _theader(zlib.compress(call, 9), [wire.TRANSFORM_ZLIB])


def test_theader_zlib_bomb_is_refused_without_inflating_it() -> None:
    frame = _bomb(64 * LIMIT)  # 4 MiB of zeros in a few KiB
    assert len(frame) < LIMIT
    server = ThriftCodecFactory({"max_frame_size": LIMIT}).server_codec()
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="inflates past"):
            server.decode(ReadBuffer(frame))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT, f"allocated {peak} bytes to refuse the frame"


def test_theader_zlib_payload_within_the_limit_decodes() -> None:
    frame = _bomb(LIMIT - 64)
    msg = ThriftCodecFactory({"max_frame_size": LIMIT}).server_codec().decode(ReadBuffer(frame))
    assert msg is not NEED_DATA and msg.request_id == SEQID  # type: ignore[union-attr]
    assert msg.metadata["method"] == "getUser"  # type: ignore[union-attr]


def test_theader_chained_zlib_transforms_obey_the_limit_at_each_step() -> None:
    call = _binary_call(b"\x0b\x00\x01" + wire.I32.pack(64 * LIMIT) + b"\x00" * (64 * LIMIT) + b"\x00")
    frame = _theader(zlib.compress(zlib.compress(call, 9), 9), [wire.TRANSFORM_ZLIB, wire.TRANSFORM_ZLIB])
    with pytest.raises(RemoteProtocolError, match="inflates past"):
        ThriftCodecFactory({"max_frame_size": LIMIT}).client_codec().decode(ReadBuffer(frame))
