"""Differential tests: the construct spec vs the hand-written Thrift decoder and rewriter."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.spi import MessageType, ReadBuffer
from metaprotocol_codecs.thrift import ThriftCodecFactory
from tests.codecs.thrift import wire_spec

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=30)
seqids = st.integers(-(2**31), 2**31 - 1)
header_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10).filter(lambda k: k not in ("method", "service", "message_type", "status"))
header_maps = st.dictionaries(header_keys, st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", max_size=20), max_size=5)
EMPTY_ARGS = b"\x00"  # a struct with no fields: just the stop byte (same in binary and compact)


def _decode(frame: bytes):  # type: ignore[no-untyped-def]
    return ThriftCodecFactory().server_codec().decode(ReadBuffer(frame))


@given(names, seqids, st.sampled_from(["binary", "compact"]), st.booleans())
def test_spec_built_framed_and_unframed_messages_decode(name: str, seqid: int, protocol: str, framed: bool) -> None:
    if protocol == "binary":
        message = wire_spec.BinaryStrictHeader.build({"type": 1, "name": name, "seqid": seqid}) + EMPTY_ARGS
    else:
        message = wire_spec.CompactHeader.build({"type_and_version": (1 << 5) | 1, "seqid": seqid & 0xFFFFFFFF, "name": name}) + EMPTY_ARGS
    frame = wire_spec.Framed.build({"frame": message}) if framed else message
    msg = _decode(frame)
    assert msg.type is MessageType.REQUEST and msg.request_id == seqid and msg.metadata["method"] == name  # type: ignore[union-attr]


@given(names, seqids, st.sampled_from([0, 2]), header_maps)
def test_spec_built_theader_frames_decode(name: str, seqid: int, protocol_id: int, headers: dict[str, str]) -> None:
    if protocol_id == 0:
        payload = wire_spec.BinaryStrictHeader.build({"type": 1, "name": name, "seqid": seqid}) + EMPTY_ARGS
    else:
        payload = wire_spec.CompactHeader.build({"type_and_version": (1 << 5) | 1, "seqid": seqid & 0xFFFFFFFF, "name": name}) + EMPTY_ARGS
    frame = wire_spec.build_theader(seqid, protocol_id, headers, payload)
    msg = _decode(frame)
    assert msg.request_id == seqid  # type: ignore[union-attr]
    assert msg.metadata == {**headers, "method": name, "message_type": "call"}  # type: ignore[union-attr]


@given(names, seqids, seqids, header_maps, header_maps)
def test_rewritten_theader_frames_parse_under_the_spec(name: str, seqid: int, new: int, headers: dict[str, str], mutation: dict[str, str]) -> None:
    payload = wire_spec.CompactHeader.build({"type_and_version": (1 << 5) | 1, "seqid": seqid & 0xFFFFFFFF, "name": name}) + EMPTY_ARGS
    msg = _decode(wire_spec.build_theader(seqid, 2, headers, payload))
    out = ThriftCodecFactory().client_codec().encode(msg, mutation, new)  # type: ignore[arg-type]
    parsed = wire_spec.THeaderFrame.parse(out)
    info = wire_spec.THeaderInfo.parse(parsed.header) if (headers or mutation) else None
    if info is not None:
        assert {h.key: h.value for h in info.headers} == {**headers, **mutation}
    inner = wire_spec.CompactHeader.parse(parsed.payload)
    assert inner.seqid == new & 0xFFFFFFFF and inner.name == name
    assert parsed.seqid == new  # the header sequence id mirrored the message seqid, so it follows
