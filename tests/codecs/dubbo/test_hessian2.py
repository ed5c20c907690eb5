"""Hessian 2.0 against independent golden vectors (hessian.js, Caucho Java), plus robustness."""

from __future__ import annotations

import datetime as dt
import math
import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, Hessian2Writer, HessianDecodeError, dumps, loads, loads_all
from metaprotocol_codecs.dubbo.hessian2_types import UTC, HessianList, HessianMap, JavaObject, Long
from tests.codecs.dubbo.tagged import normalize, to_tagged
from tests.vectors import load

VALUES = load("hessian2/values.json")


def expected_of(v: dict[str, object]) -> object:
    return normalize(v.get("decodes_as", v["value"]))


@pytest.mark.parametrize("vector", VALUES, ids=[str(v["id"]) for v in VALUES])
def test_vector_decodes_to_expected_value(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    assert to_tagged(loads(data)) == expected_of(vector)


@pytest.mark.parametrize("vector", VALUES, ids=[str(v["id"]) for v in VALUES])
def test_vector_skip_consumes_exactly_the_value(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    r = Hessian2Reader(data)
    r.skip()
    assert r.pos == len(data)


@pytest.mark.parametrize("vector", VALUES, ids=[str(v["id"]) for v in VALUES])
def test_vector_reencodes_to_the_same_value(vector: dict[str, object]) -> None:
    value = loads(bytes.fromhex(str(vector["hex"])))
    assert to_tagged(loads(dumps(value))) == to_tagged(value)


@pytest.mark.parametrize("vector", [v for v in VALUES if v.get("java_reencoded_hex")], ids=lambda v: str(v["id"]))
def test_java_reencodings_decode(vector: dict[str, object]) -> None:
    loads(bytes.fromhex(str(vector["java_reencoded_hex"])))


def test_encoder_makes_hessianjs_choices_byte_for_byte() -> None:
    """Where hessian.js and Java agree on a form (README §2), our encoder produces the same bytes."""
    mismatches = []
    for v in VALUES:
        if v["value"]["t"] in ("map",) and v["id"] == "map-plain-object-sorted":  # type: ignore[index]
            continue
        data = bytes.fromhex(str(v["hex"]))
        if dumps(loads(data)) != data:
            mismatches.append(v["id"])
    # Variable-length lists are written fixed-length by every encoder we mimic.
    assert set(mismatches) <= {v["id"] for v in VALUES if str(v["id"]).startswith("list-variable")}, mismatches


OTHER = load("hessian2/other_encoders.json")


@pytest.mark.parametrize("vector", OTHER, ids=[str(v["id"]) for v in OTHER])
def test_other_encoders_never_hang_or_crash(vector: dict[str, object]) -> None:
    data = bytes.fromhex(str(vector["hex"]))
    caucho = vector.get("caucho_decode") or {}
    try:
        values = loads_all(data)
    except HessianDecodeError:
        assert not (isinstance(caucho, dict) and caucho.get("ok") and not caucho.get("trailing_bytes")), "Java reads these bytes"
        return
    assert values
    if isinstance(caucho, dict) and caucho.get("ok") and caucho.get("value") is not None and not caucho.get("trailing_bytes"):
        assert to_tagged(values[0]) == normalize(caucho["value"])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "truncated"),
        (b"\x49\x00\x00", "truncated"),
        (b"\x53\x00\x10abc", "exceeds"),
        (b"\x58\xcf\xff\x91", "exceeds"),
        (b"\x60", "undefined class"),
        (b"\x51\x90", "undefined value"),
        (b"\x45", "unexpected code 0x45"),
        (b"\x57" * 300, "nesting deeper"),
        (b"\x01\xc3\x28", "bad string bytes"),
        (b"\x72\x95\x91", "undefined type reference"),
    ],
)
def test_malformed_input_raises_clear_errors(data: bytes, error: str) -> None:
    with pytest.raises(HessianDecodeError, match=error):
        loads(data)


@given(st.binary(max_size=200))
@example(bytes.fromhex("7b9192935a"))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    for method in ("read", "skip"):
        r = Hessian2Reader(data)
        try:
            while not r.at_end():
                getattr(r, method)()
        except HessianDecodeError:
            pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Long),
    st.floats(allow_nan=False).map(lambda f: f + 0.0),  # -0.0 is written as 0.0, as Java does
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(-(2**40), 2**40).map(lambda ms: dt.datetime(1970, 1, 1, tzinfo=UTC) + dt.timedelta(milliseconds=ms)),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=10).map(HessianList),
        st.tuples(st.sampled_from(["[int", "java.util.List", "[string"]), st.lists(children, max_size=9)).map(lambda t: HessianList(t[1], type=t[0])),
        st.dictionaries(st.text(max_size=8), children, max_size=5).map(HessianMap),
        st.tuples(st.sampled_from(["com.example.A", "com.example.B"]), st.dictionaries(st.sampled_from(["x", "y", "z"]), children, max_size=3)).map(
            lambda t: JavaObject(t[0], dict(sorted(t[1].items())))
        ),
    ),
    max_leaves=20,
)


@given(st.lists(values, min_size=1, max_size=4))
def test_roundtrip_of_any_value_sequence(seq: list[object]) -> None:
    w = Hessian2Writer()
    for v in seq:
        w.write(v)
    data = w.getvalue()
    assert [to_tagged(x) for x in loads_all(data)] == [to_tagged(x) for x in seq]
    r = Hessian2Reader(data)
    for _ in seq:
        r.skip()
    assert r.at_end()


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_doubles_roundtrip_bit_exact(v: float) -> None:
    got = loads(dumps(v))
    if math.isnan(v):
        assert math.isnan(got)
    elif v == 0:
        assert got == 0.0  # -0.0 is written 0x5b, as Java writes it
    else:
        assert struct.pack(">d", got) == struct.pack(">d", v)


def test_shared_and_cyclic_references() -> None:
    shared = HessianMap({"k": "v"})
    obj = JavaObject("com.example.Node", {"name": "n", "self": None, "a": shared, "b": shared})
    obj.fields["self"] = obj
    back = loads(dumps(obj))
    assert back.fields["self"] is back
    assert back.fields["a"] is back.fields["b"]


def test_non_bmp_strings_count_utf16_units_and_chunk_safely() -> None:
    s = "a" + "\U0001f600" * 20000  # 40001 units: crosses a 0x8000 chunk boundary inside pairs
    data = dumps(s)
    assert data[0] == 0x52
    assert loads(data) == s
    assert dumps("\U0001f600") == bytes.fromhex("02eda0bdedb880")
