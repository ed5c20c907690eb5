"""A conformance suite every codec plugin can run against itself.

    from metaprotocol.testing import CodecSamples, check_codec

    def test_my_codec_conforms():
        check_codec(CodecSamples(MyFactory(), requests=[...], responses=[...]))

``requests`` are whole request frames as a client sends them; ``responses`` whole response frames
as a server sends them. The checks are the properties the proxy core relies on; each raises
``AssertionError`` with what went wrong. No test framework is needed.

The fast paths a codec may implement (``decode_run``, ``batch``, ``frame_replies``) are checked
against ``decode`` on the same bytes, and a short deterministic mutation fuzz drives both sides
as the core does (``metaprotocol.testing.drive``, shared with the repo's atheris harnesses):
anything but a Message, NEED_DATA or a MetaProtocolError is a failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metaprotocol.spi import (
    NEED_DATA,
    Correlation,
    DecodeResult,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    ReadBuffer,
    RemoteProtocolError,
)
from metaprotocol.spi.codec import CodecFactory
from metaprotocol.testing.drive import Driver, mutations, split


@dataclass
class CodecSamples:
    """A codec factory with sample frames for it."""

    factory: CodecFactory
    requests: Sequence[bytes]
    responses: Sequence[bytes]
    garbage_rounds: int = 300
    fuzz_rounds: int = 200
    seed: int = 20261126
    checks: list[str] = field(default_factory=list)


def _decode_stream(decode: Callable[[ReadBuffer], DecodeResult], chunks: Sequence[bytes]) -> list[Message]:
    buf = ReadBuffer()
    out: list[Message] = []
    for chunk in chunks:
        buf.feed(chunk)
        while (msg := decode(buf)) is not NEED_DATA:
            assert isinstance(msg, Message), f"decode returned {msg!r}, not a Message or NEED_DATA"
            out.append(msg)
    return out


def _raws(msgs: Sequence[Message]) -> list[bytes]:
    return [bytes(m.raw) for m in msgs]


def check_whole_frames(s: CodecSamples) -> None:
    """Each sample decodes to exactly one message whose raw bytes are the sample."""
    for frames, decode in ((s.requests, s.factory.server_codec().decode), (s.responses, s.factory.client_codec().decode)):
        for frame in frames:
            buf = ReadBuffer(frame)
            msg = decode(buf)
            assert isinstance(msg, Message), f"{frame[:40]!r}: no message"
            assert bytes(msg.raw) == frame, f"{frame[:40]!r}: raw differs from the frame"
            assert buf.pending() == 0, f"{frame[:40]!r}: {buf.pending()} bytes left"
            assert all(k == k.lower() for k in msg.metadata), f"metadata keys must be lower-case: {msg.metadata}"


def check_incomplete_frames_need_data(s: CodecSamples) -> None:
    """Every strict prefix of a frame is NEED_DATA, and the buffer is left untouched."""
    for frames, make in ((s.requests, s.factory.server_codec), (s.responses, s.factory.client_codec)):
        for frame in frames:
            for cut in range(len(frame)):
                buf = ReadBuffer(frame[:cut])
                assert make().decode(buf) is NEED_DATA, f"prefix of {cut} bytes of {frame[:40]!r} decoded"
                assert buf.pos == 0, "NEED_DATA must not consume"


def check_split_invariance(s: CodecSamples) -> None:
    """Byte-at-a-time, random splits and one big chunk give the same messages."""
    rng = random.Random(s.seed)
    for frames, make in ((s.requests, s.factory.server_codec), (s.responses, s.factory.client_codec)):
        if not frames:
            continue
        stream = b"".join(frames)
        whole = _raws(_decode_stream(make().decode, [stream]))
        assert whole == [bytes(f) for f in frames], "concatenated frames do not decode one by one"
        bytewise = _raws(_decode_stream(make().decode, [stream[i : i + 1] for i in range(len(stream))]))
        assert bytewise == whole, "byte-at-a-time decoding differs"
        for _ in range(20):
            cuts = sorted(rng.sample(range(len(stream) + 1), min(5, len(stream) + 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
            assert _raws(_decode_stream(make().decode, chunks)) == whole, f"split at {cuts} differs"


def check_passthrough(s: CodecSamples) -> None:
    """With no mutation and no id change, encode returns the frame unchanged."""
    # Separate codecs for the two directions: the sample responses do not answer the sample
    # requests (a client codec may frame replies by the requests it sent, as memcached's does).
    server, client = s.factory.server_codec(), s.factory.client_codec()
    for frame in s.requests:
        msg = server.decode(ReadBuffer(frame))
        assert isinstance(msg, Message), f"{frame[:40]!r}: no message"
        if msg.type in (MessageType.REQUEST, MessageType.ONEWAY):
            assert bytes(client.encode(msg, None, msg.request_id)) == frame, "request not passed through unchanged"
    server, client = s.factory.server_codec(), s.factory.client_codec()
    for frame in s.responses:
        msg = client.decode(ReadBuffer(frame))
        assert isinstance(msg, Message), f"{frame[:40]!r}: no message"
        if msg.type in (MessageType.RESPONSE, MessageType.ERROR):
            assert bytes(server.encode(msg, None, msg.request_id)) == frame, "response not passed through unchanged"


def check_request_id_rewrite(s: CodecSamples) -> None:
    """For multiplexed codecs, a rewritten id survives re-decoding, and nothing else changes."""
    if s.factory.correlation is not Correlation.REQUEST_ID:
        return
    server, client = s.factory.server_codec(), s.factory.client_codec()
    for frame in s.requests:
        msg = server.decode(ReadBuffer(frame))
        assert isinstance(msg, Message)
        if msg.type is not MessageType.REQUEST:
            continue
        new_id = min(s.factory.max_request_id, 12345)
        again = s.factory.server_codec().decode(ReadBuffer(bytes(client.encode(msg, None, new_id))))
        assert isinstance(again, Message) and again.request_id == new_id, "rewritten id lost"
        assert again.metadata == msg.metadata, "id rewrite changed the metadata"


def check_local_replies(s: CodecSamples) -> None:
    """Error replies decode on the client side as a response or error answering the request."""
    for frame in s.requests:
        server = s.factory.server_codec()
        msg = server.decode(ReadBuffer(frame))
        assert isinstance(msg, Message)
        if msg.type is not MessageType.REQUEST:
            continue
        for kind in ErrorKind:
            reply = server.on_error(msg, LocalError(kind, f"test {kind.value}"))
            decoded = s.factory.client_codec().decode(ReadBuffer(reply))
            assert isinstance(decoded, Message), f"on_error({kind}) is not a whole frame"
            assert decoded.type in (MessageType.RESPONSE, MessageType.ERROR), f"on_error({kind}) gave {decoded.type}"
            if s.factory.correlation is Correlation.REQUEST_ID:
                assert decoded.request_id == msg.request_id, f"on_error({kind}) does not echo the request id"


def check_garbage_is_rejected_cleanly(s: CodecSamples) -> None:
    """Random and mutated bytes give messages, NEED_DATA or RemoteProtocolError; nothing else."""
    rng = random.Random(s.seed)
    seeds = [bytes(f) for f in (*s.requests, *s.responses)] or [b""]
    for i in range(s.garbage_rounds):
        if i % 2:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        else:
            mutated = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                if mutated:
                    mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
            data = bytes(mutated)
        for make in (s.factory.server_codec, s.factory.client_codec):
            buf = ReadBuffer(data)
            codec = make()
            try:
                for _ in range(len(data) + 2):
                    before = buf.pos
                    if codec.decode(buf) is NEED_DATA:
                        break
                    assert buf.pos > before, "a decoded message must consume bytes"
            except RemoteProtocolError:
                pass
            except Exception as exc:  # anything else would escape to the core undocumented
                raise AssertionError(f"{make.__name__} decode of {data[:64]!r} raised {type(exc).__name__}: {exc}") from exc


def check_fast_paths_agree(s: CodecSamples) -> None:
    """Where the codec has them, ``decode_run`` and ``batch`` (server) and ``frame_replies``
    (client) frame the samples exactly as ``decode`` does: the same frame boundaries, the same
    count, the same bytes, the same error count; ``batch``'s error reply answers every request.

    Streams: all samples back to back, and each sample three times (a pipeline of equal
    requests), whole and cut into reads at several points."""
    rng = random.Random(s.seed)
    driver = Driver(s.factory)
    for frames, side in ((s.requests, driver.server), (s.responses, driver.client)):
        streams = [b"".join(frames), *(bytes(f) * 3 for f in frames)] if frames else []
        for stream in streams:
            for b in (0x80, *(rng.randrange(0x80) for _ in range(3))):
                side(split(stream, b), b)


def check_mutation_fuzz(s: CodecSamples) -> None:
    """``fuzz_rounds`` mutated sample streams, on both sides, driven through every SPI call the
    core makes (metaprotocol.testing.drive): only Message, NEED_DATA or MetaProtocolError may come
    out, decodes make progress, and the fast paths keep agreeing with ``decode``."""
    driver = Driver(s.factory)
    for frames, side in ((s.requests, driver.server), (s.responses, driver.client)):
        seeds = [bytes(f) for f in frames] + [b"".join(bytes(f) for f in frames)]
        for i, data in enumerate(mutations(seeds, s.fuzz_rounds, s.seed, max_len=2048)):
            b = (s.seed + i) & 0xFF
            try:
                side(split(data, b), b)
            except AssertionError as exc:
                raise AssertionError(f"{side.__name__} side, input {data[:64]!r} (split {b:#x}): {exc}") from exc
            except Exception as exc:
                raise AssertionError(f"{side.__name__} side, input {data[:64]!r} (split {b:#x}) raised {type(exc).__name__}: {exc}") from exc


CHECKS: tuple[Callable[[CodecSamples], None], ...] = (
    check_whole_frames,
    check_incomplete_frames_need_data,
    check_split_invariance,
    check_passthrough,
    check_request_id_rewrite,
    check_local_replies,
    check_garbage_is_rejected_cleanly,
    check_fast_paths_agree,
    check_mutation_fuzz,
)


def check_codec(samples: CodecSamples) -> None:
    """Run every check; the first failure raises AssertionError naming the check."""
    for check in CHECKS:
        try:
            check(samples)
        except AssertionError as exc:
            raise AssertionError(f"{samples.factory.name}: {check.__name__}: {exc}") from exc
        samples.checks.append(check.__name__)


__all__ = ["CHECKS", "CodecSamples", "check_codec"]
