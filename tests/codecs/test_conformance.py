"""Every installed codec plugin (and the test codec) passes the shipped conformance suite."""

from __future__ import annotations

import pytest

from metaprotocol.registry import CodecRegistry
from metaprotocol.spi import Correlation, Message, MessageType, ReadBuffer, RemoteProtocolError
from metaprotocol.testing import CHECKS, CodecSamples, check_codec
from metaprotocol_codecs.redis.requests import pack
from tests.lenprefix import LenPrefixFactory, frame

def _dubbo_samples() -> tuple[list[bytes], list[bytes]]:
    from tests.vectors import load

    frames = load("dubbo/frames.json")
    reqs = [bytes.fromhex(v["hex"]) for v in frames if v["kind"] in ("request", "oneway_request", "heartbeat_request")][:5]
    resps = [bytes.fromhex(v["hex"]) for v in frames if v["kind"] in ("response", "error_response")][:5]
    return reqs, resps


def _thrift_samples() -> tuple[list[bytes], list[bytes]]:
    from tests.vectors import load

    vs = [v for v in load("thrift/messages.json") if v["transport"] == "framed" and v["protocol"] == "binary-strict"]
    calls = [bytes.fromhex(v["hex"]) for v in vs if v["message"]["type"] in ("CALL", "ONEWAY")][:4]
    replies = [bytes.fromhex(v["hex"]) for v in vs if v["message"]["type"] in ("REPLY", "EXCEPTION")][:4]
    return calls, replies


SAMPLES = {
    "thrift": _thrift_samples(),
    "dubbo": _dubbo_samples(),
    "redis": (
        [pack([b"GET", b"k"]), pack([b"SET", b"user:1", b"v" * 300]), pack([b"MGET", b"a", b"b"]), pack([b"PING"])],
        [b"+OK\r\n", b"$3\r\nabc\r\n", b"*2\r\n$1\r\na\r\n$-1\r\n", b"-ERR x\r\n", b"%1\r\n+k\r\n:1\r\n", b">2\r\n+a\r\n+b\r\n"],
    ),
}


_REGISTRY = CodecRegistry.from_entry_points()
BUILTIN = [n for n in _REGISTRY.names() if (ep := _REGISTRY.describe(n)) is not None and ep.value.startswith("metaprotocol_codecs.")]


def test_every_builtin_codec_is_checked() -> None:
    assert set(BUILTIN) == {"dubbo", "redis", "thrift"}


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_codec_conforms(name: str) -> None:
    """Built-in codecs; third-party plugins run the same suite in their own tests."""
    factory = CodecRegistry.from_entry_points().get(name)()
    assert name in SAMPLES, f"add conformance samples for codec {name}"
    requests, responses = SAMPLES[name]
    samples = CodecSamples(factory, requests, responses)
    check_codec(samples)
    assert samples.checks == [c.__name__ for c in CHECKS]


def test_test_codec_conforms() -> None:
    check_codec(CodecSamples(LenPrefixFactory(), [frame(0, 7, {"method": "m"}, b"body"), frame(2, 8)], [frame(1, 7, {}, b"ok"), frame(5, 9)]))


def test_suite_catches_a_codec_that_consumes_on_need_data() -> None:
    from metaprotocol.spi import NEED_DATA
    from tests.lenprefix import LenServer

    class Greedy(LenServer):
        def decode(self, buffer: ReadBuffer):  # type: ignore[no-untyped-def]
            result = super().decode(buffer)
            if result is NEED_DATA:
                buffer.pos = len(buffer.data)  # wrong: swallows a partial frame
            return result

    class GreedyFactory(LenPrefixFactory):
        def server_codec(self) -> LenServer:
            return Greedy()

    with pytest.raises(AssertionError, match="check_incomplete_frames_need_data"):
        check_codec(CodecSamples(GreedyFactory(), [frame(0, 1, {"a": "b"})], [frame(1, 1)]))


# -- the fast-path and fuzz checks catch broken codecs ------------------------------------------


def _ordered_lenprefix(server: type, client: type | None = None) -> LenPrefixFactory:
    """The test codec with its server (and client) codec replaced, as an ORDERED protocol."""
    from tests.lenprefix import LenClient

    class Factory(LenPrefixFactory):
        name = "broken"
        correlation = Correlation.ORDERED

        def server_codec(self):  # type: ignore[no-untyped-def]
            return server()

        def client_codec(self, profile=None):  # type: ignore[no-untyped-def]
            return (client or LenClient)()

    return Factory()


def _run_of_frames(buffer: ReadBuffer) -> list[int]:
    """End offsets of the whole frames from the buffer's position (the lenprefix framing)."""
    import struct

    ends, pos, data = [], buffer.pos, buffer.data
    while len(data) - pos >= 9:
        end = pos + 4 + struct.unpack_from(">I", data, pos)[0]
        if end > len(data) or data[pos + 4] != 0:
            break
        ends.append(end)
        pos = end
    return ends


REQUESTS = [frame(0, 7, {"method": "m"}, b"body"), frame(0, 8, {"method": "n"})]
RESPONSES = [frame(1, 7, {}, b"ok"), frame(5, 8, {}, b"no")]


def test_fast_path_checks_pass_a_correct_decode_run_and_frame_replies() -> None:
    from tests.lenprefix import LenClient, LenServer

    class Runs(LenServer):
        def decode_run(self, buffer: ReadBuffer):  # type: ignore[no-untyped-def]
            start = end = buffer.pos
            count = 0
            try:
                while isinstance(msg := self.decode(buffer), Message) and msg.type is MessageType.REQUEST:
                    end, count = buffer.pos, count + 1
            except RemoteProtocolError:
                pass  # ends the run; decode reports it
            buffer.pos = end
            return (Message(MessageType.REQUEST, buffer.data[start:end]), count) if count else None

    class Frames(LenClient):
        def frame_replies(self, buffer: ReadBuffer, limit: int) -> tuple[int, int]:
            count = errors = 0
            while count < limit:
                start = buffer.pos
                msg = self.decode(buffer)
                if not isinstance(msg, Message):
                    break
                if msg.type not in (MessageType.RESPONSE, MessageType.ERROR):
                    buffer.pos = start
                    break
                count += 1
                errors += msg.type is MessageType.ERROR
            return count, errors

    check_codec(CodecSamples(_ordered_lenprefix(Runs, Frames), REQUESTS, RESPONSES))


def test_suite_catches_a_decode_run_one_byte_short() -> None:
    from tests.lenprefix import LenServer

    class Short(LenServer):
        def decode_run(self, buffer: ReadBuffer):  # type: ignore[no-untyped-def]
            ends = _run_of_frames(buffer)
            if not ends:
                return None
            start, buffer.pos = buffer.pos, ends[-1] - 1  # wrong: the last frame's last byte is left
            return Message(MessageType.REQUEST, buffer.data[start : buffer.pos]), len(ends)

    with pytest.raises(AssertionError, match="check_fast_paths_agree: .*no frame end of decode"):
        check_codec(CodecSamples(_ordered_lenprefix(Short), REQUESTS, RESPONSES))


def test_suite_catches_frame_replies_miscounting_errors() -> None:
    from tests.lenprefix import LenClient

    class Miscount(LenClient):
        def frame_replies(self, buffer: ReadBuffer, limit: int) -> tuple[int, int]:
            count = 0
            while count < limit and isinstance(self.decode(buffer), Message):
                count += 1
            return count, 0  # wrong: error replies are not counted

    with pytest.raises(AssertionError, match="check_fast_paths_agree: .*frame_replies"):
        check_codec(CodecSamples(_ordered_lenprefix(LenServerAlias(), Miscount), REQUESTS, RESPONSES))


def LenServerAlias() -> type:  # noqa: N802 - a class-valued helper
    from tests.lenprefix import LenServer

    return LenServer


def test_suite_catches_a_batch_that_drops_a_request() -> None:
    from tests.lenprefix import LenServer

    class Drops(LenServer):
        def batch(self, requests):  # type: ignore[no-untyped-def]
            return Message(MessageType.REQUEST, b"".join(r.raw for r in requests[1:]))

    with pytest.raises(AssertionError, match="check_fast_paths_agree: batch's raw"):
        check_codec(CodecSamples(_ordered_lenprefix(Drops), REQUESTS, RESPONSES))


def test_suite_catches_a_decode_raising_index_error() -> None:
    from metaprotocol.testing import check_mutation_fuzz
    from tests.lenprefix import LenServer

    class Indexes(LenServer):
        def decode(self, buffer: ReadBuffer):  # type: ignore[no-untyped-def]
            msg = super().decode(buffer)
            if isinstance(msg, Message) and msg.request_id is not None and msg.request_id > 8:
                return [][msg.request_id]  # wrong: an IndexError escapes instead of RemoteProtocolError
            return msg

    samples = CodecSamples(_ordered_lenprefix(Indexes), REQUESTS, RESPONSES)
    with pytest.raises(AssertionError, match="server side, input .* raised IndexError"):
        check_mutation_fuzz(samples)
    with pytest.raises(AssertionError, match="IndexError"):
        check_codec(samples)


def test_suite_catches_lazy_metadata_raising_key_error() -> None:
    from metaprotocol.spi import LazyMessage
    from tests.lenprefix import LenClient

    def parse(msg: LazyMessage) -> dict[str, str]:
        if b"ok" not in bytes(msg.raw):
            raise KeyError("body")  # wrong: a body it cannot read must be a RemoteProtocolError
        return {}

    class Lazy(LenClient):
        def decode(self, buffer: ReadBuffer):  # type: ignore[no-untyped-def]
            msg = super().decode(buffer)
            if isinstance(msg, Message) and msg.type is MessageType.RESPONSE:
                return LazyMessage(msg.type, msg.raw, parse, msg.request_id)
            return msg

    with pytest.raises(AssertionError, match="check_mutation_fuzz: client side, .* raised KeyError"):
        check_codec(CodecSamples(_ordered_lenprefix(LenServerAlias(), Lazy), REQUESTS, [frame(1, 7, {}, b"ok")]))
