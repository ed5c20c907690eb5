"""Differential fuzzing: the compiled (mypyc) codecs against their pure-Python sources.

    python fuzz/differential.py [target|all ...] [--seconds S] [--inputs N] [--seed K]

One process runs one mode (``metaprotocol._native`` decides at import), so two worker processes
(``--worker``; one with ``METAPROTOCOL_PURE_PYTHON=1``) are fed the same inputs over pipes. Each
drives the codec as the core does (fuzz/_harness.py's input layout: byte 0 the config, byte 1 the
reads and SPI arguments, then the wire bytes) and writes a trace of every outcome: each decode's
message type, raw bytes, request id, metadata and buffer position, every SPI call's output
(replies, encodings, local answers, batches, decode_run and frame_replies framings), or the
exception type and message. The traces must be identical; an undocumented exception in either is
a finding too. Inputs are the targets' seeds (the shared vectors), hand-made corpora, committed
reproducers, the atheris work corpora (.fuzz-work/<target>/corpus) and mutations of them all.

Differing inputs go to fuzz/crashes/differential/<target>/ (git-ignored). Exit status 1 when
anything differed or a worker runs the wrong mode (a stale build runs pure Python: rebuild).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz import _harness, _targets  # noqa: E402

TARGETS = ("redis_server", "redis_client", "dubbo_server", "dubbo_client", "thrift_server", "thrift_client", "hessian2", "fastscan")
CRASHES = _harness.ROOT / "fuzz" / "crashes" / "differential"
EXERCISED = 4  # messages per pass given every SPI call (as metaprotocol.testing.drive.Driver)
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


# -- the worker: one mode, one trace per input ---------------------------------------------------


def _scrub(text: str) -> str:
    return _ADDRESS.sub(" at 0x", text)


class Trace:
    """What one input did: a list of lines (compared as a whole between the two modes)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bugs: list[str] = []

    def add(self, *parts: object) -> None:
        label, *rest = parts
        self.lines.append(" ".join([str(label), *(_scrub(repr(p)) for p in rest)]))

    def call(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` with its outcome traced; None when it raised."""
        from metaprotocol.spi import MetaProtocolError

        try:
            result = fn(*args)
        except MetaProtocolError as exc:
            self.add(f"{label} raised", type(exc).__name__, str(exc), getattr(exc, "kind", None))
            return None
        except _documented() as exc:
            self.add(f"{label} raised", type(exc).__name__, str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - traced, and a finding of its own
            self.add(f"{label} BUG", type(exc).__name__, str(exc))
            self.bugs.append(f"{_harness.signature(exc)} ({_harness.stack_top(exc)})")
            return None
        self.add(f"{label} ->", describe(result))
        return result


_DOCUMENTED: tuple[type[BaseException], ...] | None = None


def _documented() -> tuple[type[BaseException], ...]:
    """HessianDecodeError: the documented error of the Hessian reader and fastscan."""
    global _DOCUMENTED  # noqa: PLW0603
    if _DOCUMENTED is None:
        _DOCUMENTED = (importlib.import_module("metaprotocol_codecs.dubbo.hessian2").HessianDecodeError,)
    return _DOCUMENTED


def describe(value: object) -> object:
    """A mode-independent picture of an SPI result: messages by their observable fields, bytes
    as bytes, anything else (Hessian values, maybe cyclic) by its repr without addresses."""
    from metaprotocol.spi import NEED_DATA, LocalAnswer, Message, MetaProtocolError

    if value is NEED_DATA:
        return "NEED_DATA"
    if isinstance(value, Message):
        try:
            md: object = _scrub(repr(dict(value.metadata)))
        except MetaProtocolError as exc:
            md = f"metadata raised {type(exc).__name__}: {exc}"
        parts = [describe(p) for p in value.parts or ()]
        return ("Message", value.type.name, bytes(value.raw), value.request_id, md, parts, _scrub(repr(value.opaque)))
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, LocalAnswer):
        return ("LocalAnswer", bytes(value.reply), value.close)
    if type(value) is tuple:
        return tuple(describe(v) for v in value)
    try:
        return _Repr(_scrub(repr(value)))
    except (RecursionError, ValueError) as exc:  # very deep values; ints past the str limit
        return _Repr(f"<repr raised {type(exc).__name__}>")


class _Repr(str):
    """Text shown as is (a repr already made)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


@dataclass
class _Reads:
    buffer: Any
    base: int = 0

    def feed(self, chunk: bytes) -> None:
        self.base += self.buffer.pos
        self.buffer.feed(chunk)

    def at(self) -> int:
        return int(self.base + self.buffer.pos)


def _codec_run(target: str, data: bytes, t: Trace) -> None:
    from metaprotocol.spi import NEED_DATA, Correlation, ErrorKind, LocalError, MessageType, ReadBuffer, RemoteProtocolError
    from metaprotocol.testing.drive import split

    path, side, variants = _CODECS[target]
    if len(data) < 2:  # noqa: PLR2004
        return
    module, _, name = path.partition(":")
    variant = variants[data[0] % len(variants)]
    factory = getattr(importlib.import_module(module), name)(dict(variant.config))
    b = data[1]
    chunks = split(data[2:], b)
    kinds = tuple(ErrorKind)
    kind = LocalError(kinds[b % len(kinds)], "fuzz")
    new_id = (b * 7919) % (factory.max_request_id + 1)
    reply_kinds = (MessageType.RESPONSE, MessageType.ERROR)

    def decode_pass(label: str, codec: Any, on_message: Callable[[Any], None], fast: Callable[[Any], bool] | None = None) -> None:
        reads = _Reads(ReadBuffer())
        for chunk in chunks:
            reads.feed(chunk)
            buf = reads.buffer
            while buf.pos < len(buf.data):
                before = reads.at()
                if fast is not None:
                    try:
                        if fast(buf):
                            if reads.at() <= before:
                                return
                            continue
                    except RemoteProtocolError as exc:
                        t.add(f"{label} fast raised", type(exc).__name__, str(exc), exc.kind)
                        return
                try:
                    msg = codec.decode(buf)
                except RemoteProtocolError as exc:
                    t.add(f"{label} decode raised", type(exc).__name__, str(exc), exc.kind, reads.at())
                    request = exc.request if exc.request is not None else None
                    t.call("on_error(bad)", factory.server_codec().on_error, request, LocalError(exc.kind, str(exc)))
                    return
                except Exception as exc:  # noqa: BLE001
                    t.add(f"{label} decode BUG", type(exc).__name__, str(exc))
                    t.bugs.append(f"{_harness.signature(exc)} ({_harness.stack_top(exc)})")
                    return
                t.add(f"{label} decode", describe(msg), reads.at())
                if msg is NEED_DATA:
                    break
                if reads.at() <= before:
                    return  # no progress (the fuzz harnesses report it)
                on_message(msg)

    if side == "server":
        server = factory.server_codec()
        seen = 0
        run: list[Any] = []
        runs: list[list[Any]] = []

        def on_request(msg: Any) -> None:
            nonlocal seen
            seen += 1
            plain = msg.type is MessageType.REQUEST and not msg.parts
            answer = None
            if seen > EXERCISED:
                answer = t.call("answer_locally", server.answer_locally, msg) if plain else None
            elif msg.type is MessageType.HEARTBEAT:
                t.call("heartbeat_reply", server.heartbeat_reply, msg)
                plain = False
            elif msg.type in (MessageType.REQUEST, MessageType.ONEWAY):
                answer = t.call("answer_locally", server.answer_locally, msg)
                t.call("is_idempotent", server.is_idempotent, msg)
                t.call("on_error", server.on_error, msg, kind)
                profile = t.call("upstream_profile", server.upstream_profile)
                client = factory.client_codec(profile)
                t.call("encode", client.encode, msg, None, msg.request_id)
                if factory.correlation is Correlation.REQUEST_ID:
                    t.call("encode(new id)", client.encode, msg, None, new_id)
                if factory.supports_mutation and t.call("can_mutate", client.can_mutate, msg):
                    t.call("encode(mutation)", client.encode, msg, {"x-fuzz": "1"}, new_id)
                for part in msg.parts or ():
                    t.call("encode(part)", client.encode, part, None, part.request_id)
            else:
                plain = False
            if plain and answer is None:
                run.append(msg)
            elif run:
                runs.append(run[:])
                run.clear()

        decode_pass("server", server, on_request)
        if run:
            runs.append(run)
        for r in runs[:2]:
            if len(r) < 2:  # noqa: PLR2004
                continue
            unit = t.call("batch", server.batch, r)
            if unit is not None:
                t.call("batch_error", server.batch_error, unit, kind, len(r))
                t.call("batch_error(1)", server.batch_error, unit, kind, 1)
                t.call("encode(batch)", factory.client_codec(server.upstream_profile()).encode, unit, None, None)
        runner = factory.server_codec()

        def fast(buf: Any) -> bool:
            unit = runner.decode_run(buf)
            t.add("decode_run", describe(unit), buf.pos)
            return unit is not None

        decode_pass("run", runner, lambda m: t.call("answer_locally", runner.answer_locally, m), fast)
    else:
        profile = variant.profile
        client = factory.client_codec(profile)
        seen = 0

        def on_reply(msg: Any) -> None:
            nonlocal seen
            seen += 1
            if seen > EXERCISED:
                return
            t.call("request_id_of", client.request_id_of, msg)
            if msg.type in reply_kinds:
                server = factory.server_codec()
                t.call("encode", server.encode, msg, None, msg.request_id)
                if factory.correlation is Correlation.REQUEST_ID:
                    t.call("encode(new id)", server.encode, msg, None, new_id)
                if factory.supports_mutation:
                    t.call("encode(mutation)", server.encode, msg, {"x-fuzz": "1"}, new_id)
            else:
                t.call("answer_event", client.answer_event, msg)

        decode_pass("client", client, on_reply)
        framer = factory.client_codec(profile)
        limit = 1 + b % 7

        def fast(buf: Any) -> bool:
            taken, errors = framer.frame_replies(buf, limit)
            t.add("frame_replies", taken, errors, buf.pos)
            return bool(taken)

        decode_pass("frames", framer, lambda m: None, fast)


def _hessian_run(data: bytes, t: Trace) -> None:
    h = importlib.import_module("metaprotocol_codecs.dubbo.hessian2")
    r = h.Hessian2Reader(data)
    values = []
    while not r.at_end():
        before = r.pos
        value = t.call("read", r.read)
        if t.lines[-1].startswith(("read raised", "read BUG")) or r.pos == before:
            break
        values.append(value)
        t.add("pos", r.pos)
    s = h.Hessian2Reader(data)
    while not s.at_end():
        before = s.pos
        t.call("skip", s.skip)
        if s.pos == before:
            break
    t.call("loads", h.loads, data)
    for value in values[:4]:
        again = t.call("dumps", h.dumps, value)
        if again is not None:
            t.call("loads(dumps)", h.loads, again)


def _fastscan_run(data: bytes, t: Trace) -> None:
    if not data:
        return
    fs = importlib.import_module("metaprotocol_codecs.dubbo.fastscan")
    body = data[1:]
    end = len(body)
    t.call("skip_values", fs.skip_values, body, 0, end, 1 + data[0] % 4, [], [])
    starts: list[int] = []
    ends: list[int] = []
    t.call("skip_values(spans)", fs.skip_values, body, 0, end, 1 + data[0] % 4, starts, ends)
    t.add("spans", starts, ends)
    t.call("read_flat_map", fs.read_flat_map, body, 0, end)
    t.call("read_string_at", fs.read_string_at, body, 0, end)
    half = end // 2
    t.call("read_string_at(mid)", fs.read_string_at, body, half, end)


_CODECS = {
    "redis_server": ("metaprotocol_codecs.redis.codec:RedisCodecFactory", "server", _targets.REDIS_SERVER),
    "redis_client": ("metaprotocol_codecs.redis.codec:RedisCodecFactory", "client", _targets.REDIS_CLIENT),
    "dubbo_server": ("metaprotocol_codecs.dubbo.codec:DubboCodecFactory", "server", _targets.DUBBO),
    "dubbo_client": ("metaprotocol_codecs.dubbo.codec:DubboCodecFactory", "client", _targets.DUBBO),
    "thrift_server": ("metaprotocol_codecs.thrift.codec:ThriftCodecFactory", "server", _targets.THRIFT),
    "thrift_client": ("metaprotocol_codecs.thrift.codec:ThriftCodecFactory", "client", _targets.THRIFT),
}


def trace(target: str, data: bytes) -> Trace:
    """The trace of one input (in this process's mode); a hang is traced, not raised."""
    t = Trace()
    armed = _harness._arm()  # noqa: SLF001 - the harness's CPU-time hang timer
    try:
        if target == "hessian2":
            _hessian_run(data, t)
        elif target == "fastscan":
            _fastscan_run(data, t)
        else:
            _codec_run(target, data, t)
    except _harness.Hang:
        t.add("HANG")
    except Exception as exc:  # noqa: BLE001 - outside the traced calls (e.g. touching a message)
        t.add("BUG", type(exc).__name__, str(exc))
        t.bugs.append(f"{_harness.signature(exc)} ({_harness.stack_top(exc)})")
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
    return t


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(4)
    if len(head) < 4:  # noqa: PLR2004
        return None
    (n,) = struct.unpack(">I", head)
    return stream.read(n)


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def worker() -> int:
    """Read ``target NUL input`` frames on stdin, answer each with its trace on stdout; the first
    answer is this process's mode."""
    from metaprotocol import _native

    _write_frame(sys.stdout.buffer, " ".join(_native.mode()).encode())
    while (frame := _read_frame(sys.stdin.buffer)) is not None:
        target, _, data = frame.partition(b"\0")
        t = trace(target.decode(), data)
        _write_frame(sys.stdout.buffer, json.dumps([t.lines, t.bugs]).encode())
    return 0


# -- the driver: two workers, one per mode --------------------------------------------------------


class Worker:
    """A ``--worker`` process in one mode."""

    def __init__(self, pure: bool) -> None:
        env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(_harness.ROOT)}
        env.pop("METAPROTOCOL_PURE_PYTHON", None)
        if pure:
            env["METAPROTOCOL_PURE_PYTHON"] = "1"
        self.pure = pure
        self.proc = subprocess.Popen(  # noqa: S603 - our own script
            [sys.executable, str(Path(__file__).resolve()), "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=_harness.ROOT
        )
        assert self.proc.stdout is not None
        self.mode = (_read_frame(self.proc.stdout) or b"").decode()

    def ask(self, target: str, data: bytes) -> tuple[str, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _write_frame(self.proc.stdin, target.encode() + b"\0" + data)
        answer = _read_frame(self.proc.stdout)
        if answer is None:
            raise RuntimeError(f"the {'pure' if self.pure else 'compiled'} worker died (exit {self.proc.wait()})")
        lines, bugs = json.loads(answer)
        return "\n".join(lines), "\n".join(bugs)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Outcome:
    """One target's differential run."""

    target: str
    inputs: int = 0
    seconds: float = 0.0
    differences: list[tuple[bytes, str]] = field(default_factory=list)
    bugs: dict[str, bytes] = field(default_factory=dict)


def seeds(target: str, work_corpus: bool = True) -> list[bytes]:
    """The target's seeds, committed reproducers and (optionally) its atheris work corpus."""
    out = list(_targets.target(target).seeds())
    out += [p.read_bytes() for p in sorted((_harness.REGRESSIONS / target).glob("*"))]
    corpus = _harness.ROOT / ".fuzz-work" / target / "corpus"
    if work_corpus and corpus.is_dir():
        out += [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    return out


def _fix_length(target: str, data: bytes) -> bytes:
    """The input with its frame's length field made to match its bytes (a mutated body under a
    stale length mostly waits for more data): the Dubbo header's, or a framed Thrift prefix."""
    body = data[2:]
    if target.startswith("dubbo") and len(body) >= 16 and body[:2] == b"\xda\xbb":  # noqa: PLR2004
        return data[:2] + body[:12] + struct.pack(">I", len(body) - 16) + body[16:]
    if target.startswith("thrift") and len(body) >= 4:  # noqa: PLR2004
        return data[:2] + struct.pack(">I", len(body) - 4) + body[4:]
    return data


def _hessian_spliced(target: str, pool: Sequence[bytes], values: Sequence[bytes], rng: random.Random) -> bytes:
    """A Dubbo frame whose body is cut at a random point and ended with a Hessian value from the
    vectors (attachments, arguments or results of every shape), its length fixed."""
    data = rng.choice(pool)
    cut = rng.randrange(18, max(19, len(data) + 1))
    return _fix_length(target, data[:cut] + rng.choice(values))


def inputs(target: str, seed: int, work_corpus: bool = True) -> Iterator[bytes]:
    """The seeds, then mutations of them without end (batches of fresh seeds); for the framed
    protocols every other mutation gets its length field fixed, and a Dubbo input is sometimes a
    frame ended by a Hessian value from the vectors."""
    pool = seeds(target, work_corpus)
    yield from pool
    rng = random.Random(seed)
    framed = target.startswith(("dubbo", "thrift"))
    values = _targets.hessian_values() if target.startswith("dubbo") else []
    frames = [d for d in pool if d[2:4] == b"\xda\xbb"]
    batch = 0
    while True:
        for data in _harness.mutations(pool, 5000, seed=seed * 1_000_003 + batch, max_len=2048):
            if framed and rng.random() < 0.5:  # noqa: PLR2004
                data = _fix_length(target, data)
            yield data
            if values and frames and rng.random() < 0.25:  # noqa: PLR2004
                yield _hessian_spliced(target, frames, values, rng)
        batch += 1


def first_difference(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            return f"line {i}:\n  compiled: {x[:400]}\n  pure:     {y[:400]}"
    return f"traces of {len(la)} and {len(lb)} lines"


def compare(workers: Sequence[Worker], target: str, feed: Iterator[bytes], limit: int, seconds: float) -> Outcome:
    """Feed up to ``limit`` inputs (or ``seconds``) to both workers; collect what differs."""
    compiled, pure = workers
    out = Outcome(target)
    start = time.monotonic()
    for data in feed:
        if out.inputs >= limit or time.monotonic() - start > seconds:
            break
        out.inputs += 1
        (a, bugs_a), (b, bugs_b) = compiled.ask(target, data), pure.ask(target, data)
        if a != b:
            out.differences.append((data, first_difference(a, b)))
        for bug in filter(None, (bugs_a + "\n" + bugs_b).splitlines()):
            out.bugs.setdefault(bug, data)
    out.seconds = time.monotonic() - start
    return out


def smoke(per_target: int, seed: int = 1) -> tuple[str, list[str]]:
    """A fixed-size run for the test suite: ``per_target`` inputs of every target (its seeds,
    committed reproducers, then deterministic mutations; not the local work corpora). Returns the
    compiled worker's mode and one line per differing input or undocumented exception."""
    workers = [Worker(pure=False), Worker(pure=True)]
    problems: list[str] = []
    try:
        for name in TARGETS:
            r = compare(workers, name, inputs(name, seed, work_corpus=False), per_target, float("inf"))
            problems += [f"{name} {data[:64]!r}: {diff}" for data, diff in r.differences[:3]]
            problems += [f"{name} {data[:64]!r}: {bug}" for bug, data in r.bugs.items()]
    finally:
        for w in workers:
            w.close()
    return workers[0].mode, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fuzz/differential.py", description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=["all"], help=f"all, or any of {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=150, help="wall time per target (default 150)")
    parser.add_argument("--inputs", type=int, default=10**9, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="of the mutations (default 1)")
    parser.add_argument("--no-work-corpus", action="store_true", help="do not seed from .fuzz-work/<target>/corpus")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    names = list(TARGETS) if args.targets == ["all"] else args.targets
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")
    workers = [Worker(pure=False), Worker(pure=True)]
    print(f"compiled worker: {workers[0].mode}; pure worker: {workers[1].mode}", flush=True)
    if not workers[0].mode.startswith("compiled"):
        print("the compiled build is not in use (stale or absent): rebuild with setup.py build_ext --inplace")
        return 1
    failed = False
    try:
        for name in names:
            r = compare(workers, name, inputs(name, args.seed, not args.no_work_corpus), args.inputs, args.seconds)
            print(f"{name:14} {r.inputs:9,} inputs {r.seconds:6.0f} s  {len(r.differences)} differing  {len(r.bugs)} undocumented exceptions", flush=True)
            folder = CRASHES / name
            for data, diff in r.differences[:20]:
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"diff-{hashlib.sha1(data).hexdigest()}"  # noqa: S324 - a file name
                path.write_bytes(data)
                print(f"  {path.relative_to(_harness.ROOT)}: {diff}", flush=True)
            for bug, data in r.bugs.items():
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"bug-{hashlib.sha1(data).hexdigest()}"  # noqa: S324
                path.write_bytes(data)
                print(f"  {bug} -> {path.relative_to(_harness.ROOT)}", flush=True)
            failed |= bool(r.differences or r.bugs)
    finally:
        for w in workers:
            w.close()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
