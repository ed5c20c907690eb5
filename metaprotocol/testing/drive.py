"""Drive a codec the way the proxy core does, checking h11's invariant on every call.

Shared by the conformance kit (``check_fast_paths_agree``, ``check_mutation_fuzz``) and the atheris
harnesses under ``fuzz/``, so that a third-party codec gets the same protection as the built-in
ones. The invariant: ``decode`` returns a Message or NEED_DATA or raises the documented
``MetaProtocolError`` (a ``RemoteProtocolError`` for bad bytes); so do the SPI calls the core makes
on what was decoded (lazy metadata included). Anything else escaping is a finding, and so is a
``Finding`` raised here: a decode that makes no progress (the core would spin), a frame beyond the
configured limit, or a fast path (``decode_run``, ``batch``, ``frame_replies``) framing the bytes
differently from ``decode``.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecFactory,
    Correlation,
    ErrorKind,
    LocalError,
    Message,
    MessageType,
    MetaProtocolError,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)

_KINDS = tuple(ErrorKind)
_PLAIN_REPLIES = (MessageType.RESPONSE, MessageType.ERROR)


class Finding(AssertionError):
    """A broken invariant that is not an exception of the code under test."""


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``; a documented MetaProtocolError is a clean refusal (None)."""
    try:
        return fn(*args)
    except MetaProtocolError:
        return None


def split(payload: bytes, b: int) -> list[bytes]:
    """``payload`` cut into up to three reads at points chosen by ``b`` (deterministic)."""
    n = len(payload)
    if n < 2 or b & 0x80:  # noqa: PLR2004
        return [payload]
    cuts = sorted({(b & 0x0F) * n // 16, ((b >> 4) & 0x07) * n // 8})
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    return [payload[a:z] for a, z in zip(bounds, bounds[1:], strict=False)]


def touch(msg: Message, lower_case_keys: bool = False) -> None:
    """Read what the core and logs read: lazy metadata is parsed here (MetaProtocolError allowed),
    and must be a mapping of str to str (with lower-case keys when asked: the router matches them;
    the conformance kit checks that on the samples only, a test codec may echo the wire)."""
    try:
        md = msg.metadata
    except MetaProtocolError:
        return
    if not isinstance(md, Mapping):  # the SPI's Metadata; a codec may read parts of it lazily
        raise Finding(f"metadata is {type(md).__name__}, not a mapping")
    for k, v in md.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise Finding(f"metadata item {k!r}: {v!r} is not str: str")
        if lower_case_keys and k != k.lower():
            raise Finding(f"metadata key {k!r} is not lower-case")


@dataclass
class Frames:
    """What one pass framed: absolute end offset and type of each frame, its raw bytes, and
    whether the pass ended on a RemoteProtocolError."""

    ends: list[int] = field(default_factory=list)
    types: list[MessageType] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    failed: bool = False
    _index: dict[int, int] | None = None

    def covering(self, start: int, end: int) -> list[MessageType]:
        """Types of the frames ending in (start, end]; Finding when ``end`` is not a frame end
        (a fast path cut a frame, or ran past where decode stopped). ``start`` need not be one:
        a decode that returns NEED_DATA may have stepped over bytes that frame nothing (Redis
        skips blank lines and empty commands)."""
        index = self._index
        if index is None:
            index = self._index = {e: i for i, e in enumerate(self.ends)}
        if end not in index:
            raise Finding(f"a fast path ends at offset {end}, which is no frame end of decode ({self.ends[:12]})")
        return self.types[bisect.bisect_right(self.ends, start) : index[end] + 1]


class _Reads:
    """A ReadBuffer fed read by read, with the absolute offset of ``data[0]`` tracked."""

    def __init__(self) -> None:
        self.buffer = ReadBuffer()
        self.base = 0

    def feed(self, chunk: bytes) -> None:
        self.base += self.buffer.pos  # feed drops what was consumed
        self.buffer.feed(chunk)

    def at(self) -> int:
        return self.base + self.buffer.pos


def _checked(reads: _Reads, before: int, msg: object, limit: int | None) -> Message:
    if not isinstance(msg, Message):
        raise Finding(f"decode returned {msg!r}, not a Message or NEED_DATA")
    if reads.at() <= before:
        raise Finding("decode returned a message without consuming bytes (the core would spin)")
    if limit is not None and len(msg.raw) > limit:
        raise Finding(f"a frame of {len(msg.raw)} bytes is beyond the limit {limit}")
    return msg


def decode_all(
    decode: Callable[[ReadBuffer], object],
    chunks: Sequence[bytes],
    on_message: Callable[[Message], None] = touch,
    on_error: Callable[[RemoteProtocolError], None] | None = None,
    limit: int | None = None,
) -> Frames:
    """Decode as the core does: every whole frame of each read; stop at a protocol error."""
    out = Frames()
    reads = _Reads()
    for chunk in chunks:
        reads.feed(chunk)
        buf = reads.buffer
        while buf.pos < len(buf.data):
            before = reads.at()
            try:
                msg = decode(buf)
            except RemoteProtocolError as exc:
                out.failed = True
                if on_error is not None:
                    on_error(exc)
                return out
            if msg is NEED_DATA:
                break
            m = _checked(reads, before, msg, limit)
            out.ends.append(reads.at())
            out.types.append(m.type)
            out.raws.append(bytes(m.raw))
            on_message(m)
    return out


@dataclass
class Driver:
    """One codec factory driven on either side, as the core drives it.

    Attributes:
        factory: the codec factory under test.
        limit: the largest raw frame its config admits (None: not checked).
        check: an extra per-message check (e.g. a decompressed size), raising Finding.
        prime: prepares a fresh client codec (e.g. memcached frames replies by what was sent).
        exercised: messages per pass given every SPI call (the rest are only touched), so that
            inputs of many small frames stay cheap.
    """

    factory: CodecFactory
    limit: int | None = None
    check: Callable[[Message], None] | None = None
    prime: Callable[[ClientCodec], None] | None = None
    exercised: int = 4
    lower_case_keys: bool = False

    def client_codec(self, profile: Hashable = None) -> ClientCodec:
        c = self.factory.client_codec(profile)
        if self.prime is not None:
            self.prime(c)
        return c

    # -- server side: requests from a client ----------------------------------------------------

    def server(self, chunks: Sequence[bytes], b: int = 0) -> None:
        """Decode requests; answer, reply, re-encode upstream; batch runs; compare decode_run."""
        factory = self.factory
        server = factory.server_codec()
        kind = LocalError(_KINDS[b % len(_KINDS)], "fuzz")
        run: list[Message] = []
        runs: list[list[Message]] = []
        seen = 0

        def on_message(msg: Message) -> None:
            nonlocal seen
            touch(msg, self.lower_case_keys)
            if self.check is not None:
                self.check(msg)
            seen += 1
            if seen > self.exercised:
                plain = msg.type is MessageType.REQUEST and not msg.parts and call(server.answer_locally, msg) is None
            else:
                plain = self._request(server, msg, kind, b)
            if plain:
                run.append(msg)
            elif run:
                runs.append(run[:])
                run.clear()

        def on_error(exc: RemoteProtocolError) -> None:
            request = exc.request if isinstance(exc.request, Message) else None
            call(server.on_error, request, LocalError(exc.kind, str(exc)))

        first = decode_all(server.decode, chunks, on_message, on_error, self.limit)
        if run:
            runs.append(run)
        for r in runs:
            self.batch(server, r, kind)
        if type(server).decode_run is not ServerCodec.decode_run:
            self.decode_run_agrees(chunks, first)

    def _request(self, server: ServerCodec, msg: Message, kind: LocalError, b: int) -> bool:
        """Every call the core makes on one decoded request; True for a plain routed request."""
        factory = self.factory
        if msg.type is MessageType.HEARTBEAT:
            call(server.heartbeat_reply, msg)
            return False
        if msg.type is not MessageType.REQUEST and msg.type is not MessageType.ONEWAY:
            return False
        answer = call(server.answer_locally, msg)
        call(server.is_idempotent, msg)
        reply = call(server.on_error, msg, kind)
        profile = call(server.upstream_profile)
        if reply:  # the codec's own error reply must decode cleanly on the client side
            decode_all(self.client_codec(profile).decode, [bytes(reply)])
        client = self.client_codec(profile)
        new_id = (b * 7919) % (factory.max_request_id + 1)
        call(client.encode, msg, None, msg.request_id)
        if factory.correlation is Correlation.REQUEST_ID:
            call(client.encode, msg, None, new_id)
        if factory.supports_mutation and call(client.can_mutate, msg):
            call(client.encode, msg, {"x-fuzz": "1"}, new_id)
        for part in msg.parts or ():
            touch(part, self.lower_case_keys)
            call(client.encode, part, None, part.request_id)
        return msg.type is MessageType.REQUEST and not msg.parts and answer is None

    def batch(self, server: ServerCodec, run: list[Message], kind: LocalError) -> None:
        """``batch`` stands for the run's bytes in order, and ``batch_error`` answers exactly the
        requests it is asked to (one reply each), for any number of them left unanswered."""
        if len(run) < 2 or type(server).batch is ServerCodec.batch:  # noqa: PLR2004
            return
        unit = call(server.batch, run)
        if unit is None:
            return
        if bytes(unit.raw) != b"".join(bytes(m.raw) for m in run):
            raise Finding("batch's raw is not the requests' bytes in order")
        touch(unit)
        profile = call(server.upstream_profile)
        for unanswered in (len(run), 1):
            reply = call(server.batch_error, unit, kind, unanswered)
            if reply:
                answered = decode_all(self.client_codec(profile).decode, [bytes(reply)])
                if not answered.failed and len(answered.raws) != unanswered:
                    raise Finding(f"batch_error for {unanswered} of a batch of {len(run)} gave {len(answered.raws)} replies")
        call(self.client_codec(profile).encode, unit, None, None)

    def decode_run_agrees(self, chunks: Sequence[bytes], first: Frames) -> None:
        """The core's forwarded-pipeline loop (decode_run, else decode) frames what decode framed:
        each run ends on a frame end of decode and counts the frames it spans."""
        server = self.factory.server_codec()
        reads = _Reads()
        count = 0
        failed = False
        for chunk in chunks:
            reads.feed(chunk)
            buf = reads.buffer
            while buf.pos < len(buf.data):
                before = reads.at()
                try:
                    unit = server.decode_run(buf)
                    if unit is not None:
                        msg, n = unit
                        _checked(reads, before, msg, None)
                        if bytes(buf.data[buf.pos - (reads.at() - before) : buf.pos]) != bytes(msg.raw):
                            raise Finding("decode_run's raw is not the bytes it consumed")
                        spanned = first.covering(before, reads.at())
                        if n != len(spanned) or any(t is not MessageType.REQUEST for t in spanned):
                            raise Finding(f"decode_run counted {n} requests where decode framed {[t.name for t in spanned]}")
                        touch(msg)
                        count += n
                        continue
                    got = server.decode(buf)
                except RemoteProtocolError:
                    failed = True
                    break
                if got is NEED_DATA:
                    break
                msg = _checked(reads, before, got, self.limit)
                first.covering(before, reads.at())
                if msg.type is MessageType.REQUEST and not msg.parts:
                    call(server.answer_locally, msg)
                count += 1
            if failed:
                break
        if failed != first.failed:
            raise Finding(f"with decode_run the stream {'failed' if failed else 'decoded'}; with decode alone it {'failed' if first.failed else 'decoded'}")
        if count != len(first.ends):
            raise Finding(f"decode_run and decode framed {count} requests, decode alone {len(first.ends)}")

    # -- client side: responses from a server ---------------------------------------------------

    def client(self, chunks: Sequence[bytes], b: int = 0, profile: Hashable = None) -> None:
        """Decode replies; re-encode them downstream; answer events; compare frame_replies."""
        factory = self.factory
        client = self.client_codec(profile)
        kind = LocalError(_KINDS[b % len(_KINDS)], "fuzz")
        new_id = (b * 7919) % (factory.max_request_id + 1)
        seen = 0

        def on_message(msg: Message) -> None:
            nonlocal seen
            touch(msg, self.lower_case_keys)
            if self.check is not None:
                self.check(msg)
            seen += 1
            if seen > self.exercised:
                return
            call(client.request_id_of, msg)
            if msg.type in _PLAIN_REPLIES:
                server = factory.server_codec()
                call(server.encode, msg, None, msg.request_id)
                if factory.correlation is Correlation.REQUEST_ID:
                    call(server.encode, msg, None, new_id)
                if factory.supports_mutation:
                    call(server.encode, msg, {"x-fuzz": "1"}, new_id)
            else:
                call(client.answer_event, msg)

        def on_error(exc: RemoteProtocolError) -> None:
            call(factory.server_codec().on_error, None, LocalError(exc.kind, str(exc)))
            call(factory.server_codec().on_error, None, kind)

        first = decode_all(client.decode, chunks, on_message, on_error, self.limit)
        if type(client).frame_replies is not ClientCodec.frame_replies:
            self.frame_replies_agree(chunks, first, 1 + b % 7, profile)

    def frame_replies_agree(self, chunks: Sequence[bytes], first: Frames, limit: int, profile: Hashable = None) -> None:
        """The core's pipeline gathering (frame_replies, decode for the rest) frames the same
        replies as decode: same boundaries, same count, same errors, never past an event."""
        client = self.client_codec(profile)
        reads = _Reads()
        count = errors = 0
        failed = False
        for chunk in chunks:
            reads.feed(chunk)
            buf = reads.buffer
            while buf.pos < len(buf.data):
                before = reads.at()
                try:
                    taken, errs = client.frame_replies(buf, limit)
                    if taken:
                        spanned = first.covering(before, reads.at())
                        wrong = [t.name for t in spanned if t not in _PLAIN_REPLIES]
                        n_errors = sum(t is MessageType.ERROR for t in spanned)
                        if taken > limit or taken != len(spanned) or errs != n_errors or wrong:
                            raise Finding(f"frame_replies(limit {limit}) took ({taken}, {errs} errors) where decode framed {[t.name for t in spanned]}")
                        count += taken
                        errors += errs
                        continue
                    if reads.at() != before:
                        raise Finding("frame_replies took nothing but moved the buffer")
                    got = client.decode(buf)
                except RemoteProtocolError:
                    failed = True
                    break
                if got is NEED_DATA:
                    break
                msg = _checked(reads, before, got, self.limit)
                first.covering(before, reads.at())
                if msg.type in _PLAIN_REPLIES:
                    count += 1
                    errors += msg.type is MessageType.ERROR
            if failed:
                break
        if failed != first.failed:
            raise Finding(f"with frame_replies the stream {'failed' if failed else 'decoded'}; with decode alone it {'failed' if first.failed else 'decoded'}")
        if not failed:  # replies taken in a call that then fails are not reported: fine then
            want = sum(t in _PLAIN_REPLIES for t in first.types)
            want_errors = sum(t is MessageType.ERROR for t in first.types)
            if (count, errors) != (want, want_errors):
                raise Finding(f"frame_replies and decode gave {count} replies ({errors} errors), decode alone {want} ({want_errors})")


def mutations(seeds: Sequence[bytes], n: int, seed: int = 20261126, max_len: int = 4096) -> Iterator[bytes]:
    """``n`` inputs made from ``seeds`` by bit flips, byte sets, inserts, deletes, interesting
    values, splices and copies (libFuzzer's mutators, simplified); deterministic for ``seed``."""
    rng = random.Random(seed)
    pool = [bytes(s[:max_len]) for s in seeds] or [b""]
    magic = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\r\n", b"-1", b"99999999999"]
    for _ in range(n):
        data = bytearray(rng.choice(pool))
        for _ in range(rng.randrange(1, 5)):
            op = rng.randrange(7)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1 and data:
                data[min(at, len(data) - 1)] = rng.getrandbits(8)
            elif op == 2:  # noqa: PLR2004
                data[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 8)))
            elif op == 3 and data:  # noqa: PLR2004
                del data[at : at + rng.randrange(1, 16)]
            elif op == 4:  # noqa: PLR2004
                data[at:at] = rng.choice(magic)
            elif op == 5:  # noqa: PLR2004
                other = rng.choice(pool)
                data = data[:at] + other[rng.randrange(len(other) + 1) :]
            elif len(data) > 2:  # noqa: PLR2004
                a = rng.randrange(len(data))
                data[at:at] = data[a : a + rng.randrange(1, 32)]
        yield bytes(data[:max_len])


__all__ = ["Driver", "Finding", "Frames", "call", "decode_all", "mutations", "split", "touch"]
