"""Malformed Thrift: only the SPI's documented outcomes, and the protocol's own error reply
whenever the message header (method name, seqid) could be read.

Replies are parsed by Apache Thrift's own protocol classes, as a client would read them.
"""

from __future__ import annotations

import pytest
from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.Thrift import TApplicationException, TMessageType
from thrift.transport.TTransport import TMemoryBuffer

from metaprotocol.spi import ErrorKind, LocalError, Message, ReadBuffer, RemoteProtocolError
from metaprotocol_codecs.thrift import ThriftCodecFactory, wire

SEQID = 4242


def _compact_call(body: bytes, name: bytes = b"getUser", mtype: int = wire.CALL) -> bytes:
    return bytes((wire.COMPACT_ID, (mtype << 5) | wire.COMPACT_VERSION)) + wire.write_varint(SEQID) + wire.write_varint(len(name)) + name + body


def _binary_call(body: bytes, name: bytes = b"getUser", mtype: int = wire.CALL) -> bytes:
    return wire.I32.pack(wire.BINARY_VERSION_1 - 2**32 + mtype) + wire.I32.pack(len(name)) + name + wire.I32.pack(SEQID) + body


def _nonstrict_call(body: bytes, name: bytes = b"getUser", mtype: int = wire.CALL) -> bytes:
    return wire.I32.pack(len(name)) + name + bytes((mtype,)) + wire.I32.pack(SEQID) + body


# Bodies that are not a struct: an unknown field type; a negative string length; a varint that
# never ends (compact); nesting past the limit.
BAD_BODIES = {
    "compact": [b"\x1e\x00", b"\x18" + b"\xff" * 11, b"\x1c" * (wire.MAX_DEPTH + 2)],
    "binary": [b"\x11\x00\x01\x00", b"\x0b\x00\x01\xff\xff\xff\xff", b"\x0c\x00\x01" * (wire.MAX_DEPTH + 2)],
}
MAKERS = {"compact": _compact_call, "binary": _binary_call, "binary-nonstrict": _nonstrict_call}
PROTOCOLS = {"compact": TCompactProtocol, "binary": TBinaryProtocol, "binary-nonstrict": TBinaryProtocol}


def _read_exception(reply: bytes, protocol: str) -> tuple[str, int, TApplicationException]:
    """What an Apache Thrift client makes of the reply: method name, seqid, the exception."""
    buf = TMemoryBuffer(reply)
    proto = PROTOCOLS[protocol](buf, strictRead=False) if protocol != "compact" else TCompactProtocol(buf)
    name, mtype, seqid = proto.readMessageBegin()
    assert mtype == TMessageType.EXCEPTION
    exc = TApplicationException()
    exc.read(proto)
    proto.readMessageEnd()
    return name, seqid, exc


def _protocol_error_reply(data: bytes, config: dict[str, object] | None = None) -> bytes:
    """Decode ``data`` on the server side, expecting RemoteProtocolError; the reply the core sends
    for it (session._protocol_error: on_error with the error's request and kind)."""
    server = ThriftCodecFactory(config).server_codec()
    with pytest.raises(RemoteProtocolError) as info:
        server.decode(ReadBuffer(data))
    exc = info.value
    assert exc.kind is ErrorKind.BAD_REQUEST
    request = exc.request if isinstance(exc.request, Message) else None
    return server.on_error(request, LocalError(exc.kind, str(exc)))


@pytest.mark.parametrize("protocol", ["compact", "binary", "binary-nonstrict"])
@pytest.mark.parametrize("bad", range(3))
def test_unframed_call_with_a_bad_body_gets_a_tapplicationexception(protocol: str, bad: int) -> None:
    body = BAD_BODIES["compact" if protocol == "compact" else "binary"][bad]
    config = {"transport": "unframed", "protocol": protocol} if protocol == "binary-nonstrict" else None
    reply = _protocol_error_reply(MAKERS[protocol](body), config)
    assert reply, "the client must get the protocol's error reply"
    name, seqid, exc = _read_exception(reply, protocol)
    assert (name, seqid) == ("getUser", SEQID)
    assert exc.type == TApplicationException.PROTOCOL_ERROR
    assert exc.message.startswith("metaprotocol: ")


def test_unframed_oneway_with_a_bad_body_gets_no_reply() -> None:
    """A oneway caller reads no reply: an EXCEPTION would be taken for the next call's reply."""
    assert _protocol_error_reply(_compact_call(b"\x1e\x00", mtype=wire.ONEWAY)) == b""


def test_unframed_reply_with_a_bad_body_names_the_seqid_it_answers() -> None:
    client = ThriftCodecFactory().client_codec()
    with pytest.raises(RemoteProtocolError) as info:
        client.decode(ReadBuffer(_binary_call(b"\x11\x00\x01\x00", mtype=wire.REPLY)))
    assert info.value.kind is ErrorKind.BAD_RESPONSE
    assert isinstance(info.value.request, Message) and info.value.request.request_id == SEQID


def test_unframed_message_growing_past_the_limit_is_answered() -> None:
    data = _binary_call(b"\x0b\x00\x01" + wire.I32.pack(1000) + b"x" * 200)
    name, seqid, exc = _read_exception(_protocol_error_reply(data, {"max_frame_size": 128}), "binary")
    assert (name, seqid, exc.type) == ("getUser", SEQID, TApplicationException.PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("auto", b"\x80\x01\x00\x01\x00\x00\x00\xff"),  # a name longer than the frame
        ("auto", b"\x80\x01\x00\x01\x00\x00\x00\x01m"),  # no room for the seqid
        ("auto", b"\x80\x02\x00\x01\x00\x00\x00\x01m\x00\x00\x00\x01\x00"),  # a bad version
        ("auto", b"\x82\x21"),  # compact, cut after the version byte
        ("auto", b"\x82\x21" + b"\xff" * 11 + b"\x00"),  # compact, a seqid varint that never ends
        ("binary-nonstrict", b"\x00\x00\x00\x10\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00"),  # name past the frame
        ("binary-nonstrict", b"\xff\xff\xff\xf0\x00\x00\x00\x00\x00\x00\x00\x00\x00"),  # a negative name length (read as a bad strict version)
    ],
)
def test_framed_frame_with_an_unreadable_header_is_a_protocol_error(protocol: str, message: bytes) -> None:
    frame = wire.I32.pack(len(message)) + message
    factory = ThriftCodecFactory({"transport": "framed", "protocol": protocol})
    for codec in (factory.server_codec(), factory.client_codec()):
        with pytest.raises(RemoteProtocolError):
            codec.decode(ReadBuffer(frame))


def test_framed_call_body_is_forwarded_unread() -> None:
    """Framed bodies are not walked (docs/thrift.md): the frame length keeps the stream aligned and
    the server answers a bad body with its own TApplicationException."""
    frame_body = _binary_call(b"\x11\x00\x01\x00")
    msg = ThriftCodecFactory().server_codec().decode(ReadBuffer(wire.I32.pack(len(frame_body)) + frame_body))
    assert isinstance(msg, Message) and msg.request_id == SEQID


def test_lazy_reply_metadata_with_an_endless_varint_is_a_bad_response() -> None:
    body = b"\x0c" + b"\xff" * 11  # a long-form field header whose field id never ends
    reply = _compact_call(body, name=b"m", mtype=wire.REPLY)
    msg = ThriftCodecFactory().client_codec().decode(ReadBuffer(wire.I32.pack(len(reply)) + reply))
    assert isinstance(msg, Message)
    with pytest.raises(RemoteProtocolError) as info:
        msg.metadata  # noqa: B018 - worked out on first read
    assert info.value.kind is ErrorKind.BAD_RESPONSE

