"""A small asyncio Dubbo provider and consumer on the project's Dubbo codec.

    provider = DubboProvider()
    provider.expose("org.apache.dubbo.samples.basic.api.DemoService", "sayHello",
                    lambda name: f"Hello {name}", version="1.0.0", param_types="Ljava/lang/String;")
    await provider.start()
    async with DubboConsumer("127.0.0.1", provider.port) as consumer:
        await consumer.call("org.apache.dubbo.samples.basic.api.DemoService", "sayHello", ["world"],
                            version="1.0.0", attachments={"foo": "bar"})

Many calls run concurrently over one connection (multiplexed by request id); heartbeats are
answered both ways; a Java exception comes back as ``RemoteException`` with the JavaObject.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from metaprotocol.spi import Message, MessageType, ReadBuffer
from metaprotocol_codecs.dubbo import DubboCodecFactory, JavaObject, Long, wire

log = logging.getLogger(__name__)
Handler = Callable[..., Any]


class DubboError(Exception):
    """A non-OK response status (SERVICE_NOT_FOUND, SERVER_TIMEOUT ...) or a local failure."""

    def __init__(self, status: int, message: str | None) -> None:
        super().__init__(f"{wire.STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


class RemoteException(Exception):  # noqa: N818 - the name Dubbo users know
    """The provider's method threw: ``exception`` is the Java exception object."""

    def __init__(self, exception: Any, attachments: dict[str, Any]) -> None:
        detail = exception.fields.get("detailMessage") if isinstance(exception, JavaObject) else exception
        name = exception.class_name if isinstance(exception, JavaObject) else "exception"
        super().__init__(f"{name}: {detail}")
        self.exception = exception
        self.attachments = attachments


@dataclass
class Call:
    """What a handler may want to know about the call it serves."""

    invocation: wire.Invocation
    provider: str


def descriptor(args: Sequence[Any]) -> str:
    """A JVM parameter descriptor guessed from Python arguments."""
    out = []
    for a in args:
        if isinstance(a, bool):
            out.append("Z")
        elif isinstance(a, Long):
            out.append("J")
        elif isinstance(a, int):
            out.append("I")
        elif isinstance(a, float):
            out.append("D")
        elif isinstance(a, str) or a is None:
            out.append("Ljava/lang/String;")
        elif isinstance(a, bytes):
            out.append("[B")
        elif isinstance(a, list | tuple):
            out.append("Ljava/util/List;")
        elif isinstance(a, dict):
            out.append("Ljava/util/Map;")
        elif isinstance(a, JavaObject):
            out.append(f"L{a.class_name.replace('.', '/')};")
        else:
            out.append("Ljava/lang/Object;")
    return "".join(out)


def java_exception(message: str, class_name: str = "java.lang.RuntimeException") -> JavaObject:
    """A Java exception object as Dubbo providers send it."""
    exc = JavaObject(class_name, {"detailMessage": message, "cause": None, "stackTrace": [], "suppressedExceptions": []})
    exc.fields["cause"] = exc  # Java writes a missing cause as a reference to the exception itself
    return exc


class _ProviderProtocol(asyncio.Protocol):
    def __init__(self, provider: DubboProvider) -> None:
        self.provider = provider
        self.codec = DubboCodecFactory({"payload_limit": provider.payload_limit}).server_codec()
        self.buffer = ReadBuffer()
        self.transport: asyncio.Transport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.provider.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.provider.connections.discard(self)
        for t in self.tasks:
            t.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer.feed(data)
        try:
            while isinstance(msg := self.codec.decode(self.buffer), Message):
                if msg.type is MessageType.HEARTBEAT:
                    self.provider.heartbeats += 1
                    self._write(self.codec.heartbeat_reply(msg))
                elif msg.type in (MessageType.REQUEST, MessageType.ONEWAY):
                    task = asyncio.get_running_loop().create_task(self._serve(msg.raw, msg.type is MessageType.ONEWAY))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        except Exception:  # noqa: BLE001 - a broken client must not take the provider down
            log.exception("bad frame from a consumer; closing")
            if self.transport:
                self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _serve(self, raw: bytes | bytearray, oneway: bool) -> None:
        rid = wire.HEADER.unpack_from(raw)[3]
        try:
            inv = wire.parse_invocation(raw)
        except ValueError as exc:
            self._write(wire.build_response(rid, wire.Result(status=wire.BAD_REQUEST, message=f"Decode rpc invocation failed: {exc}")))
            return
        result = await self.provider.invoke(inv)
        if not oneway:
            self._write(wire.build_response(rid, result))


class DubboProvider:
    """Serves exposed Python callables over dubbo:// on a loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "provider", payload_limit: int = wire.DEFAULT_PAYLOAD_LIMIT) -> None:
        self.host = host
        self.requested_port = port
        self.name = name
        self.payload_limit = payload_limit
        self.services: dict[tuple[str, str | None, str | None, str], tuple[Handler, str | None]] = {}
        self.server: asyncio.Server | None = None
        self.connections: set[_ProviderProtocol] = set()
        self.calls: list[wire.Invocation] = []
        self.heartbeats = 0

    def expose(self, interface: str, method: str, handler: Handler, *, version: str | None = None, group: str | None = None, param_types: str | None = None) -> None:
        """Serve ``interface.method`` (of ``version``/``group``) with ``handler(*args)``.

        A handler that takes a keyword ``call`` receives the Call (attachments, etc.).
        """
        self.services[(interface, version, group, method)] = (handler, param_types)

    async def invoke(self, inv: wire.Invocation) -> wire.Result:
        """Run the handler for an invocation and make its result."""
        self.calls.append(inv)
        version = inv.version or inv.attachments.get("version")
        if version == wire.NO_VERSION:
            version = None
        group = inv.attachments.get("group")
        entry = self.services.get((inv.path, version, group, inv.method)) or self.services.get((inv.path, None, None, inv.method))
        attachments = {"dubbo": wire.DUBBO_VERSION} if inv.dubbo_version >= wire.DUBBO_VERSION else {}
        if entry is None:
            return wire.Result(status=wire.SERVICE_NOT_FOUND, message=f"Not found exported service: {inv.path}:{version}, may be version or group mismatch, method: {inv.method}")
        handler, _ = entry
        try:
            kwargs = {"call": Call(inv, self.name)} if "call" in inspect.signature(handler).parameters else {}
            value = handler(*inv.args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:  # noqa: BLE001 - becomes the Java exception of the response
            return wire.Result(exception=java_exception(str(exc)), attachments=attachments)
        return wire.Result(value=value, attachments=attachments)

    async def start(self) -> None:
        """Listen."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ProviderProtocol(self), self.host, self.requested_port)

    @property
    def port(self) -> int:
        """The bound port."""
        assert self.server is not None  # noqa: S101
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop connections."""
        if self.server is not None:
            self.server.close()
        for c in list(self.connections):
            if c.transport:
                c.transport.close()
        if self.server is not None:
            await self.server.wait_closed()


class _ConsumerProtocol(asyncio.Protocol):
    def __init__(self, consumer: DubboConsumer) -> None:
        self.consumer = consumer
        self.codec = DubboCodecFactory().client_codec()
        self.buffer = ReadBuffer()

    def data_received(self, data: bytes) -> None:
        self.buffer.feed(data)
        try:
            while isinstance(msg := self.codec.decode(self.buffer), Message):
                if msg.type is MessageType.EVENT:
                    answer = self.codec.answer_event(msg)
                    if answer and self.consumer.transport is not None:
                        self.consumer.transport.write(answer)
                    waiter = self.consumer.pending.pop(msg.request_id or 0, None)  # a heartbeat reply
                    if waiter is not None and not waiter.done():
                        waiter.set_result(msg.raw)
                    continue
                waiter = self.consumer.pending.pop(msg.request_id or 0, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(msg.raw)
        except Exception as exc:  # noqa: BLE001
            self.consumer._fail_all(exc)
            if self.consumer.transport:
                self.consumer.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.consumer._fail_all(ConnectionResetError("connection closed"))


class DubboConsumer:
    """Calls a Dubbo provider (or a proxy) over one long-lived connection."""

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, application: str = "metaprotocol-consumer") -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.application = application
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[bytes | bytearray]] = {}
        self._ids = itertools.count(1)

    async def connect(self) -> DubboConsumer:
        """Open the connection."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: _ConsumerProtocol(self), self.host, self.port)
        return self

    async def __aenter__(self) -> DubboConsumer:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection."""
        if self.transport is not None:
            self.transport.close()
            await asyncio.sleep(0)

    def _fail_all(self, exc: BaseException) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()

    async def _roundtrip(self, rid: int, frame: bytes, timeout: float | None) -> bytes | bytearray:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("not connected")
        fut: asyncio.Future[bytes | bytearray] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        self.transport.write(frame)
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout)
        except TimeoutError:
            self.pending.pop(rid, None)
            raise DubboError(wire.CLIENT_TIMEOUT, f"no response within {timeout or self.timeout}s") from None

    async def call(self, interface: str, method: str, args: Sequence[Any] = (), **options: Any) -> Any:
        """Invoke a method (options as for ``invoke``); returns its value, raises
        RemoteException or DubboError."""
        result = await self.invoke(interface, method, args, **options)
        if result is None:
            return None
        if result.status != wire.OK:
            raise DubboError(result.status, result.message)
        if result.exception is not None:
            raise RemoteException(result.exception, result.attachments)
        return result.value

    async def invoke(
        self,
        interface: str,
        method: str,
        args: Sequence[Any] = (),
        *,
        param_types: str | None = None,
        version: str | None = None,
        group: str | None = None,
        attachments: dict[str, Any] | None = None,
        timeout: float | None = None,
        oneway: bool = False,
    ) -> wire.Result | None:
        """Invoke a method and return the whole Result (value, attachments, status)."""
        rid = next(self._ids)
        att: dict[str, Any] = {"path": interface, "interface": interface, "timeout": int((timeout or self.timeout) * 1000), "application": self.application}
        if version:
            att["version"] = version
        if group:
            att["group"] = group
        att.update(attachments or {})
        # Dubbo's "no version" is "0.0.0": Envoy's dubbo_proxy refuses a null service version.
        inv = wire.Invocation(interface, method, descriptor(args) if param_types is None else param_types, list(args), att, version or wire.NO_VERSION)
        frame = wire.build_request(rid, inv, two_way=not oneway)
        if oneway:
            assert self.transport is not None  # noqa: S101
            self.transport.write(frame)
            return None
        return wire.parse_result(await self._roundtrip(rid, frame, timeout))

    async def heartbeat(self, timeout: float | None = None) -> bool:
        """Send a heartbeat and wait for its reply."""
        rid = next(self._ids)
        raw = await self._roundtrip(rid, wire.build_heartbeat(rid), timeout)
        return bool(raw[2] & wire.FLAG_EVENT)


