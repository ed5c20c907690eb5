"""Command framing, metadata, local answers and merges of the Redis server codec."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol.spi import NEED_DATA, ErrorKind, LocalError, Message, MessageType, ReadBuffer, RemoteProtocolError
from metaprotocol_codecs.redis import RedisCodecFactory
from metaprotocol_codecs.redis.requests import pack, split_inline


def decode_all(data: bytes, codec: object = None) -> list[Message]:
    codec = codec or RedisCodecFactory().server_codec()
    buf = ReadBuffer(data)
    out = []
    while (msg := codec.decode(buf)) is not NEED_DATA:  # type: ignore[attr-defined]
        out.append(msg)
    return out


@pytest.mark.parametrize(
    ("args", "command", "key"),
    [
        ([b"get", b"k"], "GET", "k"),
        ([b"SET", b"user:1", b"v", b"EX", b"10"], "SET", "user:1"),
        ([b"mset", b"a", b"1", b"b", b"2"], "MSET", "a"),
        ([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"], "EVAL", "k1"),
        ([b"EVAL", b"return 1", b"0"], "EVAL", None),
        ([b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"], "XREAD", "s1"),
        ([b"ZUNIONSTORE", b"dst", b"2", b"a", b"b"], "ZUNIONSTORE", "dst"),
        ([b"PING"], "PING", None),
        ([b"GET", b"\xff\xfebin\r\nkey"], "GET", b"\xff\xfebin\r\nkey".decode("utf-8", "surrogateescape")),
    ],
)
def test_command_and_key_metadata(args: list[bytes], command: str, key: str | None) -> None:
    (msg,) = decode_all(pack(args))
    assert msg.type is MessageType.REQUEST
    assert msg.metadata["command"] == command
    assert msg.metadata.get("key") == key
    assert msg.raw == pack(args)


def test_inline_commands_become_multibulk() -> None:
    msgs = decode_all(b"PING\r\nSET k \"hello world\"\n\r\n  \r\nGET k\r\n")
    assert [m.metadata["command"] for m in msgs] == ["PING", "SET", "GET"]
    assert msgs[1].raw == pack([b"SET", b"k", b"hello world"])


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"set a b", [b"set", b"a", b"b"]),
        (b'set "a b" c', [b"set", b"a b", b"c"]),
        (b'set k "\\x41\\n"', [b"set", b"k", b"A\n"]),
        (b"set k 'it\\'s'", [b"set", b"k", b"it's"]),
        (b'  spaced   out  ', [b"spaced", b"out"]),
    ],
)
def test_inline_splitting_follows_sdssplitargs(line: bytes, args: list[bytes]) -> None:
    assert split_inline(line) == args


def test_empty_multibulk_is_ignored_like_redis() -> None:
    assert [m.metadata["command"] for m in decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n")] == ["PING"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n$-3\r\n", "invalid bulk length"),
        (b'SET "unclosed\r\n', "unbalanced quotes"),
        (b"*1\r\n$2\r\nabXX", "not terminated by CRLF"),
        (b"x" * (64 * 1024 + 1), "too big inline request"),
    ],
)
def test_protocol_errors_use_redis_wording(data: bytes, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(error)):
        decode_all(data)
    reply = RedisCodecFactory().server_codec().on_error(None, LocalError(ErrorKind.BAD_REQUEST, f"Protocol error: {error}"))
    assert reply.startswith(b"-ERR Protocol error")


@given(st.binary(max_size=300))
@example(b"*3\r\n$3\r\nSET\r\n$1\r\n")
@example(b"*1048577\r\n")
def test_request_decoder_only_returns_messages_or_raises_protocol_errors(data: bytes) -> None:
    codec = RedisCodecFactory().server_codec()
    buf = ReadBuffer(data)
    try:
        for _ in range(len(data) + 1):
            if codec.decode(buf) is NEED_DATA:
                break
    except RemoteProtocolError:
        return
    assert buf.pos <= len(data)


@given(st.lists(st.lists(st.binary(max_size=12), min_size=1, max_size=5), min_size=1, max_size=6))
def test_byte_at_a_time_equals_whole(commands: list[list[bytes]]) -> None:
    stream = b"".join(pack(c) for c in commands)
    whole = [bytes(m.raw) for m in decode_all(stream)]
    codec = RedisCodecFactory().server_codec()
    buf = ReadBuffer()
    one = []
    for i in range(len(stream)):
        buf.feed(stream[i : i + 1])
        while (msg := codec.decode(buf)) is not NEED_DATA:
            one.append(bytes(msg.raw))  # type: ignore[union-attr]
    assert one == whole == [pack(c) for c in commands]


def _answer(codec: object, *args: bytes) -> bytes | None:
    (msg,) = decode_all(pack(list(args)), codec)
    ans = codec.answer_locally(msg)  # type: ignore[attr-defined]
    return None if ans is None else ans.reply


def test_local_answers() -> None:
    codec = RedisCodecFactory().server_codec()
    assert _answer(codec, b"PING") == b"+PONG\r\n"
    assert _answer(codec, b"PING", b"hi") == b"$2\r\nhi\r\n"
    assert _answer(codec, b"GET", b"k") is None
    assert _answer(codec, b"SELECT", b"0") == b"+OK\r\n"
    assert _answer(codec, b"SELECT", b"1").startswith(b"-ERR SELECT is not supported")  # type: ignore[union-attr]
    assert b"transactions" in _answer(codec, b"MULTI")  # type: ignore[operator]
    assert b"pub/sub" in _answer(codec, b"SUBSCRIBE", b"ch")  # type: ignore[operator]
    assert b"blocking" in _answer(codec, b"BLPOP", b"k", b"0")  # type: ignore[operator]
    assert _answer(codec, b"CLIENT", b"SETINFO", b"LIB-NAME", b"x") == b"+OK\r\n"
    assert _answer(codec, b"CLIENT", b"TRACKING", b"on").startswith(b"-ERR CLIENT TRACKING")  # type: ignore[union-attr]
    assert _answer(codec, b"HELLO", b"4") == b"-NOPROTO unsupported protocol version\r\n"
    hello3 = _answer(codec, b"HELLO", b"3")
    assert hello3 is not None and hello3.startswith(b"%8\r\n") and b"proto\r\n:3\r\n" in hello3
    assert codec.upstream_profile() == 3  # type: ignore[attr-defined]


def test_auth_gate() -> None:
    codec = RedisCodecFactory({"password": "s3cret"}).server_codec()
    assert _answer(codec, b"GET", b"k") == b"-NOAUTH Authentication required.\r\n"
    assert _answer(codec, b"AUTH", b"wrong").startswith(b"-WRONGPASS")  # type: ignore[union-attr]
    assert _answer(codec, b"AUTH", b"s3cret") == b"+OK\r\n"
    assert _answer(codec, b"GET", b"k") is None
    open_codec = RedisCodecFactory().server_codec()
    assert b"without any password configured" in _answer(open_codec, b"AUTH", b"x")  # type: ignore[operator]
    hello_codec = RedisCodecFactory({"password": "p"}).server_codec()
    assert _answer(hello_codec, b"HELLO", b"3", b"AUTH", b"default", b"p").startswith(b"%")  # type: ignore[union-attr]


def test_upstream_handshake_follows_profile_and_config() -> None:
    f = RedisCodecFactory({"upstream_password": "pw", "db": 2})
    assert f.client_codec(2).handshake() == [pack([b"AUTH", b"pw"]), pack([b"SELECT", b"2"])]
    assert f.client_codec(3).handshake() == [pack([b"HELLO", b"3", b"AUTH", b"default", b"pw"]), pack([b"SELECT", b"2"])]
    assert RedisCodecFactory().client_codec(2).handshake() == []


def test_fanout_parts_and_merges() -> None:
    codec = RedisCodecFactory().server_codec()
    (mget,) = decode_all(pack([b"MGET", b"a", b"b"]), codec)
    assert [p.raw for p in mget.parts or []] == [pack([b"GET", b"a"]), pack([b"GET", b"b"])]
    ok = Message(MessageType.RESPONSE, b"$1\r\n1\r\n")
    null = Message(MessageType.RESPONSE, b"$-1\r\n")
    assert codec.merge(mget, [ok, null]) == b"*2\r\n$1\r\n1\r\n$-1\r\n"
    (mset,) = decode_all(pack([b"MSET", b"a", b"1", b"b", b"2"]), codec)
    assert [p.raw for p in mset.parts or []] == [pack([b"SET", b"a", b"1"]), pack([b"SET", b"b", b"2"])]
    err = Message(MessageType.ERROR, b"-ERR boom\r\n")
    assert codec.merge(mset, [Message(MessageType.RESPONSE, b"+OK\r\n")] * 2) == b"+OK\r\n"
    assert codec.merge(mset, [Message(MessageType.RESPONSE, b"+OK\r\n"), err]) == b"-ERR boom\r\n"
    (dele,) = decode_all(pack([b"DEL", b"a", b"b", b"c"]), codec)
    ints = [Message(MessageType.RESPONSE, b":1\r\n"), Message(MessageType.RESPONSE, b":0\r\n"), Message(MessageType.RESPONSE, b":1\r\n")]
    assert codec.merge(dele, ints) == b":2\r\n"
    (single,) = decode_all(pack([b"MGET", b"a"]), codec)
    assert single.parts is None


# -- decode_run: a pipeline's plain commands framed in one pass ---------------------------------

_COMMANDS = [
    pack([b"GET", b"k"]), pack([b"set", b"k", b"v" * 300]), pack([b"INCR", b"n"]), pack([b"PING"]),
    pack([b"MGET", b"a", b"b"]), pack([b"ECHO", b"x"]), b"*0\r\n", b"PING\r\n", pack([b"AUTH", b"pw"]),
]  # fmt: skip


@given(st.lists(st.sampled_from(_COMMANDS), max_size=30), st.integers(0, 20))
def test_decode_run_takes_exactly_what_decode_would_route_in_the_same_order(commands: list[bytes], cut: int) -> None:
    data = b"".join(commands)
    data = data[: max(0, len(data) - cut)]
    one_by_one = RedisCodecFactory().server_codec()
    expected = []
    buf = ReadBuffer(data)
    while isinstance(msg := one_by_one.decode(buf), Message):
        expected.append(bytes(msg.raw))
    codec = RedisCodecFactory().server_codec()
    got = []
    buf = ReadBuffer(data)
    while True:
        unit = codec.decode_run(buf)
        if unit is not None:
            msg, count = unit
            assert count >= 1 and msg.type is MessageType.REQUEST
            if count == 1:  # an ordinary request, as decode makes it
                assert msg.metadata == RedisCodecFactory().server_codec().decode(ReadBuffer(bytes(msg.raw))).metadata  # type: ignore[union-attr]
            got.append((bytes(msg.raw), count))
            continue
        msg = codec.decode(buf)
        if not isinstance(msg, Message):
            break
        got.append((bytes(msg.raw), 1))
    assert b"".join(raw for raw, _ in got) == b"".join(expected)
    assert sum(n for _, n in got) == len(expected)


def _framed_one_by_one(data: bytes) -> tuple[list[bytes], bool]:
    codec, buf, raws = RedisCodecFactory().server_codec(), ReadBuffer(data), []
    try:
        while isinstance(msg := codec.decode(buf), Message):
            raws.append(bytes(msg.raw))
    except RemoteProtocolError:
        return raws, True
    return raws, False


def _framed_by_runs(data: bytes) -> tuple[list[bytes], bool]:
    """Units split back into commands with the one-by-one framer (their bytes must agree)."""
    codec, buf, raws = RedisCodecFactory().server_codec(), ReadBuffer(data), []
    try:
        while True:
            unit = codec.decode_run(buf)
            if unit is not None:
                parts, failed = _framed_one_by_one(bytes(unit[0].raw))
                assert not failed and len(parts) == unit[1]
                raws += parts
                continue
            msg = codec.decode(buf)
            if not isinstance(msg, Message):
                return raws, False
            raws.append(bytes(msg.raw))
    except RemoteProtocolError:
        return raws, True


_short_args = st.lists(st.binary(max_size=6) | st.sampled_from([b"\r\n", b"a\r\n*2\r\n$3\r\nGET\r\n$1\r\nb", b"\r"]), min_size=1, max_size=2)


@st.composite
def _short_frames(draw: st.DrawFn) -> bytes:
    """Commands shaped like the short ones, some with a key holding CR/LF or a crafted command,
    some whose declared lengths or argument count lie."""
    name = draw(st.sampled_from([b"GET", b"get", b"SET", b"INCR", b"MGET", b"PING", b"GETX"]))
    args = [name, *draw(_short_args)]
    frame = b"*%d\r\n" % (len(args) + draw(st.sampled_from([0, 0, 0, 0, 1, -1])))
    for a in args:
        declared = len(a) + draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        frame += b"$%s\r\n%s\r\n" % (draw(st.sampled_from([b"%d" % declared, b"0%d" % declared])), a)
    return frame


@given(st.lists(_short_frames(), max_size=20), st.integers(0, 12))
def test_short_command_runs_frame_exactly_as_the_exact_framer(frames: list[bytes], cut: int) -> None:
    """The regex run framer never cuts differently from the exact one, whatever the keys hold
    and however the lengths lie; and honest GET/SET runs are taken in one unit."""
    data = b"".join(frames)
    data = data[: max(0, len(data) - cut)]
    assert _framed_by_runs(data) == _framed_one_by_one(data)
    honest = pack([b"GET", b"key:1"]) * 3 + pack([b"set", b"k", b"v\nv"]) * 2
    unit = RedisCodecFactory().server_codec().decode_run(ReadBuffer(honest))
    assert unit is not None and unit[1] == 5 and bytes(unit[0].raw) == honest and unit[0].metadata == {"command": "GET"}


def test_decode_run_stops_before_local_commands_and_malformed_frames() -> None:
    codec = RedisCodecFactory().server_codec()
    get = pack([b"GET", b"k"])
    buf = ReadBuffer(get * 3 + pack([b"PING"]) + get * 2 + b"*2\r\n$3\r\nGET\r\nxx\r\n")
    unit = codec.decode_run(buf)
    assert unit is not None and unit[1] == 3 and bytes(unit[0].raw) == get * 3
    assert codec.decode_run(buf) is None and codec.decode(buf).metadata == {"command": "PING"}  # type: ignore[union-attr]
    single = codec.decode_run(ReadBuffer(get))
    assert single is not None and single[1] == 1 and single[0].metadata == {"command": "GET", "key": "k"}
    unit = codec.decode_run(buf)
    assert unit is not None and unit[1] == 2  # the good commands before the bad frame
    with pytest.raises(RemoteProtocolError):
        codec.decode(buf)
    locked = RedisCodecFactory({"password": "pw"}).server_codec()
    assert locked.decode_run(ReadBuffer(get * 3)) is None  # NOAUTH replies come from decode's path


@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 4000])
def test_runs_with_arguments_around_the_exact_pattern_limit(size: int) -> None:
    """Arguments up to EXACT_MAX bytes are framed by the length-exact pattern, longer ones by
    the checked pattern; both cut like the exact framer, CR/LF inside included."""
    key = (b"k\r\n*2\r\n$3\r\nGET\r\n" * 300)[:size]
    data = pack([b"GET", key]) * 3 + pack([b"set", key, b"v\r\n"]) * 2 + pack([b"GET", b"x"])
    assert _framed_by_runs(data) == _framed_one_by_one(data)
    unit = RedisCodecFactory().server_codec().decode_run(ReadBuffer(data))
    assert unit is not None and (unit[1] == 6 or b"\r" in key)
