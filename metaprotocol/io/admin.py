"""Admin HTTP endpoint: ``/ready``, ``/stats`` (Prometheus text), ``/config_dump`` (JSON).

Deliberately tiny (HTTP/1.0-style, one request per connection): it is for operators and
scrapers, not for traffic.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from metaprotocol.io.proxy import Proxy

_MAX_REQUEST_LINE: Final = 8192
_READ_TIMEOUT: Final = 5.0


async def start_admin(proxy: Proxy, host: str, port: int, sock: socket.socket | None = None) -> asyncio.Server:
    """Serve the admin endpoint for ``proxy``."""

    async def respond(path: str) -> tuple[str, str, bytes]:
        return _respond(proxy, path)

    return await serve_admin(respond, host, port, sock=sock)


async def serve_admin(respond: Callable[[str], Awaitable[tuple[str, str, bytes]]], host: str, port: int,
                      sock: socket.socket | None = None) -> asyncio.Server:  # fmt: skip
    """Serve an admin endpoint whose answers come from ``respond(path)`` (status, type, body):
    GET and HEAD only, one request per connection. aeraki-ctl's admin API is served by it too.
    ``sock``: a listening socket taken over from another process (hot restart) instead of binding."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0][:_MAX_REQUEST_LINE].decode("latin-1")
        parts = line.split()
        method = parts[0] if parts else ""
        path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"  # noqa: PLR2004
        if method in ("GET", "HEAD"):
            status, ctype, body = await respond(path)
        else:
            status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + (body if method != "HEAD" else b"")
        )
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    if sock is not None:
        return await asyncio.start_server(handle, sock=sock)
    return await asyncio.start_server(handle, host, port)


def ready_answer(ready: bool) -> tuple[str, str, bytes]:
    """The answer of ``/ready``."""
    if ready:
        return "200 OK", "text/plain", b"LIVE\n"
    return "503 Service Unavailable", "text/plain", b"NOT READY\n"


def _respond(proxy: Proxy, path: str) -> tuple[str, str, bytes]:
    if path == "/ready":
        if proxy.ready:
            return "200 OK", "text/plain", b"LIVE\n"
        return "503 Service Unavailable", "text/plain", b"NOT READY\n"
    if path == "/stats" or path == "/stats/prometheus":
        return "200 OK", "text/plain; version=0.0.4", proxy.stats_text().encode()
    if path == "/config_dump":
        body = json.dumps(proxy.config_dump(), indent=2, sort_keys=True, default=str)
        return "200 OK", "application/json", body.encode()
    if path == "/":
        return "200 OK", "text/plain", b"/ready\n/stats\n/config_dump\n"
    return "404 Not Found", "text/plain", b"not found\n"
