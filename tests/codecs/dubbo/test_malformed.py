"""Malformed Hessian inside Dubbo frames: only the SPI's documented outcomes, never a crash.

A request body that cannot be read is answered BAD_REQUEST (a Message the core answers locally);
a response body that cannot be read surfaces as RemoteProtocolError(BAD_RESPONSE) when its lazy
metadata is read. Each case here once escaped as IndexError or RecursionError.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from metaprotocol.spi import ErrorKind, Message, ReadBuffer, RemoteProtocolError
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire
from metaprotocol_codecs.dubbo.fastscan import MAX_DEPTH, skip_values
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, HessianDecodeError, loads, loads_all

# A non-final binary chunk ('A', length 0) followed by a medium binary (0x34) whose length byte
# is missing: fastscan read past the end of the data.
TRUNCATED_CHUNKS = bytes.fromhex("41000034")


def _request(body: bytes) -> bytes:
    return struct.pack(">HBBQI", wire.MAGIC, 0xC2, 0, 1, len(body)) + body


def _answered_bad_request(frame: bytes) -> None:
    codec = DubboCodecFactory().server_codec()
    msg = codec.decode(ReadBuffer(frame))
    assert isinstance(msg, Message) and msg.request_id == 1
    answer = codec.answer_locally(msg)
    assert answer is not None
    reply = DubboCodecFactory().client_codec().decode(ReadBuffer(answer.reply))
    assert reply.request_id == 1 and reply.raw[3] == wire.BAD_REQUEST  # type: ignore[union-attr]


def test_truncated_binary_chunk_is_a_decode_error_in_fastscan() -> None:
    with pytest.raises(HessianDecodeError):
        skip_values(TRUNCATED_CHUNKS, 0, len(TRUNCATED_CHUNKS), 1, [], [])
    # Bytes after ``end`` are not the value's: the same answer when the data goes on.
    with pytest.raises(HessianDecodeError):
        skip_values(TRUNCATED_CHUNKS + b"\x00\x00", 0, len(TRUNCATED_CHUNKS), 1, [], [])


@pytest.mark.parametrize(
    "body",
    [
        TRUNCATED_CHUNKS,  # as the whole body: the head strings are missing
        b"\x052.0.2\x03svc\x00\x01m\x02[B" + TRUNCATED_CHUNKS,  # as the argument fastscan skips
    ],
)
def test_request_with_truncated_binary_chunks_is_answered_bad_request(body: bytes) -> None:
    _answered_bad_request(_request(body))


def test_response_with_truncated_binary_chunks_is_a_bad_response_on_metadata_read() -> None:
    body = bytes.fromhex("9141000804009e003737373737")
    frame = struct.pack(">HBBQI", wire.MAGIC, 2, 20, 1, len(body)) + body
    msg = DubboCodecFactory().client_codec().decode(ReadBuffer(frame))
    assert isinstance(msg, Message) and msg.request_id == 1
    with pytest.raises(RemoteProtocolError) as info:
        msg.metadata  # noqa: B018 - parsed on first read
    assert info.value.kind is ErrorKind.BAD_RESPONSE


def test_back_reference_to_nothing_is_rejected_by_both_skippers() -> None:
    data = b"\x51\x90"  # Q 0: no list, map or object was started
    with pytest.raises(HessianDecodeError):
        loads(data)
    with pytest.raises(HessianDecodeError):
        Hessian2Reader(data).skip()
    with pytest.raises(HessianDecodeError):
        skip_values(data, 0, len(data), 1, [], [])
    # A reference to a container that was started (even the one it is in) is fine.
    cyclic = b"\x79\x51\x90"  # a one-element untyped list holding a reference to itself
    assert skip_values(cyclic, 0, len(cyclic), 1, [], []) == len(cyclic)
    assert loads(cyclic)[0] is not None


CLASS_CHAIN = b"C\x01a\x90" * 500 + b"N"


def test_chained_class_definitions_are_a_decode_error_not_a_recursion_error() -> None:
    with pytest.raises(HessianDecodeError, match="nesting"):
        loads(CLASS_CHAIN)
    with pytest.raises(HessianDecodeError, match="nesting"):
        Hessian2Reader(CLASS_CHAIN).skip()
    with pytest.raises(HessianDecodeError, match="nesting"):
        skip_values(CLASS_CHAIN, 0, len(CLASS_CHAIN), 1, [], [])
    # A chain within the limit is valid Hessian (each definition serves the value after it).
    short = b"C\x01a\x90" * 10 + b"N"
    assert loads(short) is None
    assert skip_values(short, 0, len(short), 1, [], []) == len(short)


def test_chained_class_definitions_in_a_request_are_answered_bad_request() -> None:
    body = b"\x052.0.2\x03svc\x00\x01m\x00H\x01a" + CLASS_CHAIN + b"Z"
    _answered_bad_request(_request(body))


def test_chained_class_definitions_in_a_response_are_a_bad_response() -> None:
    body = b"\x91" + CLASS_CHAIN
    frame = struct.pack(">HBBQI", wire.MAGIC, 2, 20, 1, len(body)) + body
    msg = DubboCodecFactory().client_codec().decode(ReadBuffer(frame))
    with pytest.raises(RemoteProtocolError) as info:
        msg.metadata  # noqa: B018
    assert info.value.kind is ErrorKind.BAD_RESPONSE


def _nested(depth: int, level: bytes, inner: bytes) -> bytes:
    return level * depth + inner


@pytest.mark.parametrize(
    ("level", "inner"),
    [
        (b"\x79", b"\x78"),  # one-element lists around an empty list
        (b"\x55\x01t\x91\x79", b"\x90"),  # a typed variable list (type, then "1 element" list)
        (b"\x48\x90", b"\x90"),  # untyped maps: key 0, value the next map
        (b"C\x01a\x91\x01f\x60", b"\x90"),  # a class definition and its object, at every level
    ],
    ids=["lists", "typed-lists", "maps", "class-defs"],
)
def test_nesting_limit_is_the_same_for_the_reader_and_fastscan(level: bytes, inner: bytes) -> None:
    """Every recursive form counts one level (a class definition with the value it serves too),
    so both readers accept and reject at the same depth."""
    for depth in (MAX_DEPTH // 2 - 1, MAX_DEPTH // 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 3 * MAX_DEPTH):
        data = _nested(depth, level, inner)
        data += b"Z" * (data.count(b"\x55") + data.count(b"\x48"))
        outcomes = [_outcome(step, data) for step in (_fast, _skip, _read)]
        assert outcomes[0] == outcomes[1] == outcomes[2], (depth, outcomes)


def _outcome(step: Callable[[bytes], int], data: bytes) -> int | str:
    try:
        return step(data)
    except HessianDecodeError:
        return "error"


def _fast(data: bytes) -> int:
    return skip_values(data, 0, len(data), 1, [], [])


def _skip(data: bytes) -> int:
    r = Hessian2Reader(data)
    r.skip()
    return r.pos


def _read(data: bytes) -> int:
    loads_all(data)
    return len(data)



def test_an_unreadable_eager_response_body_is_skipped_and_names_its_request() -> None:
    """The frame's length is known: the codec steps over it, so the core fails only the request
    it answers and keeps the shared upstream connection for the others."""
    body = b"\x41\x00"
    frame = struct.pack(">HBBQI", wire.MAGIC, 2, 20, 9, len(body)) + body
    good = wire.build_heartbeat(10, reply=True)
    buf = ReadBuffer(frame + good)
    codec = DubboCodecFactory().client_codec()
    with pytest.raises(RemoteProtocolError) as info:
        codec.decode(buf)
    assert info.value.skipped and info.value.kind is ErrorKind.BAD_RESPONSE
    assert isinstance(info.value.request, Message) and info.value.request.request_id == 9
    assert buf.pos == len(frame)
    assert codec.decode(buf).request_id == 10  # type: ignore[union-attr]
