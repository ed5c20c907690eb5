"""Request attachments read on first use (attachments.RequestMetadata) against reading them at decode.

The fast path must change the cost only: for any body, the lazy decode and the eager one
(``_request_metadata(..., lazy=False)``, the reference) raise alike or give the same metadata,
in the same order, with the same attachments for a mutation; ``plain_flat_map`` may vouch only
for maps ``read_flat_map`` reads. Bodies come from the encoder (random attachment maps: text
with and without ASCII, ints and longs of every width, booleans, nulls, floats and nested values
that are not flat, mixed-case keys), and from truncations and byte flips of those. The frame
header's byte reads (codec._header) are checked against ``wire.HEADER`` (struct) too.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol.spi import Message, MessageType, ReadBuffer
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire
from metaprotocol_codecs.dubbo.attachments import Recent, RequestMetadata
from metaprotocol_codecs.dubbo.codec import _BODY_ERRORS, _encode, _request_metadata
from metaprotocol_codecs.dubbo.fastscan import plain_flat_map, read_flat_map
from metaprotocol_codecs.dubbo.hessian2 import Hessian2Writer
from metaprotocol_codecs.dubbo.hessian2_types import HessianList, HessianMap, Long

keys = st.one_of(
    st.sampled_from(["path", "interface", "version", "timeout", "traceparent", "tenant", "Foo", "X-Trace", "method", "dubbo", "é"]),
    st.text(max_size=40),
)
ints = st.one_of(
    st.integers(-16, 47), st.integers(-2048, 2047), st.integers(-(2**18), 2**18 - 1), st.integers(-(2**31), 2**31 - 1)
)
longs = st.one_of(st.integers(-8, 15), st.integers(-2048, 2047), st.integers(-(2**18), 2**18 - 1), st.integers(-(2**31), 2**31 - 1),
                  st.integers(-(2**63), 2**63 - 1)).map(Long)  # fmt: skip
scalars = st.one_of(
    st.none(), st.booleans(), ints, longs, st.floats(allow_nan=False), st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=300),
)  # fmt: skip
values = st.one_of(scalars, st.lists(st.text(max_size=3), max_size=2).map(HessianList), st.just(b"\x00\x81"))
attachment_maps = st.dictionaries(keys, values, max_size=8)


def _request(attachments: dict[str, Any], args: list[Any] | None = None) -> bytes:
    inv = wire.Invocation("org.example.Svc", "call", "Ljava/lang/String;", args or ["x"], attachments, "1.0.0")
    return wire.build_request(7, inv)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A request, maybe truncated or with one byte changed (the header's length kept right)."""
    frame = bytearray(_request(HessianMap(draw(attachment_maps))))
    how = draw(st.sampled_from(["as is", "as is", "cut", "flip"]))
    if how == "cut" and len(frame) > wire.HEADER_SIZE:
        frame = frame[: draw(st.integers(wire.HEADER_SIZE, len(frame) - 1))]
    elif how == "flip" and len(frame) > wire.HEADER_SIZE:
        at = draw(st.integers(wire.HEADER_SIZE, len(frame) - 1))
        frame[at] = draw(st.integers(0, 255))
    frame[12:16] = (len(frame) - wire.HEADER_SIZE).to_bytes(4, "big")
    return bytes(frame)


def _outcome(raw: bytes, lazy: bool, recent: Recent | None) -> object:
    try:
        md, body = _request_metadata(raw, recent, lazy)
    except _BODY_ERRORS as exc:
        return type(exc)
    # The attachments by repr: keys may be values without a value equality (a list, an object).
    return list(md.items()), repr(body.attachment_map()), body.attachments_at


@given(bodies())
@example(_request({"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "timeout": 3000, "Tenant": "t-1"}))
@example(_request({"k": "\u00e9"}))
@example(_request({"k": Long(2**40), "i": 2**20, "b": True, "n": None}))
def test_lazy_metadata_equals_the_eager(raw: bytes) -> None:
    eager = _outcome(raw, False, None)
    assert _outcome(raw, True, None) == eager
    recent = Recent()  # a connection: the first call, then the same bytes again
    assert _outcome(raw, True, recent) == eager
    assert _outcome(raw, True, recent) == eager


@given(attachment_maps)
def test_plain_flat_map_vouches_only_for_maps_read_flat_map_reads(attachments: dict[str, Any]) -> None:
    w = Hessian2Writer()
    w.write(HessianMap(attachments))
    region = w.getvalue()
    for cut in (region, region[:-1], region[: len(region) // 2]):
        if plain_flat_map(cut):
            assert read_flat_map(cut, 0, len(cut)) is not None


def test_the_head_is_answered_without_reading_the_attachments() -> None:
    raw = _request({"traceparent": "00-1-2-01", "Foo": "Bar", "interface": "ignored"})
    md, _ = _request_metadata(raw, Recent())
    assert isinstance(md, RequestMetadata)
    assert md.get("interface") == "org.example.Svc" and md["method"] == "call"
    assert md._parsed is None  # noqa: SLF001 - the point of the test
    assert md.get("foo") == "Bar" and "traceparent" in md and md.get("absent", "d") == "d"
    assert dict(md) == {"traceparent": "00-1-2-01", "foo": "Bar", "interface": "org.example.Svc", "method": "call", "dubbo": wire.DUBBO_VERSION, "version": "1.0.0"}
    assert md == dict(md) and dict(md) == md and repr(md) == repr(dict(md))


def test_a_connection_repeating_its_attachments_shares_one_metadata() -> None:
    codec = DubboCodecFactory().server_codec()
    raw = _request({"traceparent": "00-1-2-01"})
    first, second = (codec.decode(ReadBuffer(raw)) for _ in range(2))
    assert first.metadata is second.metadata  # type: ignore[union-attr]
    assert first.metadata["traceparent"] == "00-1-2-01"  # type: ignore[union-attr]
    third = codec.decode(ReadBuffer(raw))  # read now: the eager path's shared dict from here on
    assert dict(third.metadata) == dict(first.metadata)  # type: ignore[union-attr]


@given(attachment_maps, st.dictionaries(st.sampled_from(["x-env", "traceparent", "foo"]), st.text(max_size=5), min_size=1, max_size=2))
def test_mutating_a_lazy_request_encodes_as_the_eager_one(attachments: dict[str, Any], mutation: dict[str, str]) -> None:
    raw = _request(HessianMap(attachments))
    outcomes = []
    for lazy in (True, False):
        try:
            md, body = _request_metadata(raw, None, lazy)
        except _BODY_ERRORS as exc:
            outcomes.append(type(exc))
            continue
        outcomes.append(bytes(_encode(Message(MessageType.REQUEST, raw, md, 7, body), mutation, 9)))
    assert outcomes[0] == outcomes[1]


@given(st.binary(min_size=16, max_size=40), st.integers(0, 24))
def test_the_header_reader_equals_struct(data: bytes, pos: int) -> None:
    from metaprotocol_codecs.dubbo.codec import _header

    if pos + 16 <= len(data):
        assert _header(data, pos) == wire.HEADER.unpack_from(data, pos)
