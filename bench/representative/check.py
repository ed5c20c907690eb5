"""Send a sample of each corpus through a target one request at a time and decode every reply
with the project's decoders: the reply's shape must be the one the provider gives the request's
method (value only, value with attachments, exception, error status); Redis replies must have the
command's type. Run on every target before measuring, so a peer that answers with local errors
(a route that does not match, say) shows up instead of being counted as fast."""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

from bench.representative import corpus
from bench.representative.corpus import ATTACHMENTS, ERROR, EXCEPTION, VALUE, Frame
from metaprotocol_codecs.dubbo import wire as dubbo
from metaprotocol_codecs.redis import resp
from metaprotocol_codecs.thrift import wire as thrift

BY_DUBBO_NAME = {m.name: m for m in corpus.METHODS}
BY_THRIFT_NAME = {m.thrift_name: m for m in corpus.METHODS}
REDIS_TYPES = {"GET": b"$", "SET": b"+", "MGET": b"*", "INCR": b":"}


def _recv_exact(s: socket.socket, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed by the target")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _patched(f: Frame, rid: int) -> bytes:
    data = bytearray(f.data)
    for off in (f.id_off1, f.id_off2):
        if off >= 0:
            data[off : off + f.id_size] = rid.to_bytes(f.id_size, "big")
    return bytes(data)


def sample(frames: list[Frame], protocol: str, per_kind: int = 2) -> list[Frame]:
    """Up to ``per_kind`` frames of each method (Dubbo, Thrift) or command (Redis)."""
    seen: Counter[str] = Counter()
    out = []
    for f in frames:
        if protocol == "dubbo":
            key = dubbo.parse_invocation(f.data).method
        elif protocol == "thrift":
            key = thrift.read_message_header(f.data, thrift.read_theader(f.data).payload_at, len(f.data), None).name
        else:
            key = f.data.split(b"\r\n")[2].decode()
        if seen[key] < per_kind:
            seen[key] += 1
            out.append(f)
    return out


def dubbo_shape(reply: bytes) -> str:
    r = dubbo.parse_result(reply)
    if r.status != dubbo.OK:
        return ERROR
    if r.flag in (dubbo.RESPONSE_WITH_EXCEPTION, dubbo.RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS):
        return EXCEPTION
    return ATTACHMENTS if r.attachments else VALUE


def thrift_shape(reply: bytes) -> str:
    header = reply[4:6] == b"\x0f\xff"
    t = thrift.read_theader(reply) if header else None
    h = thrift.read_message_header(reply, t.payload_at if t else 4, len(reply), None)
    thrift.skip_struct(reply, h.end, len(reply), h.protocol)
    if h.type == thrift.EXCEPTION:
        return ERROR
    field_id = struct.unpack_from(">h", reply, h.end + 1)[0] if reply[h.end] else -1
    if field_id == 1:
        return EXCEPTION
    return ATTACHMENTS if t is not None and "provider" in t.headers else VALUE


def check_target(port: int, protocol: str, frames: list[Frame]) -> dict[str, Any]:
    """Replies whose shape is as expected, and the mismatches (expected -> got, counted)."""
    ok, wrong = 0, Counter[str]()
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        for i, f in enumerate(frames, 1):
            s.sendall(_patched(f, i))
            if protocol == "dubbo":
                head = _recv_exact(s, 16, buf)
                reply = head + _recv_exact(s, struct.unpack_from(">I", head, 12)[0], buf)
                want = BY_DUBBO_NAME[dubbo.parse_invocation(f.data).method].shape
                got = dubbo_shape(reply) if struct.unpack_from(">Q", reply, 4)[0] == i else "wrong id"
            elif protocol == "thrift":
                head = _recv_exact(s, 4, buf)
                reply = head + _recv_exact(s, struct.unpack_from(">I", head)[0], buf)
                name = thrift.read_message_header(f.data, thrift.read_theader(f.data).payload_at, len(f.data), None).name
                want = BY_THRIFT_NAME[name].shape
                got = thrift_shape(reply)
            else:
                while (end := resp.scan_reply(buf, 0)) < 0:
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed by the target")
                    buf += data
                reply = bytes(buf[:end])
                del buf[:end]
                want = f.data.split(b"\r\n")[2].decode()
                got = want if reply[:1] == REDIS_TYPES[want] else f"{reply[:40]!r}"
            if got == want:
                ok += 1
            else:
                wrong[f"{want} -> {got}"] += 1
    return {"ok": ok, "wrong": dict(wrong)}
