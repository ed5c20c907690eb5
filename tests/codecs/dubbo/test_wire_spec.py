"""Differential tests: the construct wire spec vs the hand-written Dubbo decoder and encoder."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.spi import MessageType, ReadBuffer
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire
from tests.codecs.dubbo import wire_spec
from tests.vectors import load

ascii_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=60)
keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=12).filter(lambda k: k not in ("interface", "method", "dubbo", "version"))


@given(
    request_id=st.integers(0, 2**63 - 1),
    two_way=st.booleans(),
    path=ascii_text,
    version=ascii_text,
    method=ascii_text,
    args=st.lists(st.integers(-16, 47), max_size=6),
    attachments=st.dictionaries(keys, ascii_text, max_size=6),
)
def test_frames_built_from_the_spec_decode_with_the_fast_decoder(
    request_id: int, two_way: bool, path: str, version: str, method: str, args: list[int], attachments: dict[str, str]
) -> None:
    frame = wire_spec.build_request_frame(request_id, two_way, path, version, method, args, attachments)
    msg = DubboCodecFactory().server_codec().decode(ReadBuffer(frame))
    assert msg.type is (MessageType.REQUEST if two_way else MessageType.ONEWAY)  # type: ignore[union-attr]
    assert msg.request_id == request_id  # type: ignore[union-attr]
    assert msg.metadata == {**attachments, "interface": path, "method": method, "version": version, "dubbo": "2.0.2"}  # type: ignore[union-attr]
    inv = wire.parse_invocation(frame)
    assert inv.args == args


@given(request_id=st.integers(0, 2**63 - 1), path=ascii_text, method=ascii_text, attachments=st.dictionaries(keys, ascii_text, max_size=5))
def test_frames_our_encoder_builds_parse_under_the_spec(request_id: int, path: str, method: str, attachments: dict[str, str]) -> None:
    frame = wire.build_request(request_id, wire.Invocation(path, method, "II", [1, 2], attachments, "1.0.0"))
    parsed = wire_spec.Frame.parse(frame)
    assert parsed.header.request_id == request_id
    assert parsed.header.flags.request and parsed.header.flags.two_way and parsed.header.flags.serialization == 2
    body = wire_spec.RequestBody.parse(parsed.body)
    assert (body.path.text, body.method.text, body.version.text) == (path, method, "1.0.0")
    assert [a.code - 0x90 for a in body.args] == [1, 2]
    assert {e.key.text: e.value.text for e in body.attachments.entries} == attachments


def test_every_vector_header_parses_under_the_spec() -> None:
    for v in load("dubbo/frames.json"):
        if v["kind"] == "stream":
            continue
        frame = bytes.fromhex(v["hex"])
        parsed = wire_spec.Frame.parse(frame)
        h = v["header"]
        assert parsed.header.request_id == int(h["request_id"])
        assert parsed.header.body_length == h["body_length"] == len(parsed.body)
        assert (parsed.header.flags.request, parsed.header.flags.two_way, parsed.header.flags.event) == (h["is_request"], h["two_way"], h["event"])
        assert parsed.header.status == h["status"]
