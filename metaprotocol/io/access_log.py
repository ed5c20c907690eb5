"""Access log: one JSON line per request, with Envoy-style command operators.

Supported operators: ``%START_TIME%`` (ISO 8601, UTC), ``%DURATION%`` (ms), ``%PROTOCOL%``,
``%LISTENER%``, ``%ROUTE_NAME%``, ``%UPSTREAM_CLUSTER%``, ``%UPSTREAM_HOST%``, ``%REQUEST_ID%``,
``%REQ(key)%`` (any metadata attribute), ``%RESPONSE_CODE%`` (0 ok, 1 error, as Aeraki),
``%RESPONSE_CODE_DETAILS%`` (``ok``, ``error`` or the proxy's error kind), ``%BYTES_RECEIVED%``,
``%BYTES_SENT%``, ``%TRIES%``; any other text is copied. Lines are buffered and written once per
event-loop pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from metaprotocol.config.model import AccessLog

_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?%")


def _value(name: str, arg: str | None, record: dict[str, Any], protocol: str, wall_start: float) -> object:
    if name == "START_TIME":
        return dt.datetime.fromtimestamp(wall_start, dt.timezone.utc).isoformat(timespec="milliseconds")
    if name == "DURATION":
        return round(float(record["duration"]) * 1000, 3)
    if name == "REQ":
        return record["metadata"].get((arg or "").lower(), "")
    if name == "RESPONSE_CODE":
        return 0 if record["status"] == "ok" else 1
    simple = {
        "PROTOCOL": protocol,
        "LISTENER": record["listener"],
        "ROUTE_NAME": record["route"],
        "UPSTREAM_CLUSTER": record["cluster"],
        "UPSTREAM_HOST": record["upstream_host"],
        "REQUEST_ID": record["request_id"],
        "RESPONSE_CODE_DETAILS": record["status"],
        "BYTES_RECEIVED": record["bytes_received"],
        "BYTES_SENT": record["bytes_sent"],
        "TRIES": record["tries"],
    }
    return simple.get(name, f"%{name}%")


def format_record(fields: tuple[tuple[str, str], ...], record: dict[str, Any], protocol: str, wall_start: float) -> dict[str, object]:
    """The JSON object for one request."""
    out: dict[str, object] = {}
    for key, template in fields:
        whole = _OPERATOR.fullmatch(template)
        if whole:  # keep numbers as numbers
            out[key] = _value(whole.group(1), whole.group(2), record, protocol, wall_start)
        else:
            out[key] = _OPERATOR.sub(lambda m: str(_value(m.group(1), m.group(2), record, protocol, wall_start)), template)
    return out


class AccessLogWriter:
    """Buffers formatted lines and writes them at the end of the event-loop pass."""

    def __init__(self, config: AccessLog, protocol: str, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.protocol = protocol
        self.loop = loop
        self.lines: list[str] = []
        self.scheduled = False
        self.stream: IO[str] = sys.stdout if config.path in ("/dev/stdout", "-") else open(config.path, "a", encoding="utf-8")  # noqa: SIM115

    def record(self, record: dict[str, Any]) -> None:
        """Queue one request's line."""
        wall_start = time.time() - (self.loop.time() - float(record["start"]))
        self.lines.append(json.dumps(format_record(self.config.fields, record, self.protocol, wall_start), default=str))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued lines."""
        self.scheduled = False
        if self.lines:
            self.stream.write("\n".join(self.lines) + "\n")
            self.stream.flush()
            self.lines.clear()

    def close(self) -> None:
        """Flush and close the file."""
        self.flush()
        if self.stream is not sys.stdout:
            self.stream.close()


def fan_out(writers: list[AccessLogWriter]) -> Callable[[dict[str, Any]], None]:
    """One callable feeding every writer of a listener."""
    if len(writers) == 1:
        return writers[0].record

    def record(r: dict[str, Any]) -> None:
        for w in writers:
            w.record(r)

    return record
