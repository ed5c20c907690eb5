"""Every installed codec plugin (and the test codec) passes the shipped conformance suite."""

from __future__ import annotations

import pytest

from metaprotocol.registry import CodecRegistry
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
    from metaprotocol.spi import NEED_DATA, ReadBuffer
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
