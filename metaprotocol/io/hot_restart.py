"""Hot restart: a new proxy process takes over the listening sockets of the running one.

Envoy's hot restart (driven by Istio's pilot-agent) adapted to one Python process per
generation. The running proxy listens on a Unix domain socket (``--hot-restart-socket``; a name
starting with ``@`` is in Linux's abstract namespace, anything else is a file path). A new process
started with ``--restart-from PATH`` connects to it and:

1. ``hello``: both sides say their protocol version; a peer of another version is answered with
   ``error`` and the connection closes. Each side checks the other's uid (``SO_PEERCRED``): only
   the same user may hand sockets over.
2. ``sockets``: the old process answers with every listening socket it holds (listener name,
   kind ``listener`` or ``admin``, address, port) and their file descriptors (``SCM_RIGHTS``), in
   batches of at most :data:`FDS_PER_FRAME`. The new process starts serving on them: no rebind,
   so no connection is refused in between, and connections waiting in the accept queue are
   accepted by whichever process takes them first.
3. ``drain``: the old process closes its own hot-restart socket (the new one binds the same name
   next), answers ``draining``, stops accepting (closes its copies of the listening sockets and its
   admin endpoint), keeps serving its connections for :func:`grace_period` (requests already sent
   on them are read) and drains as on SIGTERM: requests in flight are answered (within its
   ``--drain-timeout``), then it exits.

Frames are a 4-byte big-endian length and a JSON object with ``"v": VERSION`` and ``"type"``; the
file descriptors of a ``sockets`` answer ride on its frame. Each request gets exactly one answer,
so descriptors never straddle two frames. Counters are not handed over: the new process starts
them at zero (Prometheus' ``rate()`` treats it as a counter reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metaprotocol.config.model import ListenerConfig
    from metaprotocol.io.proxy import Proxy

log = logging.getLogger(__name__)

VERSION = 1
GRACE = 1.0  # seconds a process taken over keeps reading from its connections before it drains
FDS_PER_FRAME = 200  # below the kernel's SCM_MAX_FD (253)
MAX_FRAME = 1 << 20
TIMEOUT = 10.0
_HEAD = struct.Struct("!I")
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def grace_period(drain_timeout: float) -> float:
    """How long a process that was taken over keeps serving the connections it accepted, after
    it stopped accepting and before it drains (a drain stops reading): a request sent on a
    connection it accepted last is read, not cut off. Taken out of the drain timeout."""
    return min(GRACE, drain_timeout / 2)


class HotRestartError(Exception):
    """The peer refused, spoke another version, belongs to another user, or broke the protocol."""


def default_path(admin_port: int | None) -> str | None:
    """The hot-restart socket of a proxy whose admin endpoint is on ``admin_port``: one per admin
    port, as a port identifies one proxy on a host (Envoy derives its socket from ``--base-id``)."""
    return f"@metaprotocol-hot-restart-{admin_port}" if admin_port else None


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


@dataclass(frozen=True)
class Listening:
    """One listening socket as the old process announces it (``fd`` is its own descriptor)."""

    name: str
    kind: str  # "listener" or "admin"
    address: str
    port: int
    fd: int


@dataclass
class Handed:
    """One listening socket received by the new process."""

    name: str
    kind: str
    address: str
    port: int
    sock: socket.socket


# -- framing ---------------------------------------------------------------------------------------


def send_frame(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps({"v": VERSION, **message}).encode()
    frame = _HEAD.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [frame], list(fds))
        if sent < len(frame):
            sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One frame and the descriptors that came with it."""
    buf = b""
    fds: list[int] = []
    need = _HEAD.size
    while len(buf) < need:
        data, more, _, _ = socket.recv_fds(sock, max(need - len(buf), 1), FDS_PER_FRAME)
        fds.extend(more)
        if not data:
            for fd in fds:
                os.close(fd)
            raise HotRestartError("the peer closed the connection")
        buf += data
        if need == _HEAD.size and len(buf) >= need:
            need += _HEAD.unpack(buf[: _HEAD.size])[0]
            if need > MAX_FRAME:
                raise HotRestartError(f"frame of {need} bytes")
    try:
        message = json.loads(buf[_HEAD.size :])
        if not isinstance(message, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        raise HotRestartError(f"malformed frame: {exc}") from exc
    return message, fds


def _check_peer(sock: socket.socket) -> int:
    """The peer's pid, once its uid is ours (``SO_PEERCRED``)."""
    pid, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    if uid != os.geteuid():
        raise HotRestartError(f"peer pid {pid} runs as uid {uid}, not {os.geteuid()}")
    return int(pid)


def _check_version(message: dict[str, Any]) -> None:
    if message.get("v") != VERSION:
        raise HotRestartError(f"peer speaks hot-restart protocol version {message.get('v')!r}, this process {VERSION}")
    if message.get("type") == "error":
        raise HotRestartError(f"refused by the peer: {message.get('reason')}")


# -- the running (old) process ------------------------------------------------------------------------


def proxy_listening(proxy: Proxy) -> list[Listening]:
    """The listening sockets of a single-process proxy (its listeners and admin endpoint)."""
    out = []
    for name, server in proxy.servers.items():
        ctx = proxy.contexts.get(name)
        for s in server.sockets:
            address = ctx.config.address if ctx is not None else str(s.getsockname()[0])
            out.append(Listening(name, "listener", address, int(s.getsockname()[1]), s.fileno()))
    if proxy.admin_server is not None and proxy.bootstrap.admin is not None:
        for s in proxy.admin_server.sockets:
            out.append(Listening("admin", "admin", proxy.bootstrap.admin.address, int(s.getsockname()[1]), s.fileno()))
    return out


class HotRestartServer:
    """The running process's end: hands its listening sockets to a new process, then drains.

    ``listening()`` lists the sockets to hand over (called on the event loop); ``on_drain()``
    stops accepting and starts the drain (the process exits when it is done)."""

    def __init__(self, path: str, listening: Callable[[], list[Listening]], on_drain: Callable[[], None],
                 drain_timeout: float = 10.0) -> None:  # fmt: skip
        self.path = path
        self.listening = listening
        self.on_drain = on_drain
        self.drain_timeout = drain_timeout
        self.sock: socket.socket | None = None
        self.draining = False
        self._task: asyncio.Future[None] | None = None
        self._conns: set[socket.socket] = set()

    async def start(self) -> None:
        """Listen on ``path``; a stale socket file (nobody answering) is replaced.

        Raises:
            OSError: the name is in use by a live process (or cannot be bound).
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address = _address(self.path)
        try:
            sock.bind(address)
        except OSError:
            if address.startswith("\0") or not _stale(address):
                sock.close()
                raise
            os.unlink(address)
            sock.bind(address)
        if not address.startswith("\0"):
            os.chmod(address, 0o600)
        sock.listen(4)
        sock.setblocking(False)
        self.sock = sock
        self._task = asyncio.ensure_future(self._serve(sock))
        log.info("hot restart: a new process can take over with --restart-from %s", self.path)

    def close(self) -> None:
        """Stop taking hot-restart connections and end the ones open (the process stops)."""
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the listening socket is closed once its accept is withdrawn
            self._task.add_done_callback(lambda _: self._unlisten())
        else:
            self._unlisten()

    def _unlisten(self) -> None:
        """Free the name for the next process."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            if not self.path.startswith("@"):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return
            conn.setblocking(True)
            conn.settimeout(TIMEOUT)
            self._conns.add(conn)
            try:
                await self._converse(conn)
            except (HotRestartError, OSError) as exc:
                log.warning("hot restart: %s", exc)
            finally:
                self._conns.discard(conn)
                conn.close()
            if self.draining:
                return

    async def _converse(self, conn: socket.socket) -> None:
        """One new process's requests, answered in order until it asks for the drain or leaves."""
        loop = asyncio.get_running_loop()
        pid = _check_peer(conn)
        while True:
            message, fds = await loop.run_in_executor(None, recv_frame, conn)
            for fd in fds:  # a client sends none
                os.close(fd)
            if message.get("v") != VERSION:
                reason = f"this process speaks hot-restart protocol version {VERSION}, not {message.get('v')!r}"
                await loop.run_in_executor(None, send_frame, conn, {"type": "error", "reason": reason})
                raise HotRestartError(f"refused pid {pid}: {reason}")
            kind = message.get("type")
            if kind == "hello":
                answer: dict[str, Any] = {"type": "hello", "pid": os.getpid()}
                await loop.run_in_executor(None, send_frame, conn, answer)
            elif kind == "sockets":
                start = int(message.get("from", 0))
                every = self.listening()
                batch = every[start : start + FDS_PER_FRAME]
                answer = {"type": "sockets", "total": len(every),
                          "sockets": [{"name": s.name, "kind": s.kind, "address": s.address, "port": s.port} for s in batch]}  # fmt: skip
                await loop.run_in_executor(None, send_frame, conn, answer, [s.fd for s in batch])
                if start == 0:
                    log.info("hot restart: handing %d listening sockets to pid %d", len(every), pid)
            elif kind == "drain":
                self.draining = True
                self._unlisten()  # the new process takes this name next
                log.info("hot restart: pid %d took over; draining (up to %.1fs)", pid, self.drain_timeout)
                try:
                    await loop.run_in_executor(None, send_frame, conn, {"type": "draining", "pid": os.getpid(), "drain_timeout": self.drain_timeout})
                finally:
                    self.on_drain()
                return
            else:
                await loop.run_in_executor(None, send_frame, conn, {"type": "error", "reason": f"unknown request {kind!r}"})


def _stale(path: str) -> bool:
    """A socket file nobody accepts on (left by a process that was killed)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


# -- the new process ------------------------------------------------------------------------------------


@dataclass
class Handover:
    """The sockets taken from the running process, and the connection to tell it to drain."""

    conn: socket.socket
    old_pid: int
    sockets: list[Handed] = field(default_factory=list)

    def claim(self, listeners: Sequence[ListenerConfig]) -> dict[str, list[socket.socket]]:
        """Take the sockets of ``listeners``: same name and address, and the same port or port 0
        (any); else the same address and port under another name. Each socket is claimed once."""
        out: dict[str, list[socket.socket]] = {}
        for lst in listeners:
            mine = [h for h in self.sockets if h.kind == "listener" and h.name == lst.name and h.address == lst.address and lst.port in (0, h.port)]
            if not mine and lst.port != 0:
                mine = [h for h in self.sockets if h.kind == "listener" and (h.address, h.port) == (lst.address, lst.port)]
            if mine:
                out[lst.name] = [h.sock for h in mine]
                self.sockets = [h for h in self.sockets if h not in mine]
        return out

    def claim_admin(self, address: str, port: int) -> socket.socket | None:
        """The admin endpoint's socket when the new one is on the same address and port (or 0)."""
        for h in self.sockets:
            if h.kind == "admin" and h.address == address and port in (0, h.port):
                self.sockets.remove(h)
                return h.sock
        return None

    def pending(self) -> list[str]:
        """Listeners whose sockets nobody claimed yet."""
        return [h.name for h in self.sockets if h.kind == "listener"]

    def drain(self) -> float:
        """Tell the old process to stop accepting and drain; its drain timeout. Sockets nobody
        claimed are closed here (the old process closes its copies: they stop listening)."""
        try:
            send_frame(self.conn, {"type": "drain"})
            message, fds = recv_frame(self.conn)
            for fd in fds:
                os.close(fd)
            _check_version(message)
            if message.get("type") != "draining":
                raise HotRestartError(f"expected draining, got {message.get('type')!r}")
            return float(message.get("drain_timeout", 0.0))
        finally:
            self.close()

    def close(self) -> None:
        for h in self.sockets:
            h.sock.close()
        self.sockets = []
        self.conn.close()


def take_over(path: str, timeout: float = TIMEOUT) -> Handover:
    """Connect to the running process at ``path`` and receive its listening sockets (blocking).

    Raises:
        FileNotFoundError, ConnectionRefusedError: nothing runs there.
        HotRestartError: the peer refused, speaks another version or is another user.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        conn.connect(_address(path))
        _check_peer(conn)
        send_frame(conn, {"type": "hello", "pid": os.getpid()})
        hello, fds = recv_frame(conn)
        for fd in fds:
            os.close(fd)
        _check_version(hello)
        handover = Handover(conn, int(hello.get("pid", 0)))
        total = 1
        while len(handover.sockets) < total:
            send_frame(conn, {"type": "sockets", "from": len(handover.sockets)})
            answer, fds = recv_frame(conn)
            socks = [socket.socket(fileno=fd) for fd in fds]
            handover.sockets.extend(
                Handed(str(d["name"]), str(d["kind"]), str(d["address"]), int(d["port"]), s)
                for d, s in zip(answer.get("sockets", []), socks, strict=False)
            )
            for s in socks[len(answer.get("sockets", [])) :]:
                s.close()
            _check_version(answer)
            total = int(answer.get("total", 0))
            if not fds and len(handover.sockets) < total:
                raise HotRestartError("the peer announced sockets it did not send")
    except BaseException:
        conn.close()
        raise
    log.info("hot restart: took %d listening sockets from pid %d", len(handover.sockets), handover.old_pid)
    return handover


# -- the single-process proxy's steps (metaprotocol.cli) ----------------------------------------------------


async def connect(path: str) -> Handover | None:
    """:func:`take_over` off the event loop; None when nothing runs at ``path`` (a first start).

    Raises:
        HotRestartError: the running process refused, or the exchange failed.
    """
    try:
        return await asyncio.to_thread(take_over, path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        log.warning("hot restart: nothing runs at %s (%s): starting afresh", path, exc)
        return None
    except OSError as exc:
        raise HotRestartError(f"cannot take over from {path}: {exc}") from exc


async def inherit(proxy: Proxy, path: str, *, dynamic: bool = False) -> Handover | None:
    """Before ``proxy.start()``: take the sockets of the process at ``path`` and give the proxy
    those of its listeners and admin endpoint. ``dynamic`` (xDS): listeners still to come get the
    socket of the same name when they arrive. None when nothing runs at ``path`` (a first start).

    Raises:
        HotRestartError: the running process refused (another version or user).
    """
    handover = await connect(path)
    if handover is None:
        return None
    for name, socks in handover.claim(proxy.bootstrap.listeners).items():
        proxy.inherited[name] = socks[0]
        for extra in socks[1:]:
            log.warning("hot restart: listener %s came with %d sockets, one process serves one", name, len(socks))
            extra.close()
    if dynamic:
        for h in [h for h in handover.sockets if h.kind == "listener" and h.name not in proxy.inherited]:
            proxy.inherited[h.name] = h.sock
            handover.sockets.remove(h)
    admin = proxy.bootstrap.admin
    if admin is not None:
        proxy.inherited_admin = handover.claim_admin(admin.address, admin.port)
    return handover


async def complete(proxy: Proxy, handover: Handover, wait: float = 0.0) -> None:
    """After ``proxy.start()``: wait up to ``wait`` seconds for listeners still to come (xDS) to
    claim their sockets, then tell the old process to drain. Sockets left unclaimed are closed."""
    await finish(handover, lambda: bool(proxy.inherited), wait)
    for sock in proxy.inherited.values():
        sock.close()
    proxy.inherited.clear()
    if proxy.inherited_admin is not None:
        proxy.inherited_admin.close()
        proxy.inherited_admin = None


async def finish(handover: Handover, waiting: Callable[[], bool], wait: float = 0.0) -> None:
    """Wait up to ``wait`` seconds while ``waiting()`` (sockets still to be claimed), then tell
    the old process to drain (a failure is logged: both serve until it is stopped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while waiting() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    try:
        timeout = await asyncio.to_thread(handover.drain)
        log.info("hot restart: pid %d is draining (up to %.1fs)", handover.old_pid, timeout)
    except (HotRestartError, OSError) as exc:
        log.error("hot restart: pid %d did not start draining: %s", handover.old_pid, exc)


async def serve_restarts(path: str | None, listening: Callable[[], list[Listening]], on_drain: Callable[[], None],
                         drain_timeout: float) -> HotRestartServer | None:  # fmt: skip
    """Listen for the next process at ``path`` (None: hot restart off); a failure is logged, the
    proxy serves on without it."""
    if not path:
        return None
    server = HotRestartServer(path, listening, on_drain, drain_timeout)
    try:
        await server.start()
    except OSError as exc:
        log.error("hot restart: cannot listen on %s (%s): a new process cannot take over from this one", path, exc)
        return None
    return server


__all__ = ["FDS_PER_FRAME", "Handed", "Handover", "HotRestartError", "HotRestartServer", "Listening", "complete", "connect", "default_path", "finish", "inherit", "proxy_listening", "recv_frame", "send_frame", "serve_restarts", "take_over"]
