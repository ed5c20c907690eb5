"""The Thrift codec against Apache Thrift's bytes (../shared/testdata/thrift), and robustness."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.spi import NEED_DATA, ErrorKind, LazyMessage, LocalError, MessageType, ReadBuffer, RemoteProtocolError
from metaprotocol.testing import CodecSamples, check_codec
from metaprotocol_codecs.thrift import ThriftCodecFactory
from metaprotocol_codecs.thrift import wire
from tests.vectors import load

VECTORS = load("thrift/messages.json")
SINGLE = [v for v in VECTORS if "messages" not in v]
TYPES = {"CALL": MessageType.REQUEST, "ONEWAY": MessageType.ONEWAY, "REPLY": MessageType.RESPONSE, "EXCEPTION": MessageType.ERROR}
PROTOCOLS = {"binary-strict": wire.Protocol.BINARY, "binary-nonstrict": wire.Protocol.BINARY_NONSTRICT, "compact": wire.Protocol.COMPACT,
             "header/binary": wire.Protocol.BINARY, "header/compact": wire.Protocol.COMPACT}  # fmt: skip
TRANSPORTS = {"buffered": wire.Transport.UNFRAMED, "framed": wire.Transport.FRAMED, "header": wire.Transport.HEADER}


def side(v: dict) -> object:  # type: ignore[type-arg]
    f = ThriftCodecFactory()
    return f.server_codec() if v["message"]["type"] in ("CALL", "ONEWAY") else f.client_codec()


def decode_all(codec: object, data: bytes) -> list:  # type: ignore[type-arg]
    buf = ReadBuffer(data)
    out = []
    while (m := codec.decode(buf)) is not NEED_DATA:  # type: ignore[attr-defined]
        out.append(m)
    assert buf.pending() == 0
    return out


@pytest.mark.parametrize("v", SINGLE, ids=lambda v: v["id"])
def test_vectors_decode_to_transport_protocol_method_type_seqid_headers(v: dict) -> None:  # type: ignore[type-arg]
    data = bytes.fromhex(v["hex"])
    codec = side(v)
    (msg,) = decode_all(codec, data)
    m = v["message"]
    assert msg.raw == data
    assert msg.type is TYPES[m["type"]]
    assert msg.request_id == m["seqid"]
    service, _, method = m["name"].rpartition(":")
    assert msg.metadata["method"] == method
    assert msg.metadata.get("service") == (service or None)
    assert msg.opaque.transport is TRANSPORTS[v["transport"]]  # type: ignore[union-attr]
    assert msg.opaque.protocol is PROTOCOLS[v["protocol"]]  # type: ignore[union-attr]
    if v["transport"] == "header":
        for k, value in v["header"]["headers"].items():
            assert msg.metadata[k.lower()] == value
    # Byte at a time gives the same message.
    codec2 = side(v)
    buf = ReadBuffer()
    got = []
    for i in range(len(data)):
        buf.feed(data[i : i + 1])
        while (x := codec2.decode(buf)) is not NEED_DATA:  # type: ignore[attr-defined]
            got.append(x)
    assert [bytes(x.raw) for x in got] == [data]


KINDS = sorted({(v["transport"], v["protocol"]) for v in SINGLE})


@pytest.mark.parametrize(("transport", "protocol"), KINDS)
def test_every_vector_of_a_kind_back_to_back_on_one_connection(transport: str, protocol: str) -> None:
    calls = [v for v in SINGLE if (v["transport"], v["protocol"]) == (transport, protocol) and v["message"]["type"] in ("CALL", "ONEWAY")]
    replies = [v for v in SINGLE if (v["transport"], v["protocol"]) == (transport, protocol) and v["message"]["type"] in ("REPLY", "EXCEPTION")]
    for group, codec in ((calls, ThriftCodecFactory().server_codec()), (replies, ThriftCodecFactory().client_codec())):
        if not group:
            continue
        msgs = decode_all(codec, b"".join(bytes.fromhex(v["hex"]) for v in group))
        assert [(m.request_id, m.metadata["method"]) for m in msgs] == [(v["message"]["seqid"], v["message"]["name"].rpartition(":")[2]) for v in group]


def test_replies_are_forwarded_without_building_metadata() -> None:
    reply = next(v for v in SINGLE if v["message"]["type"] == "REPLY" and v["transport"] == "framed")
    (msg,) = decode_all(ThriftCodecFactory().client_codec(), bytes.fromhex(reply["hex"]))
    assert isinstance(msg, LazyMessage) and msg._metadata is None
    assert ThriftCodecFactory().server_codec().encode(msg, None, 77) != msg.raw and msg._metadata is None
    assert msg.metadata["method"] == reply["message"]["name"].rpartition(":")[2]


def test_declared_exception_reply_is_a_response_with_error_status() -> None:
    declared = [v for v in SINGLE if v["message"]["type"] == "REPLY" and "xception" in v["desc"]]
    assert declared
    for v in declared:
        (msg,) = decode_all(ThriftCodecFactory().client_codec(), bytes.fromhex(v["hex"]))
        assert msg.type is MessageType.RESPONSE and msg.metadata.get("status") == "exception", v["id"]


@pytest.mark.parametrize("v", [v for v in SINGLE if v["message"]["type"] == "CALL"], ids=lambda v: v["id"])
def test_seqid_rewrite_roundtrip(v: dict) -> None:  # type: ignore[type-arg]
    data = bytes.fromhex(v["hex"])
    (msg,) = decode_all(ThriftCodecFactory().server_codec(), data)
    client = ThriftCodecFactory().client_codec(msg.opaque and (msg.opaque.transport, msg.opaque.protocol))
    assert client.encode(msg) is msg.raw
    for new in (0, 1, 300, 2**31 - 1, 70000):
        out = client.encode(msg, None, new)
        (again,) = decode_all(ThriftCodecFactory().server_codec(), bytes(out))
        assert again.request_id == new
        assert again.metadata == msg.metadata
        # Everything after the message header is unchanged, and rewriting back restores the frame.
        assert bytes(again.opaque.payload[again.opaque.header.end :]) == bytes(msg.opaque.payload[msg.opaque.header.end :])  # type: ignore[union-attr]
        assert bytes(client.encode(again, None, v["message"]["seqid"])) == data


@pytest.mark.parametrize("v", [v for v in SINGLE if v["transport"] == "header" and v["message"]["type"] == "CALL"], ids=lambda v: v["id"])
def test_theader_mutation_sets_headers(v: dict) -> None:  # type: ignore[type-arg]
    (msg,) = decode_all(ThriftCodecFactory().server_codec(), bytes.fromhex(v["hex"]))
    out = ThriftCodecFactory().client_codec().encode(msg, {"x-mesh": "metaprotocol", "trace-id": "override"}, 9)
    (again,) = decode_all(ThriftCodecFactory().server_codec(), bytes(out))
    assert again.metadata["x-mesh"] == "metaprotocol" and again.metadata["trace-id"] == "override"
    assert again.request_id == 9 and again.metadata["method"] == msg.metadata["method"]


@pytest.mark.parametrize("v", [v for v in SINGLE if v["message"]["type"] == "CALL"][:12], ids=lambda v: v["id"])
def test_error_reply_is_a_tapplicationexception_in_the_same_transport(v: dict) -> None:  # type: ignore[type-arg]
    (msg,) = decode_all(ThriftCodecFactory().server_codec(), bytes.fromhex(v["hex"]))
    for kind, exc_type in ((ErrorKind.ROUTE_NOT_FOUND, wire.UNKNOWN_METHOD), (ErrorKind.UPSTREAM_TIMEOUT, wire.INTERNAL_ERROR)):
        reply = ThriftCodecFactory().server_codec().on_error(msg, LocalError(kind, "why"))
        (r,) = decode_all(ThriftCodecFactory().client_codec(), reply)
        assert r.type is MessageType.ERROR and r.request_id == msg.request_id
        assert r.opaque.transport is msg.opaque.transport and r.opaque.protocol is msg.opaque.protocol  # type: ignore[union-attr]
        assert r.metadata["method"] == msg.metadata["method"]
        assert exc_type in (1, 6)


def test_frame_limit_and_garbage() -> None:
    f = ThriftCodecFactory({"max_frame_size": 100})
    with pytest.raises(RemoteProtocolError, match="out of range"):
        f.server_codec().decode(ReadBuffer(wire.I32.pack(101) + b"\x80\x01\x00\x01" + b"x" * 101))
    with pytest.raises(RemoteProtocolError, match="Thrift message"):
        f.server_codec().decode(ReadBuffer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))


def test_thrift_conforms() -> None:
    calls = [bytes.fromhex(v["hex"]) for v in SINGLE if v["message"]["type"] == "CALL" and v["transport"] == "framed" and v["protocol"] == "compact"][:3]
    replies = [bytes.fromhex(v["hex"]) for v in SINGLE if v["message"]["type"] in ("REPLY", "EXCEPTION") and v["transport"] == "framed" and v["protocol"] == "compact"][:3]
    check_codec(CodecSamples(ThriftCodecFactory({"transport": "framed", "protocol": "compact"}), calls, replies, garbage_rounds=200))


def test_truncated_theader_frame_is_a_protocol_error() -> None:
    frame = bytes.fromhex("000000020fff")  # a THeader length word that leaves no room for its header
    with pytest.raises(RemoteProtocolError, match="shorter than its fixed header"):
        ThriftCodecFactory({"transport": "header"}).server_codec().decode(ReadBuffer(frame))


@given(st.sampled_from([v["hex"] for v in SINGLE]), st.data())
def test_mutated_messages_never_crash(hexmsg: str, data: st.DataObject) -> None:
    frame = bytearray(bytes.fromhex(hexmsg))
    for _ in range(data.draw(st.integers(1, 4))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    for make in (ThriftCodecFactory().server_codec, ThriftCodecFactory().client_codec):
        buf = ReadBuffer(bytes(frame))
        codec = make()
        try:
            for _ in range(len(frame) + 1):
                msg = codec.decode(buf)
                if msg is NEED_DATA:
                    break
                msg.metadata  # noqa: B018 - replies are read here, on first use
        except RemoteProtocolError:
            pass


@st.composite
def _binary_messages(draw: st.DrawFn, strict: bool) -> bytes:
    name = draw(st.sampled_from([b"get", b"ge", b"getX", b"Svc:get", b""]))
    mtype = draw(st.sampled_from([wire.CALL, wire.ONEWAY, wire.REPLY]))
    seqid = draw(st.integers(-(2**31), 2**31 - 1))
    if strict:
        head = wire.I32.pack(wire.BINARY_VERSION_1 - 2**32 + mtype) + wire.I32.pack(len(name)) + name
    else:
        head = wire.I32.pack(len(name)) + name + bytes([mtype])
    return head + wire.I32.pack(seqid) + draw(st.sampled_from([b"\x00", b"\x08\x00\x01\x00\x00\x00\x07\x00"]))


@given(st.booleans(), st.booleans(), st.data())
def test_a_connection_remembering_its_last_header_decodes_as_a_fresh_codec(framed: bool, strict: bool, data: st.DataObject) -> None:
    """Each connection remembers the binary header bytes it read last (up to the seqid);
    whatever follows, it decodes as a codec without memory would, or fails as it would."""
    messages = data.draw(st.lists(st.one_of(_binary_messages(strict), st.binary(max_size=12)), min_size=1, max_size=10))
    config = {"transport": "framed" if framed else "unframed", "protocol": "binary" if strict else "binary-nonstrict"}

    remembering = ThriftCodecFactory(config).server_codec()
    for m in messages:
        data = wire.I32.pack(len(m)) + m if framed else m
        assert _decoded(remembering, data) == _decoded(ThriftCodecFactory(config).server_codec(), data)


def _decoded(codec: object, data: bytes) -> object:
    """What one decode makes of ``data``: NEED_DATA, "error", or the message's parts."""
    try:
        msg = codec.decode(ReadBuffer(data))  # type: ignore[attr-defined]
    except RemoteProtocolError:
        return "error"
    return msg if msg is NEED_DATA else (msg.type, msg.request_id, msg.metadata, bytes(msg.raw))


@given(st.data())
def test_a_connection_remembering_its_last_theader_block_decodes_as_a_fresh_codec(data: st.DataObject) -> None:
    """Likewise for THeader blocks (everything but the seqid): other headers, flags, protocols,
    truncated or garbage frames decode, or fail, as they would on a new connection."""
    frames = []
    for _ in range(data.draw(st.integers(1, 8))):
        if data.draw(st.integers(0, 4)) == 0:
            frames.append(data.draw(st.binary(max_size=30)))
            continue
        headers = data.draw(st.dictionaries(st.sampled_from(["a", "B", "trace"]), st.sampled_from(["", "x", "yy"]), max_size=2))
        message = data.draw(_binary_messages(True))
        frame = wire.build_theader(data.draw(st.integers(0, 2**31 - 1)), wire.PROTOCOL_BINARY, headers, message, flags=data.draw(st.sampled_from([0, 1])))
        frames.append(frame[: len(frame) - data.draw(st.sampled_from([0, 0, 0, 1, 5]))])

    remembering = ThriftCodecFactory({"transport": "header"}).server_codec()
    for frame in frames:
        assert _decoded(remembering, frame) == _decoded(ThriftCodecFactory({"transport": "header"}).server_codec(), frame)
