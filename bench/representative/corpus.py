"""Request corpora and canned reply tables for the representative suite.

Dubbo and Thrift: 4 services x 3 methods, a distinct trace id per request (Dubbo attachment
``traceparent``, Thrift THeader header ``traceparent``), arguments of three kinds (a short String,
a 1-4 KB String, a Java object / Thrift struct). Each method's reply has one of four shapes (value
only, value with attachments / THeader headers, exception, error status / TApplicationException),
so the provider picks the shape by the request's method. Redis: GET/SET/MGET/INCR over 10^5 keys
with values of 16 B to 4 KB.

Frames are built with the project's codecs (metaprotocol_codecs) and a sample is decoded again by
them (``verify_*``). Files are little-endian; bench/loadgen.c and bench/representative/provider.c
read them:

- corpus ``MPC1``: u32 count, then per frame u32 len, i32 id_off1, i32 id_off2, i32 id_size,
  i32 trace_off (16 hex digits the load generator overwrites with a counter; -1: none), bytes.
- reply table ``MPT1``: u32 count, then per entry u32 key_len, key (method name as the request
  carries it), u32 transport (0 Dubbo, 1 Thrift framed, 2 Thrift THeader), u32 len, i32 id_off1,
  i32 id_off2, i32 id_size, the reply frame (its ids are overwritten with the request's).
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaprotocol_codecs.dubbo import wire as dubbo
from metaprotocol_codecs.dubbo.hessian2_types import HessianList, JavaObject, Long
from metaprotocol_codecs.redis import resp
from metaprotocol_codecs.thrift import wire as thrift

NOUNS = ("User", "Order", "Inventory", "Payment")
DUBBO_PACKAGE = "org.apache.dubbo.bench"
SERVICES = tuple(f"{DUBBO_PACKAGE}.{noun}Service" for noun in NOUNS)
KINDS = ("get", "update", "query")  # argument: short String, 1-4 KB String, Java object / struct
VALUE, ATTACHMENTS, EXCEPTION, ERROR = "value", "value+attachments", "exception", "error"
# Reply shape of method k = service * 3 + kind: 6 value, 3 with attachments, 2 exception, 1 error.
SHAPES = (VALUE, ATTACHMENTS, VALUE, EXCEPTION, VALUE, ATTACHMENTS, VALUE, ERROR, VALUE, ATTACHMENTS, EXCEPTION, VALUE)
TRACE_PLACEHOLDER = "0" * 16
DUBBO_TRANSPORT, FRAMED, THEADER = 0, 1, 2
NONE = -1


@dataclass(frozen=True)
class Method:
    """One of the 12 methods: its service, name, argument kind and reply shape."""

    service: int
    kind: str
    shape: str

    @property
    def noun(self) -> str:
        return NOUNS[self.service]

    @property
    def name(self) -> str:
        return f"{self.kind}{self.noun}"

    @property
    def interface(self) -> str:
        return SERVICES[self.service]

    @property
    def thrift_name(self) -> str:
        return f"{self.noun}Service:{self.name}"


METHODS = tuple(Method(s, kind, SHAPES[s * 3 + k]) for s in range(4) for k, kind in enumerate(KINDS))


@dataclass
class Frame:
    data: bytes
    id_off1: int
    id_off2: int
    id_size: int
    trace_off: int


def write_corpus(path: Path, frames: list[Frame]) -> None:
    out = bytearray(b"MPC1" + struct.pack("<I", len(frames)))
    for f in frames:
        out += struct.pack("<Iiiii", len(f.data), f.id_off1, f.id_off2, f.id_size, f.trace_off) + f.data
    path.write_bytes(bytes(out))


def read_corpus(path: Path) -> list[Frame]:
    data = path.read_bytes()
    assert data[:4] == b"MPC1"
    (count,) = struct.unpack_from("<I", data, 4)
    pos, frames = 8, []
    for _ in range(count):
        n, o1, o2, size, trace = struct.unpack_from("<Iiiii", data, pos)
        pos += 20
        frames.append(Frame(data[pos : pos + n], o1, o2, size, trace))
        pos += n
    return frames


def write_replies(path: Path, entries: list[tuple[str, int, Frame]]) -> None:
    out = bytearray(b"MPT1" + struct.pack("<I", len(entries)))
    for key, transport, f in entries:
        k = key.encode()
        out += struct.pack("<I", len(k)) + k + struct.pack("<IIiii", transport, len(f.data), f.id_off1, f.id_off2, f.id_size) + f.data
    path.write_bytes(bytes(out))


def _text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.-", k=n))


def _traceparent(rng: random.Random) -> str:
    # 00-<trace id: 16 random hex + 16 the load generator patches>-<span id>-01
    return f"00-{rng.getrandbits(64):016x}{TRACE_PLACEHOLDER}-{rng.getrandbits(64):016x}-01"


def _trace_offset(frame: bytes, trace: str) -> int:
    at = frame.find(trace.encode())
    assert at >= 0 and frame.count(trace.encode()) == 1
    return at + 3 + 16


# ---------------------------------------------------------------------------------------- Dubbo


def _dubbo_query(rng: random.Random, noun: str) -> JavaObject:
    return JavaObject(f"{DUBBO_PACKAGE}.{noun}Query", {
        "id": Long(rng.getrandbits(40)), "name": _text(rng, rng.randint(5, 30)), "page": rng.randint(0, 100),
        "tags": HessianList([_text(rng, 6) for _ in range(rng.randint(0, 4))]), "active": rng.random() < 0.5,
        "score": round(rng.random() * 100, 2),
    })  # fmt: skip


def dubbo_request(rng: random.Random, m: Method) -> Frame:
    if m.kind == "get":
        desc, args = "Ljava/lang/String;", [f"{m.noun.lower()}-{rng.randint(0, 99999)}"]
    elif m.kind == "update":
        desc, args = "Ljava/lang/String;", [_text(rng, rng.randint(1024, 4096))]
    else:
        desc, args = f"L{DUBBO_PACKAGE.replace('.', '/')}/{m.noun}Query;", [_dubbo_query(rng, m.noun)]
    trace = _traceparent(rng)
    attachments: dict[str, Any] = {"path": m.interface, "interface": m.interface, "version": "1.0.0", "timeout": 3000,
                                   "application": "bench-consumer", "traceparent": trace}  # fmt: skip
    if rng.random() < 0.3:
        attachments["tenant"] = f"tenant-{rng.randint(0, 20)}"
    frame = dubbo.build_request(1, dubbo.Invocation(m.interface, m.name, desc, args, attachments, "1.0.0"))
    return Frame(frame, 4, NONE, 8, _trace_offset(frame, trace))


def _dubbo_value(m: Method) -> Any:
    if m.kind == "get":
        return f"{m.noun} record: name=example, id=12345, region=eu-west-1"
    if m.kind == "update":
        return 1
    return JavaObject(f"{DUBBO_PACKAGE}.{m.noun}DTO", {"id": Long(12345), "name": "example", "status": "ACTIVE",
                                                        "items": HessianList(["a1", "b2", "c3"]), "amount": 99.5})  # fmt: skip


def _java_exception(m: Method) -> JavaObject:
    frames = HessianList([JavaObject("java.lang.StackTraceElement", {"declaringClass": f"{DUBBO_PACKAGE}.{m.noun}ServiceImpl",
                                                                     "methodName": m.name, "fileName": f"{m.noun}ServiceImpl.java", "lineNumber": 42})],
                         type="[java.lang.StackTraceElement")  # fmt: skip
    return JavaObject("java.lang.IllegalStateException", {"detailMessage": f"{m.name} failed: record is locked", "stackTrace": frames, "cause": None})


def dubbo_reply(m: Method) -> Frame:
    if m.shape == VALUE:
        result = dubbo.Result(value=_dubbo_value(m), flag=dubbo.RESPONSE_VALUE)
    elif m.shape == ATTACHMENTS:
        result = dubbo.Result(value=_dubbo_value(m), flag=dubbo.RESPONSE_VALUE_WITH_ATTACHMENTS,
                              attachments={"dubbo": "2.0.2", "provider": "canned-1", "elapsed": "3"})  # fmt: skip
    elif m.shape == EXCEPTION:
        result = dubbo.Result(exception=_java_exception(m))
    else:
        result = dubbo.Result(status=dubbo.SERVICE_ERROR, message=f"Fail to invoke {m.interface}.{m.name}: provider busy")
    return Frame(dubbo.build_response(1, result), 4, NONE, 8, NONE)


def dubbo_corpus(count: int, seed: int = 15) -> list[Frame]:
    rng = random.Random(seed)
    return [dubbo_request(rng, rng.choice(METHODS)) for _ in range(count)]


def dubbo_replies() -> list[tuple[str, int, Frame]]:
    return [(m.name, DUBBO_TRANSPORT, dubbo_reply(m)) for m in METHODS]


def expected_dubbo_class(m: Method) -> str:
    """The reply class bench/loadgen.c reports (status byte, first body byte), as hex."""
    f = dubbo_reply(m).data
    return f"{f[3]:02x}{f[16]:02x}"


def verify_dubbo(frames: list[Frame]) -> Counter[str]:
    """Decode frames with the project's Dubbo decoder; the methods seen."""
    seen: Counter[str] = Counter()
    for f in frames:
        inv = dubbo.parse_invocation(f.data)
        assert inv.attachments["traceparent"].startswith("00-") and inv.path in SERVICES
        assert f.data[f.trace_off : f.trace_off + 16] == TRACE_PLACEHOLDER.encode()
        seen[inv.method] += 1
    for _, _, reply in dubbo_replies():
        dubbo.parse_result(reply.data)
    return seen


# ---------------------------------------------------------------------------------------- Thrift

T_STOP, T_BOOL, T_DOUBLE, T_I32, T_I64, T_STRING, T_STRUCT, T_LIST = 0, 2, 4, 8, 10, 11, 12, 15


def _field(ftype: int, fid: int, value: bytes) -> bytes:
    return struct.pack(">bh", ftype, fid) + value


def _tstr(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">i", len(b)) + b


def _struct(*fields: bytes) -> bytes:
    return b"".join(fields) + b"\x00"


def _thrift_query(rng: random.Random) -> bytes:
    tags = [_tstr(_text(rng, 6)) for _ in range(rng.randint(0, 4))]
    return _struct(
        _field(T_I64, 1, struct.pack(">q", rng.getrandbits(40))), _field(T_STRING, 2, _tstr(_text(rng, rng.randint(5, 30)))),
        _field(T_I32, 3, struct.pack(">i", rng.randint(0, 100))), _field(T_LIST, 4, struct.pack(">bi", T_STRING, len(tags)) + b"".join(tags)),
        _field(T_BOOL, 5, bytes([rng.random() < 0.5])), _field(T_DOUBLE, 6, struct.pack(">d", round(rng.random() * 100, 2))),
    )  # fmt: skip


def _message(name: str, mtype: int, body: bytes) -> tuple[bytes, int]:
    """A strict-binary message and the offset of its seqid."""
    n = name.encode()
    head = struct.pack(">iI", thrift.BINARY_VERSION_1 - 2**32 + mtype, len(n)) + n
    return head + struct.pack(">i", 1) + body, len(head)


def _theader(message: bytes, seq_at: int, headers: dict[str, str]) -> Frame:
    frame = thrift.build_theader(1, thrift.PROTOCOL_BINARY, headers, message)
    payload_at = 14 + struct.unpack_from(">H", frame, 12)[0] * 4
    return Frame(frame, 8, payload_at + seq_at, 4, NONE)


def thrift_request(rng: random.Random, m: Method) -> Frame:
    if m.kind == "get":
        arg = _field(T_STRING, 1, _tstr(f"{m.noun.lower()}-{rng.randint(0, 99999)}"))
    elif m.kind == "update":
        arg = _field(T_STRING, 1, _tstr(_text(rng, rng.randint(1024, 4096))))
    else:
        arg = _field(T_STRUCT, 1, _thrift_query(rng))
    trace = _traceparent(rng)
    headers = {"traceparent": trace, "client": "bench-consumer"}
    if rng.random() < 0.3:
        headers["tenant"] = f"tenant-{rng.randint(0, 20)}"
    message, seq_at = _message(m.thrift_name, thrift.CALL, _struct(arg))
    f = _theader(message, seq_at, headers)
    f.trace_off = _trace_offset(f.data, trace)
    return f


def _thrift_result(m: Method) -> tuple[int, bytes]:
    if m.shape == ERROR:  # TApplicationException INTERNAL_ERROR
        return thrift.EXCEPTION, _struct(_field(T_STRING, 1, _tstr(f"{m.name} failed: provider busy")), _field(T_I32, 2, struct.pack(">i", thrift.INTERNAL_ERROR)))
    if m.shape == EXCEPTION:  # a declared exception: result field 1
        return thrift.REPLY, _struct(_field(T_STRUCT, 1, _struct(_field(T_STRING, 1, _tstr(f"{m.name} failed: record is locked")), _field(T_I32, 2, struct.pack(">i", 409)))))
    if m.kind == "get":
        value = _field(T_STRING, 0, _tstr(f"{m.noun} record: name=example, id=12345, region=eu-west-1"))
    elif m.kind == "update":
        value = _field(T_I32, 0, struct.pack(">i", 1))
    else:
        value = _field(T_STRUCT, 0, _struct(_field(T_I64, 1, struct.pack(">q", 12345)), _field(T_STRING, 2, _tstr("example")),
                                           _field(T_LIST, 3, struct.pack(">bi", T_STRING, 3) + _tstr("a1") + _tstr("b2") + _tstr("c3"))))  # fmt: skip
    return thrift.REPLY, _struct(value)


def thrift_replies() -> list[tuple[str, int, Frame]]:
    out = []
    for m in METHODS:
        mtype, body = _thrift_result(m)
        message, seq_at = _message(m.thrift_name, mtype, body)
        headers = {"provider": "canned-1", "elapsed": "3"} if m.shape == ATTACHMENTS else {}
        out.append((m.thrift_name, THEADER, _theader(message, seq_at, headers)))
        out.append((m.thrift_name, FRAMED, Frame(struct.pack(">i", len(message)) + message, 4 + seq_at, NONE, 4, NONE)))
    return out


def expected_thrift_class(m: Method) -> str:
    """The reply class bench/loadgen.c reports (message type, first field id), as hex."""
    mtype, body = _thrift_result(m)
    return f"{mtype:02x}{body[2]:02x}"


def thrift_corpus(count: int, seed: int = 15) -> list[Frame]:
    rng = random.Random(seed)
    return [thrift_request(rng, rng.choice(METHODS)) for _ in range(count)]


def verify_thrift(frames: list[Frame]) -> Counter[str]:
    """Decode frames with the project's Thrift decoder (THeader, message header, struct); the names seen."""
    seen: Counter[str] = Counter()
    for f in frames:
        t = thrift.read_theader(f.data)
        assert t.headers["traceparent"].startswith("00-")
        h = thrift.read_message_header(f.data, t.payload_at, len(f.data), None)
        assert h.type == thrift.CALL and h.seqid_at == f.id_off2
        assert thrift.skip_struct(f.data, h.end, len(f.data), h.protocol) == len(f.data)
        seen[h.name] += 1
    for _, transport, reply in thrift_replies():
        at = thrift.read_theader(reply.data).payload_at if transport == THEADER else 4
        h = thrift.read_message_header(reply.data, at, len(reply.data), None)
        assert thrift.skip_struct(reply.data, h.end, len(reply.data), h.protocol) == len(reply.data)
    return seen


# ---------------------------------------------------------------------------------------- Redis

KEYS = 100_000
COUNTERS = 1_000
REDIS_MIX = (("GET", 45), ("SET", 30), ("MGET", 10), ("INCR", 15))


def value_size(key: int) -> int:
    """A key's value size, 16 B to 4 KB, log-uniform (fixed per key so memory stays put)."""
    return int(16 * math.exp((key * 2654435761 % 2**32) / 2**32 * math.log(256)))


def _pack(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _key(i: int) -> bytes:
    return b"key:%05d" % i


def redis_value(rng: random.Random, key: int) -> bytes:
    n = value_size(key)
    return (b"%08x" % rng.getrandbits(32)) * (n // 8) + b"v" * (n % 8)


def redis_command(rng: random.Random, keys: int = KEYS) -> bytes:
    op = rng.choices([c for c, _ in REDIS_MIX], [w for _, w in REDIS_MIX])[0]
    if op == "GET":
        return _pack(b"GET", _key(rng.randrange(keys)))
    if op == "SET":
        k = rng.randrange(keys)
        return _pack(b"SET", _key(k), redis_value(rng, k))
    if op == "MGET":
        return _pack(b"MGET", *(_key(rng.randrange(keys)) for _ in range(4)))
    return _pack(b"INCR", b"counter:%04d" % rng.randrange(COUNTERS))


def redis_corpus(count: int, seed: int = 15, keys: int = KEYS) -> list[Frame]:
    rng = random.Random(seed)
    return [Frame(redis_command(rng, keys), NONE, NONE, 0, NONE) for _ in range(count)]


def redis_prefill(seed: int = 16, keys: int = KEYS) -> list[bytes]:
    """SET commands for every key, so GET and MGET find values."""
    rng = random.Random(seed)
    return [_pack(b"SET", _key(k), redis_value(rng, k)) for k in range(keys)]


def verify_redis(frames: list[Frame]) -> Counter[str]:
    """Frame each command with the project's RESP scanner (requests are RESP arrays too); the commands seen."""
    seen: Counter[str] = Counter()
    for f in frames:
        assert resp.scan_reply(f.data, 0) == len(f.data)
        seen[f.data.split(b"\r\n")[2].decode()] += 1
    return seen


def identical(frames: list[Frame]) -> list[Frame]:
    """The best case the old harnesses measured: one frame (a ``get`` call: short String argument,
    value-only reply), its trace id never rewritten, so only the request id changes."""
    first = next(f for f in frames if b"getUser" in f.data)
    return [Frame(first.data, first.id_off1, first.id_off2, first.id_size, NONE)]


def build_all(directory: Path, count: int, keys: int = KEYS) -> dict[str, Path]:
    """Write the corpora (and the one-frame ones) and the two reply tables into ``directory``;
    check a sample."""
    directory.mkdir(parents=True, exist_ok=True)
    names = ("dubbo", "thrift", "redis", "dubbo_identical", "thrift_identical", "dubbo_replies", "thrift_replies")
    files = {name: directory / f"{name}.bin" for name in names}
    built = {"dubbo": dubbo_corpus(count), "thrift": thrift_corpus(count), "redis": redis_corpus(count, keys=keys)}
    built["dubbo_identical"], built["thrift_identical"] = identical(built["dubbo"]), identical(built["thrift"])
    for name, frames in built.items():
        write_corpus(files[name], frames)
    write_replies(files["dubbo_replies"], dubbo_replies())
    write_replies(files["thrift_replies"], thrift_replies())
    sample = max(1, count // 16)
    verify_dubbo(read_corpus(files["dubbo"])[:sample])
    verify_thrift(read_corpus(files["thrift"])[:sample])
    verify_redis(read_corpus(files["redis"])[:sample])
    return files
