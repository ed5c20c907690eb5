"""Dubbo 2 wire format (the ``dubbo://`` protocol), after Apache Dubbo's ExchangeCodec/DubboCodec.

Header (16 bytes, big-endian)::

    0      2      3        4                12           16
    | dabb | flag | status | request id (8) | body len (4) | body ...
    flag: 0x80 request, 0x40 two-way, 0x20 event, low 5 bits serialization (2 = hessian2)

Request body (one Hessian stream): dubbo version, service path, service version (or null),
method, parameter descriptor (JVM style, ``Ljava/lang/String;I``), one value per parameter,
attachments map. Response body (status 20): an int flag (0 exception, 1 value, 2 null; 3-5 the
same with an attachments map after), then the value or exception. Other statuses: one string,
the error message. Events: heartbeat body null, readonly event body "R".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from metaprotocol_codecs.dubbo.hessian2 import Hessian2Reader, Hessian2Writer
from metaprotocol_codecs.dubbo.hessian2_types import HessianMap

HEADER: Final = struct.Struct(">HBBQI")
HEADER_SIZE: Final = 16
MAGIC: Final = 0xDABB
FLAG_REQUEST: Final = 0x80
FLAG_TWO_WAY: Final = 0x40
FLAG_EVENT: Final = 0x20
SERIALIZATION_MASK: Final = 0x1F
HESSIAN2: Final = 2
DEFAULT_PAYLOAD_LIMIT: Final = 8 * 1024 * 1024
DUBBO_VERSION: Final = "2.0.2"
NO_VERSION: Final = "0.0.0"
"""The service version Dubbo writes when none is configured."""

OK: Final = 20
CLIENT_TIMEOUT: Final = 30
SERVER_TIMEOUT: Final = 31
BAD_REQUEST: Final = 40
BAD_RESPONSE: Final = 50
SERVICE_NOT_FOUND: Final = 60
SERVICE_ERROR: Final = 70
SERVER_ERROR: Final = 80
CLIENT_ERROR: Final = 90
SERVER_THREADPOOL_EXHAUSTED_ERROR: Final = 100
STATUS_NAMES: Final = {
    OK: "OK", CLIENT_TIMEOUT: "CLIENT_TIMEOUT", SERVER_TIMEOUT: "SERVER_TIMEOUT",
    BAD_REQUEST: "BAD_REQUEST", BAD_RESPONSE: "BAD_RESPONSE", SERVICE_NOT_FOUND: "SERVICE_NOT_FOUND",
    SERVICE_ERROR: "SERVICE_ERROR", SERVER_ERROR: "SERVER_ERROR", CLIENT_ERROR: "CLIENT_ERROR",
    SERVER_THREADPOOL_EXHAUSTED_ERROR: "SERVER_THREADPOOL_EXHAUSTED_ERROR",
}  # fmt: skip

RESPONSE_WITH_EXCEPTION: Final = 0
RESPONSE_VALUE: Final = 1
RESPONSE_NULL_VALUE: Final = 2
RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS: Final = 3
RESPONSE_VALUE_WITH_ATTACHMENTS: Final = 4
RESPONSE_NULL_VALUE_WITH_ATTACHMENTS: Final = 5
WITH_ATTACHMENTS_OFFSET: Final = 3

_PRIMITIVES: Final = frozenset("ZBCDFIJSV")
_DESC_CACHE: dict[str, int] = {}


def count_parameters(desc: str) -> int:
    """Number of parameters in a JVM descriptor such as ``Ljava/lang/String;[II``.

    Raises:
        ValueError: not a parameter descriptor.
    """
    cached = _DESC_CACHE.get(desc)
    if cached is not None:
        return cached
    n = 0
    i = 0
    size = len(desc)
    while i < size:
        while i < size and desc[i] == "[":
            i += 1
        if i >= size:
            raise ValueError(f"bad parameter descriptor {desc!r}")
        c = desc[i]
        if c == "L":
            end = desc.find(";", i)
            if end < 0:
                raise ValueError(f"bad parameter descriptor {desc!r}")
            i = end + 1
        elif c in _PRIMITIVES:
            i += 1
        else:
            raise ValueError(f"bad parameter descriptor {desc!r}")
        n += 1
    if len(_DESC_CACHE) < 4096:  # noqa: PLR2004
        _DESC_CACHE[desc] = n
    return n


def header(flag: int, status: int, request_id: int, body_length: int) -> bytes:
    """A 16-byte header."""
    return HEADER.pack(MAGIC, flag, status, request_id & 0xFFFFFFFFFFFFFFFF, body_length)


@dataclass
class Invocation:
    """A decoded request body."""

    path: str
    method: str
    param_desc: str = ""
    args: list[Any] = field(default_factory=list)
    attachments: dict[str, Any] = field(default_factory=dict)
    version: str | None = None
    dubbo_version: str = DUBBO_VERSION


@dataclass
class Result:
    """A decoded response: a value, an exception, or an error status with its message."""

    status: int = OK
    flag: int = RESPONSE_NULL_VALUE
    value: Any = None
    exception: Any = None
    message: str | None = None
    attachments: dict[str, Any] = field(default_factory=dict)


def build_request(request_id: int, inv: Invocation, *, two_way: bool = True) -> bytes:
    """A whole request frame (hessian2)."""
    w = Hessian2Writer()
    w.write(inv.dubbo_version)
    w.write(inv.path)
    w.write(inv.version)
    w.write(inv.method)
    w.write(inv.param_desc)
    for a in inv.args:
        w.write(a)
    w.write(HessianMap(inv.attachments))
    body = w.getvalue()
    flag = FLAG_REQUEST | HESSIAN2 | (FLAG_TWO_WAY if two_way else 0)
    return header(flag, 0, request_id, len(body)) + body


def build_heartbeat(request_id: int, *, reply: bool = False) -> bytes:
    """A heartbeat request (or its reply): an event whose body is Hessian null."""
    if reply:
        return header(FLAG_EVENT | HESSIAN2, OK, request_id, 1) + b"N"
    return header(FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2, 0, request_id, 1) + b"N"


def build_response(request_id: int, result: Result) -> bytes:
    """A whole response frame: value/null/exception (with attachments when given) or an error."""
    w = Hessian2Writer()
    if result.status != OK:
        w.write(result.message)
    else:
        flag = result.flag
        if result.exception is not None:
            flag = RESPONSE_WITH_EXCEPTION
        elif result.value is None:
            flag = RESPONSE_NULL_VALUE
        elif flag not in (RESPONSE_VALUE, RESPONSE_VALUE_WITH_ATTACHMENTS):
            flag = RESPONSE_VALUE
        if result.attachments and flag < WITH_ATTACHMENTS_OFFSET:
            flag += WITH_ATTACHMENTS_OFFSET
        w.write(flag)
        if flag in (RESPONSE_WITH_EXCEPTION, RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS):
            w.write(result.exception)
        elif flag in (RESPONSE_VALUE, RESPONSE_VALUE_WITH_ATTACHMENTS):
            w.write(result.value)
        if flag >= WITH_ATTACHMENTS_OFFSET:
            w.write(HessianMap(result.attachments))
    body = w.getvalue()
    return header(HESSIAN2, result.status, request_id, len(body)) + body


def parse_invocation(frame: bytes | bytearray) -> Invocation:
    """Fully decode a request frame's body (arguments included)."""
    r = Hessian2Reader(frame, HEADER_SIZE)
    dubbo_version = r.read_string()
    path = r.read_string()
    version = r.read_string_or_null()
    method = r.read_string()
    desc = r.read_string()
    args = [r.read() for _ in range(count_parameters(desc))]
    attachments = dict(r.read()) if not r.at_end() else {}
    return Invocation(path, method, desc, args, attachments, version, dubbo_version)


def parse_result(frame: bytes | bytearray) -> Result:
    """Fully decode a response frame's body."""
    status = frame[3]
    r = Hessian2Reader(frame, HEADER_SIZE)
    if status != OK:
        return Result(status=status, message=r.read_string_or_null() if not r.at_end() else None)
    flag = r.read_int()
    out = Result(status=status, flag=flag)
    if flag in (RESPONSE_WITH_EXCEPTION, RESPONSE_WITH_EXCEPTION_WITH_ATTACHMENTS):
        out.exception = r.read()
    elif flag in (RESPONSE_VALUE, RESPONSE_VALUE_WITH_ATTACHMENTS):
        out.value = r.read()
    if flag >= WITH_ATTACHMENTS_OFFSET:
        out.attachments = dict(r.read())
    return out
