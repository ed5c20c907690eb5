"""The length-prefixed fast framers (requests.frame_plain, resp.scan_plain_replies) against the
reference framers (frame_multibulk, scan_reply): whatever a fast framer takes, the reference
frames the same way; whatever it refuses (long, split or malformed lengths) is left to the
reference, with its errors. Also the codec's runs over pipelines cut at every byte."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol.spi import Message, ReadBuffer, RemoteProtocolError
from metaprotocol_codecs.redis import RedisCodecFactory
from metaprotocol_codecs.redis.requests import frame_multibulk, frame_plain, pack
from metaprotocol_codecs.redis.resp import INCOMPLETE, scan_plain_replies, scan_reply

MAX_BULK = 512 * 1024 * 1024

_lengths = st.sampled_from([b"%d", b"%d", b"%d", b"0%d", b"+%d", b" %d", b"%d ", b"-%d", b"%dx", b"%.0d", b"99999999999"])


def _written(form: bytes, n: int) -> bytes:
    return form % n if b"%" in form else form


@st.composite
def _commands(draw: st.DrawFn) -> bytes:
    """Commands of any argument length, some whose declared counts or lengths lie or are
    written oddly, some holding CR/LF or a command inside an argument."""
    name = draw(st.sampled_from([b"GET", b"set", b"INCR", b"MGET", b"PING", b"HSET", b"XGETX"]))
    args = [name, *draw(st.lists(st.binary(max_size=300) | st.sampled_from([b"\r\n", b"\r", b"x\r\n*2\r\n$3\r\nGET\r\n$1\r\nb", b"v" * 5000]), max_size=4))]
    frame = b"*" + _written(draw(_lengths), len(args) + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))) + b"\r\n"
    for a in args:
        declared = len(a) + draw(st.sampled_from([0, 0, 0, 0, 0, 1, -1]))
        frame += b"$" + _written(draw(_lengths), declared) + b"\r\n" + a + draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"xx"]))
    return frame


def _reference(data: bytes, pos: int, max_bulk: int) -> tuple[int, list[int]] | None | str:
    try:
        return frame_multibulk(data, pos, max_bulk)
    except RemoteProtocolError:
        return "error"


@given(_commands(), st.integers(0, 40), st.sampled_from([MAX_BULK, 100, 3]))
@example(pack([b"SET", b"k", b"v" * 4096]), 0, MAX_BULK)
def test_frame_plain_frames_as_frame_multibulk_wherever_it_frames(frame: bytes, cut: int, max_bulk: int) -> None:
    data = b"xx" + frame + pack([b"GET", b"next"])
    for stop in range(len(data) - cut, len(data) + 1):  # whole, and cut short
        chunk = data[:stop]
        every: list[int] = []
        end, n0, n1, k0, k1 = frame_plain(chunk, 2, max_bulk, every)
        assert frame_plain(chunk, 2, max_bulk) == (end, n0, n1, k0, k1)
        reference = _reference(chunk, 2, max_bulk)
        if end < 0:
            continue  # left to frame_multibulk
        assert isinstance(reference, tuple)
        ref_end, bounds = reference
        assert end == ref_end and bounds == every and bounds[:4] == [n0, n1, k0, k1]


def test_frame_plain_takes_every_honest_command() -> None:
    for args in ([b"GET", b"k"], [b"SET", b"key:1", b"v" * 4096], [b"MGET", b"a", b"b", b"c"], [b"SET", b"k\r\n", b""]):
        data = pack(args)
        assert frame_plain(data, 0, MAX_BULK)[0] == len(data)
    assert frame_plain(pack([b"PING"]), 0, MAX_BULK)[0] == -1  # one argument: the reference path


_replies = st.sampled_from([b"+OK\r\n", b":12\r\n", b"-ERR x\r\n", b"$-1\r\n", b"$3\r\nabc\r\n", b"$5\r\na\r\nbc\r\n", b"$0\r\n\r\n",
                            b"$+3\r\nabc\r\n", b"$03\r\nabc\r\n", b"$3\r\nabcd\r\n", b"$4\r\nabc\r\n", b"+a\nb\r\n", b"+a\rb\r\n",
                            b"*2\r\n$1\r\na\r\n:1\r\n", b"_\r\n", b"%1\r\n+a\r\n+b\r\n", b"!3\r\nerr\r\n", b">2\r\n+a\r\n+b\r\n",
                            b"$-2\r\n", b"$ 3\r\nabc\r\n", b"*0\r\n", b"*-1\r\n", b"*1\r\n*1\r\n+a\r\n", b"*2\r\n$-1\r\n-ERR x\r\n",
                            b"*4\r\n$2\r\nab\r\n$-1\r\n$3\r\nabc\r\n:7\r\n", b"*3\r\n+a\r\n", b"*01\r\n+a\r\n", b"*+1\r\n+a\r\n", b"*2\r\n_\r\n+a\r\n"]) | st.binary(max_size=5000).map(lambda v: b"$%d\r\n%s\r\n" % (len(v), v))  # fmt: skip


def _scan_one_by_one(data: bytes, limit: int, max_bulk: int) -> tuple[int, int, int]:
    pos = count = errors = 0
    while count < limit and pos < len(data):
        try:
            end = scan_reply(data, pos, max_bulk)
        except RemoteProtocolError:
            break
        if end == INCOMPLETE:
            break
        errors += data[pos] in b"-!"
        pos, count = end, count + 1
    return pos, count, errors


@given(st.lists(_replies, max_size=20), st.integers(1, 30), st.sampled_from([MAX_BULK, 4]))
def test_scan_plain_replies_frames_as_scan_reply_at_every_cut(replies: list[bytes], limit: int, max_bulk: int) -> None:
    data = b"".join(replies)
    for stop in range(len(data) + 1) if len(data) < 600 else (0, 1, len(data) // 2, len(data) - 1, len(data)):
        chunk = data[:stop]
        end, count, errors = scan_plain_replies(chunk, 0, limit, max_bulk)
        assert count <= limit
        # Everything it took is what the reference takes for the same number of replies.
        assert _scan_one_by_one(chunk, count, max_bulk) == (end, count, errors)
        # The client codec's decode (one reply) and frame_replies agree with the reference too.
        codec = RedisCodecFactory({"max_bulk_length": max_bulk}).client_codec()
        for buffered in (chunk, bytearray(chunk)):
            buf = ReadBuffer(buffered)
            try:
                msg = codec.decode(buf)
            except RemoteProtocolError:
                msg = None
            ref_end, ref_count, _ = _scan_one_by_one(chunk, 1, max_bulk)
            assert (buf.pos if isinstance(msg, Message) else 0) == (ref_end if ref_count else 0)
            buf = ReadBuffer(buffered)
            try:
                taken, _ = codec.frame_replies(buf, limit)
            except RemoteProtocolError:  # a malformed reply after the good ones, as scan_reply says
                continue
            assert (buf.pos, taken) == _scan_one_by_one(chunk, taken, max_bulk)[:2]


def _units(data: bytes | bytearray) -> tuple[list[bytes], bool]:
    codec, buf, raws = RedisCodecFactory().server_codec(), ReadBuffer(data), []
    try:
        while True:
            unit = codec.decode_run(buf)
            if unit is not None:
                raws.append(bytes(unit[0].raw))
                continue
            msg = codec.decode(buf)
            if not isinstance(msg, Message):
                return raws, False
            raws.append(bytes(msg.raw))
    except RemoteProtocolError:
        return raws, True


def _one_by_one(data: bytes) -> tuple[list[bytes], bool]:
    codec, buf, raws = RedisCodecFactory().server_codec(), ReadBuffer(data), []
    try:
        while isinstance(msg := codec.decode(buf), Message):
            raws.append(bytes(msg.raw))
    except RemoteProtocolError:
        return raws, True
    return raws, False


@given(st.lists(_commands(), max_size=8))
def test_runs_over_pipelines_cut_at_every_byte_frame_as_decode(frames: list[bytes]) -> None:
    """decode_run's units (as bytes, and as a bytearray buffer, the reference path) hold exactly
    the bytes decode frames one by one, and the same error, wherever the pipeline is cut."""
    data = b"".join(frames) + pack([b"SET", b"k", b"v" * 700]) + pack([b"MGET", b"a", b"b"])
    cuts = range(len(data) + 1) if len(data) < 400 else range(0, len(data) + 1, 7)
    for stop in cuts:
        chunk = data[:stop]
        ref = _one_by_one(chunk)
        for buffered in (chunk, bytearray(chunk)):
            raws, failed = _units(buffered)
            assert (b"".join(raws), failed) == (b"".join(ref[0]), ref[1])
