"""The Dubbo codec against frames from real JS consumers and hessian.js (../shared/testdata)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metaprotocol.spi import NEED_DATA, ErrorKind, LazyMessage, LocalError, LocalProtocolError, MessageType, ReadBuffer, RemoteProtocolError
from metaprotocol.testing import CodecSamples, check_codec
from metaprotocol_codecs.dubbo import DubboCodecFactory, wire
from metaprotocol_codecs.dubbo.hessian2 import loads_all
from tests.codecs.dubbo.tagged import normalize, to_tagged
from tests.vectors import load

FRAMES = load("dubbo/frames.json")
BY_ID = {v["id"]: v for v in FRAMES}
REQUESTS = [v for v in FRAMES if v["kind"] in ("request", "oneway_request", "heartbeat_request")]
RESPONSES = [v for v in FRAMES if v["kind"] in ("response", "error_response")]


def decode_one(data: bytes, side: str = "server"):  # type: ignore[no-untyped-def]
    f = DubboCodecFactory()
    codec = f.server_codec() if side == "server" else f.client_codec()
    buf = ReadBuffer(data)
    msg = codec.decode(buf)
    assert msg is not NEED_DATA and buf.pending() == 0
    return msg


@pytest.mark.parametrize("v", REQUESTS, ids=lambda v: v["id"])
def test_request_vectors(v: dict) -> None:  # type: ignore[type-arg]
    data = bytes.fromhex(v["hex"])
    msg = decode_one(data)
    assert msg.request_id == int(v["header"]["request_id"])
    assert msg.raw == data
    if v["kind"] == "heartbeat_request":
        assert msg.type is MessageType.HEARTBEAT
        return
    req = v["request"]
    assert msg.type is (MessageType.ONEWAY if v["kind"] == "oneway_request" else MessageType.REQUEST)
    md = msg.metadata
    assert md["interface"] == req["path"]
    assert md["method"] == req["method"]
    assert md["dubbo"] == req["dubbo_version"]
    if req["version"] is not None:
        assert md["version"] == req["version"]
    for k, value in req["attachments"]["entries"]:
        if value["t"] in ("string", "int", "long", "bool"):
            assert md[k["v"].lower()] == (str(value["v"]).lower() if value["t"] == "bool" else str(value["v"]))
    # The whole body, decoded as one stream, is what Caucho Java decoded.
    body = loads_all(data[16:])
    assert normalize(v["body_values"]) == _tag_stream(body)


def _tag_stream(values: list[object]) -> list[object]:
    seen: dict[int, int] = {}
    return [to_tagged(x, seen) for x in values]


@pytest.mark.parametrize("v", RESPONSES, ids=lambda v: v["id"])
def test_response_vectors(v: dict) -> None:  # type: ignore[type-arg]
    data = bytes.fromhex(v["hex"])
    msg = decode_one(data, "client")
    assert msg.request_id == int(v["header"]["request_id"])
    if v["kind"] == "error_response":
        assert msg.type is MessageType.ERROR
        assert msg.metadata["status"] == v["error"]["status_name"]
        assert wire.parse_result(data).message == v["error"]["message"]
        return
    resp = v["response"]
    assert msg.type is (MessageType.ERROR if resp["flag"] in (0, 3) else MessageType.RESPONSE)
    result = wire.parse_result(data)
    assert result.flag == resp["flag"]
    if "attachments" in resp:
        for k, value in resp["attachments"]["entries"]:
            assert msg.metadata[k["v"].lower()] == str(value["v"])
    if "value" in resp:
        assert to_tagged(result.value) == normalize(resp["value"])


def test_heartbeat_response_and_stream_vector() -> None:
    hb = decode_one(bytes.fromhex(BY_ID["heartbeat-response"]["hex"]), "client")
    assert hb.type is MessageType.EVENT
    stream = BY_ID["stream-three-requests"]
    data = bytes.fromhex(stream["hex"])
    codec = DubboCodecFactory().server_codec()
    buf = ReadBuffer(data)
    got = []
    while (m := codec.decode(buf)) is not NEED_DATA:
        got.append(m)
    assert [len(m.raw) for m in got] == [f["length"] for f in stream["frames"]]
    assert [m.type for m in got] == [MessageType.REQUEST, MessageType.HEARTBEAT, MessageType.ONEWAY]


def test_heartbeat_reply_matches_the_vector() -> None:
    req = decode_one(bytes.fromhex(BY_ID["heartbeat-request"]["hex"]))
    reply = DubboCodecFactory().server_codec().heartbeat_reply(req)
    assert reply == bytes.fromhex(BY_ID["heartbeat-response"]["hex"])


def test_request_id_rewrite_patches_only_the_id() -> None:
    data = bytes.fromhex(BY_ID["captured-apache-dubbo-js-sayHello"]["hex"])
    msg = decode_one(data)
    client = DubboCodecFactory().client_codec()
    assert client.encode(msg) is msg.raw
    out = client.encode(msg, None, 2**40 + 5)
    assert out[:4] == data[:4] and out[12:] == data[12:]
    assert decode_one(out).request_id == 2**40 + 5


@pytest.mark.parametrize("vid", ["captured-apache-dubbo-js-sayHello", "req-two-objects-one-classdef", "req-nested-object-arg", "req-custom-attachments"])
def test_mutation_sets_attachments_and_keeps_the_rest(vid: str) -> None:
    data = bytes.fromhex(BY_ID[vid]["hex"])
    msg = decode_one(data)
    out = DubboCodecFactory().client_codec().encode(msg, {"foo": "bar", "x-request-id": "abc"}, 99)
    again = decode_one(out)
    assert again.request_id == 99
    assert again.metadata["foo"] == "bar" and again.metadata["x-request-id"] == "abc"
    assert {k: v for k, v in again.metadata.items() if k not in ("foo", "x-request-id")} == msg.metadata
    before, after = wire.parse_invocation(data), wire.parse_invocation(out)
    assert _tag_stream(after.args) == _tag_stream(before.args)
    assert after.attachments == {**before.attachments, "foo": "bar", "x-request-id": "abc"}


def test_response_mutation_upgrades_flag_to_with_attachments() -> None:
    data = bytes.fromhex(BY_ID["resp-value-object"]["hex"])
    msg = decode_one(data, "client")
    out = DubboCodecFactory().server_codec().encode(msg, {"served-by": "proxy"}, 7)
    result = wire.parse_result(out)
    assert result.flag == wire.RESPONSE_VALUE_WITH_ATTACHMENTS
    assert result.attachments == {"served-by": "proxy"}
    assert to_tagged(result.value) == to_tagged(wire.parse_result(data).value)
    with_att = decode_one(bytes.fromhex(BY_ID["resp-value-with-attachments"]["hex"]), "client")
    out = DubboCodecFactory().server_codec().encode(with_att, {"a": "b"})
    assert wire.parse_result(out).attachments == {"dubbo": "2.0.2", "a": "b"}


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (ErrorKind.ROUTE_NOT_FOUND, wire.SERVICE_NOT_FOUND),
        (ErrorKind.NO_HEALTHY_UPSTREAM, wire.SERVICE_ERROR),
        (ErrorKind.UPSTREAM_TIMEOUT, wire.SERVER_TIMEOUT),
        (ErrorKind.OVER_LIMIT, wire.SERVER_THREADPOOL_EXHAUSTED_ERROR),
        (ErrorKind.BAD_REQUEST, wire.BAD_REQUEST),
        (ErrorKind.UPSTREAM_RESET, wire.SERVER_ERROR),
    ],
)
def test_local_errors_map_to_dubbo_statuses(kind: ErrorKind, status: int) -> None:
    req = decode_one(bytes.fromhex(BY_ID["req-max-safe-request-id"]["hex"]))
    reply = DubboCodecFactory().server_codec().on_error(req, LocalError(kind, "why"))
    result = wire.parse_result(reply)
    assert (result.status, result.message) == (status, "metaprotocol: why")
    assert decode_one(reply, "client").request_id == req.request_id


def test_oversized_frame_is_refused_with_the_request_id() -> None:
    f = DubboCodecFactory({"payload_limit": 100})
    big = wire.header(0xC2, 0, 77, 101) + b"x" * 101
    with pytest.raises(RemoteProtocolError, match="Data length too large") as info:
        f.server_codec().decode(ReadBuffer(big[:16]))
    reply = f.server_codec().on_error(info.value.request, LocalError(ErrorKind.BAD_REQUEST, str(info.value)))  # type: ignore[arg-type]
    assert wire.parse_result(reply).status == wire.BAD_REQUEST and decode_one(reply, "client").request_id == 77


def test_bad_body_gets_bad_request_and_keeps_the_connection() -> None:
    frame = wire.header(0xC2, 0, 5, 3) + b"\x45\x45\x45"
    codec = DubboCodecFactory().server_codec()
    buf = ReadBuffer(frame + bytes.fromhex(BY_ID["heartbeat-request"]["hex"]))
    bad = codec.decode(buf)
    answer = codec.answer_locally(bad)  # type: ignore[arg-type]
    assert answer is not None and wire.parse_result(answer.reply).status == wire.BAD_REQUEST
    assert codec.decode(buf).type is MessageType.HEARTBEAT  # type: ignore[union-attr]


def test_bad_magic_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        DubboCodecFactory().server_codec().decode(ReadBuffer(b"GET / HTTP/1.1\r\n"))


def test_non_hessian2_serialization_passthrough_or_reject() -> None:
    frame = wire.header(0x80 | 0x40 | 6, 0, 3, 4) + b"json"
    msg = decode_one(frame)
    assert msg.metadata == {"serialization": "6"}
    assert DubboCodecFactory().server_codec().answer_locally(msg) is None
    strict = DubboCodecFactory({"non_hessian2": "reject"}).server_codec()
    rejected = strict.decode(ReadBuffer(frame))
    assert strict.answer_locally(rejected) is not None  # type: ignore[arg-type]


def test_provider_heartbeat_requests_are_answered_upstream() -> None:
    client = DubboCodecFactory().client_codec()
    hb = client.decode(ReadBuffer(wire.build_heartbeat(9)))
    assert hb.type is MessageType.EVENT  # type: ignore[union-attr]
    assert client.answer_event(hb) == wire.build_heartbeat(9, reply=True)  # type: ignore[arg-type]


def test_dubbo_conforms() -> None:
    reqs = [bytes.fromhex(v["hex"]) for v in REQUESTS[:6]]
    resps = [bytes.fromhex(v["hex"]) for v in RESPONSES[:6]]
    check_codec(CodecSamples(DubboCodecFactory(), reqs, resps, garbage_rounds=200))


@given(st.binary(max_size=120), st.sampled_from([v["hex"] for v in REQUESTS[:8]]), st.data())
def test_mutated_frames_never_crash(noise: bytes, hexframe: str, data: st.DataObject) -> None:
    frame = bytearray(bytes.fromhex(hexframe))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(16, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    for side in ("server", "client"):
        f = DubboCodecFactory()
        codec = f.server_codec() if side == "server" else f.client_codec()
        buf = ReadBuffer(bytes(frame) + noise)
        try:
            while (msg := codec.decode(buf)) is not NEED_DATA:
                msg.metadata  # noqa: B018 - a response's body is read here, on first use
        except RemoteProtocolError:
            pass


def test_response_value_is_walked_only_when_metadata_is_asked_for() -> None:
    good = bytes.fromhex(BY_ID["resp-value-with-attachments"]["hex"])
    msg = decode_one(good, "client")
    assert isinstance(msg, LazyMessage) and msg.opaque is None  # nothing read past the flag yet
    assert msg.metadata == {"dubbo": "2.0.2"} and msg.opaque is not None
    # A body that is not Hessian past its flag still forwards untouched (as Envoy's dubbo_proxy
    # does: it reads the header); only a mutation, which must re-encode it, refuses it.
    bad = wire.header(0x02, wire.OK, 4, 3) + b"\x91\x45\x45"
    msg = decode_one(bad, "client")
    assert msg.type is MessageType.RESPONSE and msg.request_id == 4
    server = DubboCodecFactory().server_codec()
    assert server.encode(msg, None, 9)[16:] == bad[16:]
    with pytest.raises(LocalProtocolError):
        server.encode(msg, {"a": "b"}, 9)
    with pytest.raises(RemoteProtocolError, match="bad response body"):
        msg.metadata  # noqa: B018
    exception = wire.build_response(6, wire.Result(exception="boom"))
    assert decode_one(exception, "client").type is MessageType.ERROR


def test_response_flag_in_a_long_int_form_is_read_eagerly() -> None:
    body = b"\x49\x00\x00\x00\x01\x05hello"  # RESPONSE_VALUE as a 4-byte int, then "hello"
    msg = decode_one(wire.header(0x02, wire.OK, 8, len(body)) + body, "client")
    assert not isinstance(msg, LazyMessage) and msg.type is MessageType.RESPONSE
    with pytest.raises(RemoteProtocolError):
        bad = b"\x49\x00\x00\x00\x09"
        decode_one(wire.header(0x02, wire.OK, 8, len(bad)) + bad, "client")


@given(
    path=st.text(min_size=1, max_size=40),
    method=st.text(min_size=1, max_size=20),
    version=st.one_of(st.none(), st.text(max_size=8)),
    attachments=st.dictionaries(st.text(alphabet="abcxyz-", min_size=1, max_size=6), st.text(max_size=10), max_size=4),
)
def test_request_heads_decode_the_same_from_the_cache(path: str, method: str, version: str | None, attachments: dict[str, str]) -> None:
    """Heads are remembered by their bytes; any text (non-ASCII, long forms) decodes the same
    the first time and from the cache, and one head never stands for another."""
    inv = wire.Invocation(path, method, "Ljava/lang/String;I", ["x", 5], attachments, version)
    frame = wire.build_request(3, inv)
    first, second = decode_one(frame).metadata, decode_one(frame).metadata
    expected = {k.lower(): v for k, v in attachments.items()} | {"interface": path, "method": method, "dubbo": "2.0.2"}
    if version is not None:
        expected["version"] = version
    assert first == second == expected
    other = wire.build_request(4, wire.Invocation(path + "2", method, "I", [1], {}, version))
    assert decode_one(other).metadata["interface"] == path + "2"


_invocations = st.builds(
    wire.Invocation,
    st.sampled_from(["a.B", "a.Bc", "x.Y"]),
    st.sampled_from(["m", "mm", "sayHello"]),
    st.just("Ljava/lang/String;"),
    st.lists(st.sampled_from(["", "w", "world"]), min_size=1, max_size=1),
    st.dictionaries(st.sampled_from(["foo", "fo", "timeout"]), st.sampled_from(["", "bar", "b"]), max_size=2),
    st.sampled_from([None, "1.0.0", "1.0"]),
)


@given(st.lists(st.one_of(_invocations, st.binary(max_size=20)), min_size=1, max_size=12))
def test_a_connection_remembering_its_last_head_decodes_as_a_fresh_codec(calls: list[object]) -> None:
    """Each connection remembers the head and attachments bytes it saw last; whatever follows
    (another method, other attachments, a garbage body), it decodes as a codec without memory."""
    remembering = DubboCodecFactory().server_codec()
    for i, call in enumerate(calls):
        frame = wire.build_request(i, call) if isinstance(call, wire.Invocation) else wire.header(0xC2, 0, i, len(call)) + call
        fresh = DubboCodecFactory().server_codec().decode(ReadBuffer(frame))
        got = remembering.decode(ReadBuffer(frame))
        assert got.metadata == fresh.metadata  # type: ignore[union-attr]
        assert (remembering.answer_locally(got) is None) == (DubboCodecFactory().server_codec().answer_locally(fresh) is None)  # type: ignore[arg-type]


_arguments = st.lists(st.one_of(st.text(max_size=40), st.integers(-(2**40), 2**40), st.booleans(), st.none(), st.lists(st.integers(-5, 5), max_size=3)), max_size=5)


@given(_arguments, st.integers(0, 3))
def test_simple_argument_stepping_agrees_with_skip_values(args: list[object], cut: int) -> None:
    """The inline step over short ASCII strings and one-byte ints ends where skip_values ends,
    and fails where it fails (truncated arguments)."""
    from metaprotocol_codecs.dubbo.codec import _skip_arguments
    from metaprotocol_codecs.dubbo.fastscan import skip_values
    from metaprotocol_codecs.dubbo.hessian2 import Hessian2Writer, HessianDecodeError

    w = Hessian2Writer()
    for a in args:
        w.write(a)
    data = w.getvalue()
    data = data[: max(0, len(data) - cut)]

    def outcome(step: object) -> object:
        try:
            return step(data, 0, len(data), len(args)) if args else 0  # type: ignore[operator]
        except HessianDecodeError:
            return "error"

    assert outcome(_skip_arguments) == outcome(lambda d, p, e, n: skip_values(d, p, e, n, [], []))


def test_repeated_calls_on_a_connection_share_one_metadata_dict() -> None:
    codec = DubboCodecFactory().server_codec()
    inv = wire.Invocation("a.B", "m", "Ljava/lang/String;", ["x"], {"foo": "bar"}, "1.0.0")
    first = codec.decode(ReadBuffer(wire.build_request(1, inv)))
    second = codec.decode(ReadBuffer(wire.build_request(2, inv)))
    assert first.metadata is second.metadata  # type: ignore[union-attr]
    other = codec.decode(ReadBuffer(wire.build_request(3, wire.Invocation("a.B", "m", "Ljava/lang/String;", ["x"], {"foo": "baz"}, "1.0.0"))))
    assert other.metadata["foo"] == "baz" and first.metadata["foo"] == "bar"  # type: ignore[union-attr]
