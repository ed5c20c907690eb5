"""The validating admission webhook: ``AdmissionReview`` (``admission.k8s.io/v1``) at ``/validate``.

The API server POSTs an ``AdmissionReview`` whose ``request`` carries the object being created or
updated; the answer is an ``AdmissionReview`` whose ``response`` echoes the request's ``uid`` and
says ``allowed``. The object is judged by :func:`aeraki_ctl.validation.validate_object`, the same
checks as ``aeraki-ctl validate``, alone or in the context of the objects the controller sees
(what it refers to is never required to exist: placeholders stand in for it).

A refusal carries a ``metav1.Status``: ``code`` 422 and ``reason`` ``Invalid``, the code and reason
the API server itself answers with for an object that fails validation (its OpenAPI schema or a
built-in type's checks; ``StatusReasonInvalid`` in ``k8s.io/apimachinery``), not 403 (Forbidden:
who is asking may not do it), nor 400 (a request that cannot be read). ``message`` lists every
problem as ``path: reason``; ``details.causes`` has one cause per problem (``field``, ``message``,
``reason`` ``FieldValueInvalid``). Warnings go to ``response.warnings`` (kubectl prints them).

HTTP/1.1 over TLS on asyncio streams (no web framework), keep-alive (the API server reuses its
connections); ALPN offers ``http/1.1`` only, so the API server does not speak HTTP/2 to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aeraki_ctl.resources import ResourceSet
from aeraki_ctl.validation import Verdict, validate_object

log = logging.getLogger(__name__)
PATH: Final = "/validate"
API_VERSION: Final = "admission.k8s.io/v1"
INVALID_CODE: Final = 422
_READ_TIMEOUT: Final = 30.0
_MAX_HEAD: Final = 16384
_MAX_BODY: Final = 8 * 1024 * 1024  # the API server's own request limit is 3 MiB per object
_MAX_WARNING: Final = 240  # the API server truncates longer warnings; keep them readable
ContextProvider = Callable[[], Awaitable[ResourceSet]]


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2 or later) from a PEM certificate chain and key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def review(document: object, context: ResourceSet | None = None) -> dict[str, object]:
    """The ``AdmissionReview`` answering ``document`` (an ``AdmissionReview`` with a request).

    Raises:
        ValueError: ``document`` is not an AdmissionReview with a request and a uid.
    """
    if not isinstance(document, Mapping) or document.get("kind") != "AdmissionReview":
        raise ValueError("not an AdmissionReview")
    request = document.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ValueError("an AdmissionReview needs request.uid")
    api_version = document.get("apiVersion") if isinstance(document.get("apiVersion"), str) else API_VERSION
    response: dict[str, object] = {"uid": request["uid"], "allowed": True}
    obj = request.get("object")
    if request.get("operation") in ("CREATE", "UPDATE") and isinstance(obj, Mapping):
        verdict = validate_object(_named(obj, request), context)
        response.update(answer(verdict))
    return {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}


def answer(verdict: Verdict) -> dict[str, object]:
    """``allowed``, ``status`` and ``warnings`` of an admission response for ``verdict``."""
    out: dict[str, object] = {"allowed": verdict.allowed}
    if verdict.warnings:
        out["warnings"] = [_short(_line(p.path, p.reason)) for p in verdict.warnings]
    if not verdict.allowed:
        errors = verdict.errors
        lines = [_line(p.path, p.reason) for p in errors]
        out["status"] = {
            "status": "Failure",
            "code": INVALID_CODE,
            "reason": "Invalid",
            "message": f"{verdict.ref}: {len(errors)} problem(s): " + "; ".join(lines),
            "details": {"causes": [{"reason": "FieldValueInvalid", "field": p.path, "message": p.reason} for p in errors]},
        }
    return out


def _line(path: str, reason: str) -> str:
    return f"{path}: {reason}" if path else reason


def _short(text: str) -> str:
    return text if len(text) <= _MAX_WARNING else text[: _MAX_WARNING - 3] + "..."


def _named(obj: Mapping[str, object], request: Mapping[str, object]) -> dict[str, object]:
    """``obj`` with the request's name and namespace when its metadata lacks them (generateName;
    a namespaced object created without metadata.namespace)."""
    out = dict(obj)
    meta = dict(obj["metadata"]) if isinstance(obj.get("metadata"), Mapping) else {}  # type: ignore[call-overload]
    for key in ("name", "namespace"):
        if not meta.get(key) and isinstance(request.get(key), str) and request[key]:
            meta[key] = request[key]
    out["metadata"] = meta
    return out


async def _no_context() -> ResourceSet:
    return ResourceSet()


class WebhookServer:
    """The webhook over HTTPS. ``context`` gives the objects a request is judged beside (by
    default none: each object alone)."""

    def __init__(self, tls: ssl.SSLContext, context: ContextProvider = _no_context) -> None:
        self.tls = tls
        self.context = context
        self.server: asyncio.Server | None = None
        self.reviews = 0
        self.refused = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any); returns the bound port."""
        self.server = await asyncio.start_server(self._handle, host, port, ssl=self.tls)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; whether the connection stays open."""
        async with asyncio.timeout(_READ_TIMEOUT):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    return False  # the client closed between requests
                raise
            if len(head) > _MAX_HEAD:
                await _send(writer, "431 Request Header Fields Too Large", {"error": "headers too large"}, close=True)
                return False
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0") or 0) if headers.get("content-length", "0").isdigit() else -1
            if length < 0 or length > _MAX_BODY or "chunked" in headers.get("transfer-encoding", "").lower():
                await _send(writer, "411 Length Required", {"error": "a Content-Length up to 8 MiB is required"}, close=True)
                return False
            body = await reader.readexactly(length)
        keep = headers.get("connection", "").lower() != "close" and (parts[2:3] == ["HTTP/1.1"])
        method = parts[0] if parts else ""
        path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
        if path != PATH:
            await _send(writer, "404 Not Found", {"error": f"not found; the webhook is at {PATH}"}, close=not keep)
        elif method != "POST":
            await _send(writer, "405 Method Not Allowed", {"error": "POST an AdmissionReview"}, close=not keep)
        else:
            status, answer_ = await self._review(body)
            await _send(writer, status, answer_, close=not keep)
        return keep

    async def _review(self, body: bytes) -> tuple[str, dict[str, object]]:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return "400 Bad Request", {"error": f"not JSON: {exc}"}
        try:
            context = await self.context()
        except Exception:  # noqa: BLE001 - judge the object alone rather than fail the request
            log.exception("the webhook's context could not be read; validating the object alone")
            context = ResourceSet()
        try:
            out = review(document, context)
        except ValueError as exc:
            return "400 Bad Request", {"error": str(exc)}
        self.reviews += 1
        response = out["response"]
        if isinstance(response, dict) and not response.get("allowed"):
            self.refused += 1
            log.info("refused: %s", response.get("status", {}).get("message", ""))
        return "200 OK", out


async def _send(writer: asyncio.StreamWriter, status: str, body: Mapping[str, object], close: bool) -> None:
    data = json.dumps(body, sort_keys=True).encode()
    connection = "close" if close else "keep-alive"
    writer.write(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: {connection}\r\n\r\n".encode() + data)
    await writer.drain()
