"""Worker processes: ``metaprotocol proxy --concurrency N``.

A parent process (the supervisor) holds the one configuration, the admin endpoint and every
listening socket: per listener N sockets bound with ``SO_REUSEPORT`` to one port (port 0 resolved by
the first), listening from the start, worker i serving socket i, so the kernel spreads new
connections across the workers and a socket's accept queue outlives a worker that exits. N worker
processes each run a :class:`~metaprotocol.io.proxy.Proxy` (one event loop) on the sockets they are
handed. The parent talks to each worker over its stdin/stdout pipes (length-prefixed pickles,
parent and worker are the same code) and hands it sockets over a Unix socket pair (``SCM_RIGHTS``,
:mod:`metaprotocol.io.hot_restart` frames), sent just before the pipe message that names them:

- ``("start", bootstrap, names)`` -> ``("ok", {listener: port})`` or ``("error", reason)``
- ``("apply", bootstrap, names)`` -> ``("ok", unbound)`` or ``("error", reason)`` (xDS: one stream
  in the parent, each accepted configuration handed to every worker; a worker's failure NACKs it)
- ``("stats",)`` -> ``("ok", prometheus_text)`` (the parent sums them per label set)
- ``("stop_accepting",)`` -> ``("ok", None)`` (hot restart: the next generation serves the sockets)

A worker that exits is restarted with the current configuration and the same sockets (back-off
0.1 s doubling to 5 s, reset after 10 s of life). SIGTERM or SIGINT: every worker drains; the
parent exits 0 once all of them exited 0. A worker whose parent is gone (its stdin closes) drains
and exits. Hot restart (``--restart-from``): a new parent takes this parent's sockets over and
hands them to its own workers; this parent then drains its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import Bootstrap, ListenerConfig
from metaprotocol.io import hot_restart
from metaprotocol.io.admin import ready_answer, serve_admin
from metaprotocol.io.proxy import Proxy, bootstrap_dump, build_factories
from metaprotocol.registry import CodecRegistry

if TYPE_CHECKING:
    from metaprotocol.xds.status import XdsStatus

log = logging.getLogger(__name__)
_HEAD = struct.Struct("!I")
CALL_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 0.1, 5.0, 10.0


class WorkerGone(Exception):
    """The worker exited (or stopped answering) during a call."""


async def _read(reader: asyncio.StreamReader) -> Any:  # noqa: ANN401 - a message is any pickled tuple
    head = await reader.readexactly(_HEAD.size)
    return pickle.loads(await reader.readexactly(_HEAD.unpack(head)[0]))  # noqa: S301 - our own parent or child, over a private pipe


def _write(writer: asyncio.StreamWriter, message: object) -> None:
    data = pickle.dumps(message)
    writer.write(_HEAD.pack(len(data)) + data)


@dataclass
class _Held:
    """What the ADS client reads of a listener the workers serve (its configuration)."""

    config: ListenerConfig


@dataclass
class _Bound:
    """The listening sockets of one listener, held by the parent: worker i serves ``socks[i % len]``."""

    address: str
    port: int
    socks: list[socket.socket]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def _listen(address: str, port: int, count: int) -> _Bound:
    """``count`` listening ``SO_REUSEPORT`` sockets on one port of ``address`` (port 0: the first
    one's)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            port = int(sock.getsockname()[1])
            sock.listen(1024)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return _Bound(address, port, socks)


def _share(bound: Mapping[str, _Bound], w: Worker) -> dict[str, socket.socket]:
    """The socket of each listener that worker ``w`` serves."""
    return {name: held.socks[w.index % len(held.socks)] for name, held in bound.items()}


class Worker:
    """One worker process as the parent sees it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: socket.socket | None = None  # the parent's end of the socket pair that carries listening sockets
        self.restarts = 0
        self.started_at = 0.0
        self.up = False
        self.lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def call(self, message: tuple[object, ...], timeout: float = CALL_TIMEOUT,
                   sockets: Mapping[str, socket.socket] | None = None) -> tuple[str, Any]:  # fmt: skip
        """Send one command (with ``sockets`` first over the socket pair, the message naming
        them) and read its answer."""
        async with self.lock:
            proc = self.proc
            if proc is None or proc.stdin is None or proc.stdout is None or proc.returncode is not None:
                raise WorkerGone(f"worker {self.index} is not running")
            try:
                if sockets is not None:
                    assert self.channel is not None  # noqa: S101
                    names = list(sockets)
                    message = (*message, names)
                    for at in range(0, len(names), hot_restart.FDS_PER_FRAME):
                        chunk = names[at : at + hot_restart.FDS_PER_FRAME]
                        hot_restart.send_frame(self.channel, {"type": "sockets", "names": chunk}, [sockets[n].fileno() for n in chunk])
                _write(proc.stdin, message)
                await proc.stdin.drain()
                answer: tuple[str, Any] = await asyncio.wait_for(_read(proc.stdout), timeout)
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
                raise WorkerGone(f"worker {self.index}: {exc or type(exc).__name__}") from exc
            return answer


class Supervisor:
    """The parent of N workers: one configuration, the admin endpoint, restarts, drain."""

    def __init__(self, bootstrap: Bootstrap, registry: CodecRegistry, concurrency: int, *, drain_timeout: float = 10.0,
                 worker_args: Sequence[str] = ()) -> None:  # fmt: skip
        self.registry = registry
        self.admin = bootstrap.admin
        self.drain_timeout = drain_timeout
        self.worker_args = list(worker_args)
        self.workers = [Worker(i) for i in range(concurrency)]
        self.xds: XdsStatus | None = None  # set by an ADS client in this process
        self.stats_sources: list[Callable[[], str]] = []  # more /stats text (the identity agent's counters)
        self.ready = False
        self.stopping = False
        self.admin_server: asyncio.Server | None = None
        self.handover: hot_restart.Handover | None = None  # sockets taken from the previous generation
        self._bound: dict[str, _Bound] = {}  # listener -> its listening sockets
        self._config_lock = asyncio.Lock()
        self._keepers: list[asyncio.Task[None]] = []
        self.bootstrap = replace(bootstrap, admin=None)  # ports resolved once bound (start)
        self.contexts: dict[str, _Held] = {lst.name: _Held(lst) for lst in self.bootstrap.listeners}

    # -- listening sockets ----------------------------------------------------------------------

    def _bind(self, bootstrap: Bootstrap, unbound: dict[str, str] | None = None) -> tuple[Bootstrap, dict[str, _Bound]]:
        """``bootstrap`` with every port resolved, and the sockets of its listeners: those held
        for the same name, address and port (or port 0) are kept, the others taken from the
        previous generation (hot restart) or bound here. A listener that cannot bind raises
        OSError, or is left out with its reason in ``unbound`` when given."""
        listeners, bound, fresh = [], {}, []
        try:
            for lst in bootstrap.listeners:
                held = self._bound.get(lst.name)
                if held is None or held.address != lst.address or lst.port not in (0, held.port):
                    held = self._inherited(lst)
                    if held is None:
                        try:
                            held = _listen(lst.address, lst.port, len(self.workers))
                        except OSError as exc:
                            if unbound is None:
                                raise OSError(f"listener {lst.name}: cannot listen on {lst.address}:{lst.port}: {exc}") from exc
                            unbound[lst.name] = f"cannot listen on {lst.address}:{lst.port}: {exc}"
                            continue
                    fresh.append(held)
                bound[lst.name] = held
                listeners.append(replace(lst, port=held.port))
        except OSError:
            for held in fresh:
                held.close()
            raise
        return replace(bootstrap, listeners=tuple(listeners)), bound

    def _inherited(self, lst: ListenerConfig) -> _Bound | None:
        if self.handover is None:
            return None
        socks = self.handover.claim([lst]).get(lst.name)
        if not socks:
            return None
        if len(socks) > len(self.workers):
            log.warning("hot restart: listener %s came with %d sockets for %d workers; closing %d (connections waiting in "
                        "their accept queues are reset)", lst.name, len(socks), len(self.workers), len(socks) - len(self.workers))  # fmt: skip
            for extra in socks[len(self.workers) :]:
                extra.close()
            socks = socks[: len(self.workers)]
        return _Bound(lst.address, int(socks[0].getsockname()[1]), socks)

    @property
    def inherited(self) -> list[str]:
        """Listeners whose sockets, taken over from the previous generation, wait for their
        configuration (xDS; the ADS client does not probe their ports)."""
        return self.handover.pending() if self.handover is not None else []

    async def stop_workers_accepting(self) -> None:
        """Every worker closes its copies of the listening sockets (the next generation serves
        them) and keeps serving its connections until it drains."""
        running = [w for w in self.workers if w.up]
        await asyncio.gather(*(w.call(("stop_accepting",)) for w in running), return_exceptions=True)

    def applying(self) -> bool:
        """A configuration is being handed to the workers."""
        return self._config_lock.locked()

    def _commit(self, bound: dict[str, _Bound]) -> None:
        """Hold ``bound``; close the sockets of listeners gone or replaced."""
        for name, held in self._bound.items():
            if bound.get(name) is not held:
                held.close()
        self._bound = bound


    def listening(self) -> list[hot_restart.Listening]:
        """Every listening socket held here (hot restart hands them to the next generation)."""
        out = [hot_restart.Listening(name, "listener", held.address, held.port, sock.fileno())
               for name, held in self._bound.items() for sock in held.socks]  # fmt: skip
        if self.admin_server is not None and self.admin is not None:
            out += [hot_restart.Listening("admin", "admin", self.admin.address, int(s.getsockname()[1]), s.fileno()) for s in self.admin_server.sockets]
        return out

    def stop_accepting(self) -> None:
        """The admin endpoint stops (the next generation serves it); the workers stop accepting
        when they drain."""
        self.ready = False
        if self.admin_server is not None:
            self.admin_server.close()

    def bound_port(self, listener: str) -> int:
        """The port every worker serves ``listener`` on."""
        return self.contexts[listener].config.port

    def admin_port(self) -> int | None:
        if self.admin_server is None:
            return None
        return int(self.admin_server.sockets[0].getsockname()[1])

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker (each binds every listener) and the admin endpoint.

        Raises:
            OSError: a worker cannot bind (the message says why), or the admin port is taken.
        """
        try:
            self.bootstrap, bound = self._bind(self.bootstrap)
            self._commit(bound)
            self.contexts = {lst.name: _Held(lst) for lst in self.bootstrap.listeners}
            for w in self.workers:
                await self._spawn(w)
            if self.admin is not None:
                sock = self.handover.claim_admin(self.admin.address, self.admin.port) if self.handover is not None else None
                self.admin_server = await serve_admin(self._respond, self.admin.address, self.admin.port, sock=sock)
        except (OSError, WorkerGone):
            await self.drain(1.0)
            raise
        self._keepers = [asyncio.ensure_future(self._keep(w)) for w in self.workers]
        self.ready = True

    async def _spawn(self, w: Worker) -> None:
        async with self._config_lock:
            w.up = False
            if w.channel is not None:
                w.channel.close()
            w.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                w.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "metaprotocol.io.workers", "--index", str(w.index), "--channel", str(theirs.fileno()),
                    *self.worker_args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, pass_fds=(theirs.fileno(),),
                )  # fmt: skip
            finally:
                theirs.close()
            w.started_at = time.monotonic()
            kind, detail = await w.call(("start", self.bootstrap), timeout=30.0, sockets=_share(self._bound, w))
            if kind != "ok":
                raise OSError(f"worker {w.index}: {detail}")
            w.up = True
        log.info("worker %d running (pid %d)", w.index, w.pid)

    async def _keep(self, w: Worker) -> None:
        """Restart ``w`` whenever it exits, with back-off, until the parent stops."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            assert w.proc is not None  # noqa: S101
            code = await w.proc.wait()
            w.up = False
            if self._stopped():
                return
            if time.monotonic() - w.started_at > BACKOFF_RESET:
                delay = BACKOFF_FIRST
            log.warning("worker %d (pid %s) exited with %s; restarting in %.1fs", w.index, w.pid, code, delay)
            await asyncio.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)
            if self._stopped():
                return
            try:
                await self._spawn(w)
                w.restarts += 1
            except (OSError, WorkerGone) as exc:
                log.error("worker %d cannot restart: %s", w.index, exc)
                if w.proc is not None and w.proc.returncode is None:
                    w.proc.kill()

    def _stopped(self) -> bool:
        return self.stopping

    async def drain(self, timeout: float) -> int:
        """Every worker drains (SIGTERM); 0 once all exited 0, 1 otherwise (killed after ``timeout`` + 5 s)."""
        self.stopping = True
        self.ready = False
        for task in self._keepers:
            task.cancel()
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        self._commit({})  # the workers (or the next generation) hold their own copies
        codes: list[int] = []
        for proc in procs:
            try:
                codes.append(await asyncio.wait_for(proc.wait(), timeout + 5.0))
            except TimeoutError:
                proc.kill()
                codes.append(await proc.wait())
        if self.admin_server is not None:
            self.admin_server.close()
        for w in self.workers:
            if w.channel is not None:
                w.channel.close()
        bad = [(w.index, c) for w, c in zip(self.workers, codes, strict=False) if c != 0]
        if bad:
            log.error("workers exited with errors: %s", bad)
        return 1 if bad else 0

    # -- configuration (an ADS client calls apply, as on a Proxy) --------------------------------

    async def apply(self, bootstrap: Bootstrap, unbound: dict[str, str] | None = None) -> None:
        """Hand a new configuration to every worker; raise ConfigError (and put the previous one
        back on the workers that took it) if any worker rejects it."""
        build_factories(bootstrap, self.registry)  # reject what no worker could serve, here
        async with self._config_lock:
            missing: dict[str, str] = {}
            try:
                resolved, bound = self._bind(replace(bootstrap, admin=None), missing if unbound is not None else None)
            except OSError as exc:
                raise ConfigError(bootstrap.source, "listeners", str(exc)) from exc
            previous = self._bound
            answers = await self._broadcast(resolved, bound)
            errors = [f"worker {i}: {detail}" for i, (kind, detail) in answers.items() if kind != "ok"]
            for _, detail in answers.values():
                if isinstance(detail, dict):
                    missing.update(detail)
            if errors or (missing and unbound is None):
                await self._broadcast(self.bootstrap, previous)
                for name, held in bound.items():
                    if previous.get(name) is not held:
                        held.close()
                reason = "; ".join(errors) or "; ".join(f"{k}: {v}" for k, v in missing.items())
                raise ConfigError(bootstrap.source, "workers" if errors else "listeners", reason)
            if missing and unbound is not None:
                unbound.update(missing)
                resolved = replace(resolved, listeners=tuple(lst for lst in resolved.listeners if lst.name not in missing))
                bound = {name: held for name, held in bound.items() if name not in missing}
            self._commit(bound)
            self.bootstrap = resolved
            self.contexts = {lst.name: _Held(lst) for lst in resolved.listeners}

    async def _broadcast(self, bootstrap: Bootstrap, bound: Mapping[str, _Bound]) -> dict[int, tuple[str, Any]]:
        running = [w for w in self.workers if w.up]
        answers = await asyncio.gather(*(w.call(("apply", bootstrap), sockets=_share(bound, w)) for w in running), return_exceptions=True)
        out: dict[int, tuple[str, Any]] = {}
        for w, answer in zip(running, answers, strict=True):
            if isinstance(answer, WorkerGone):
                continue  # it is restarted with the configuration held here
            if isinstance(answer, BaseException):
                raise answer
            out[w.index] = answer
        return out

    # -- admin ----------------------------------------------------------------------------------

    async def _worker_stats(self) -> dict[int, str]:
        running = [w for w in self.workers if w.up]
        answers = await asyncio.gather(*(w.call(("stats",)) for w in running), return_exceptions=True)
        return {w.index: a[1] for w, a in zip(running, answers, strict=True) if isinstance(a, tuple) and a[0] == "ok"}

    async def stats_text(self) -> str:
        """Every worker's counters and gauges summed per label set (histograms bucket-wise), then the
        workers' own: requests served and restarts, labelled by worker."""
        texts = await self._worker_stats()
        out = [merge_prometheus(list(texts.values()))]
        out.append("# HELP metaprotocol_workers Worker processes serving.\n# TYPE metaprotocol_workers gauge\n"
                   f"metaprotocol_workers {sum(w.up for w in self.workers)}\n")  # fmt: skip
        out.append("# HELP metaprotocol_worker_requests_total Requests decoded from downstream, per worker process.\n"
                   "# TYPE metaprotocol_worker_requests_total counter\n")  # fmt: skip
        out.extend(f'metaprotocol_worker_requests_total{{worker="{i}"}} {_requests(t):g}\n' for i, t in sorted(texts.items()))
        out.append("# HELP metaprotocol_worker_restarts_total Worker processes restarted after they exited.\n"
                   "# TYPE metaprotocol_worker_restarts_total counter\n")  # fmt: skip
        out.extend(f'metaprotocol_worker_restarts_total{{worker="{w.index}"}} {w.restarts}\n' for w in self.workers)
        out.extend(source() for source in self.stats_sources)
        text = "".join(out)
        return text + self.xds.prometheus() if self.xds is not None else text

    async def config_dump(self) -> dict[str, object]:
        """The configuration the parent holds (every worker serves it) and the workers."""
        texts = await self._worker_stats()
        workers = [{"index": w.index, "pid": w.pid, "up": w.up, "restarts": w.restarts, "requests": _requests(texts.get(w.index, ""))}
                   for w in self.workers]  # fmt: skip
        return {**bootstrap_dump(self.bootstrap, self.registry), "workers": workers, **({"xds": self.xds.dump()} if self.xds is not None else {})}

    async def _respond(self, path: str) -> tuple[str, str, bytes]:
        import json

        if path == "/ready":
            return ready_answer(self.ready and all(w.up for w in self.workers))
        if path in ("/stats", "/stats/prometheus"):
            return "200 OK", "text/plain; version=0.0.4", (await self.stats_text()).encode()
        if path == "/config_dump":
            body = json.dumps(await self.config_dump(), indent=2, sort_keys=True, default=str)
            return "200 OK", "application/json", body.encode()
        if path == "/":
            return "200 OK", "text/plain", b"/ready\n/stats\n/config_dump\n"
        return "404 Not Found", "text/plain", b"not found\n"


def _requests(text: str) -> float:
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith("metaprotocol_requests_total{"))


def merge_prometheus(texts: Sequence[str]) -> str:
    """Sum Prometheus text expositions sample by sample (same name and labels); families keep the
    order in which they first appear, and their HELP and TYPE lines once."""
    families: dict[str, tuple[list[str], dict[str, float]]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):  # noqa: PLR2004
                    family = parts[2]
                comments, _ = families.setdefault(family, ([], {}))
                if line not in comments:
                    comments.append(line)
                continue
            key, _, value = line.rpartition(" ")
            _, samples = families.setdefault(family, ([], {}))
            samples[key] = samples.get(key, 0.0) + float(value)
    out: list[str] = []
    for comments, samples in families.values():
        out.extend(comments)
        out.extend(f"{key} {_number(v)}" for key, v in samples.items())
    return "\n".join(out) + "\n" if out else ""


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


# -- the worker process ------------------------------------------------------------------------


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A worker: read the configuration from the parent (stdin), serve it, answer the parent's
    commands, drain on SIGTERM or when the parent is gone."""
    parser = argparse.ArgumentParser(prog="metaprotocol-worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--channel", type=int, required=True, help="descriptor of the socket pair that carries listening sockets")
    parser.add_argument("--drain-timeout", type=float, default=10.0)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=f"%(asctime)s %(levelname)s %(name)s [worker {args.index}]: %(message)s")
    control_in = os.fdopen(os.dup(0), "rb", buffering=0)
    control_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the control pipe
    registry = CodecRegistry.from_entry_points()
    channel = socket.socket(fileno=args.channel)
    channel.settimeout(CALL_TIMEOUT)
    main = _serve_worker(registry, control_in, control_out, args.drain_timeout, channel)
    if not args.no_uvloop:
        try:
            import uvloop

            return uvloop.run(main)
        except ImportError:
            pass
    return asyncio.run(main)


def _receive(channel: socket.socket, names: Sequence[str]) -> dict[str, socket.socket]:
    """The listening sockets the parent sent for ``names`` (already in the channel: the parent
    sends them before the message that names them)."""
    socks: list[socket.socket] = []
    while len(socks) < len(names):
        _, fds = hot_restart.recv_frame(channel)
        socks.extend(socket.socket(fileno=fd) for fd in fds)
    return dict(zip(names, socks, strict=True))


def _close_unused(proxy: Proxy) -> None:
    """Copies of sockets for listeners the worker already serves."""
    for sock in proxy.inherited.values():
        sock.close()
    proxy.inherited.clear()


async def _serve_worker(registry: CodecRegistry, control_in: Any, control_out: Any, drain_timeout: float,  # noqa: ANN401 - file objects
                        channel: socket.socket) -> int:  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), control_in)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, control_out)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        _, bootstrap, names = await _read(reader)
    except (asyncio.IncompleteReadError, ConnectionError):
        return 1
    try:
        proxy = Proxy(bootstrap, registry)
        proxy.reuse_port = True
        proxy.inherited = _receive(channel, names)
        await proxy.start()
        _close_unused(proxy)
    except (OSError, ConfigError, hot_restart.HotRestartError) as exc:
        _write(writer, ("error", str(exc)))
        await writer.drain()
        return 1
    _write(writer, ("ok", {name: proxy.bound_port(name) for name in proxy.servers}))
    await writer.drain()
    from metaprotocol.cli import relax_gc

    relax_gc()
    commands = asyncio.ensure_future(_commands(proxy, reader, writer, stop, channel))
    await stop.wait()
    commands.cancel()
    await proxy.drain(drain_timeout)
    return 0


async def _commands(proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stop: asyncio.Event,
                    channel: socket.socket) -> None:  # fmt: skip
    while True:
        try:
            message = await _read(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.warning("the parent process is gone: draining")
            stop.set()
            return
        answer: tuple[str, object]
        if message[0] == "stats":
            answer = ("ok", proxy.stats_text())
        elif message[0] == "stop_accepting":
            proxy.stop_accepting()
            answer = ("ok", None)
        elif message[0] == "apply":
            unbound: dict[str, str] = {}
            try:
                proxy.inherited = _receive(channel, message[2])
                await proxy.apply(message[1], unbound)
                answer = ("ok", unbound)
            except (ConfigError, ValueError, OSError, hot_restart.HotRestartError) as exc:
                answer = ("error", str(exc))
            finally:
                _close_unused(proxy)
        else:
            answer = ("error", f"unknown command {message[0]!r}")
        _write(writer, answer)
        await writer.drain()


# -- the parent's command line -------------------------------------------------------------------


def run_supervisor(bootstrap: Bootstrap, registry: CodecRegistry, concurrency: int, *, drain_timeout: float, use_uvloop: bool,
                   log_level: str, xds: str | None = None, node_id: str = "", delta: bool = False,
                   restart_from: str | None = None, restart_socket: str | None = None, stats_sources: Sequence[Callable[[], str]] = ()) -> int:  # fmt: skip
    """``metaprotocol proxy --concurrency N`` (N > 1): the parent process, until SIGTERM."""
    worker_args = ["--drain-timeout", str(drain_timeout), "--log-level", log_level, *([] if use_uvloop else ["--no-uvloop"])]

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        supervisor = Supervisor(bootstrap, registry, concurrency, drain_timeout=drain_timeout, worker_args=worker_args)
        supervisor.stats_sources.extend(stats_sources)
        if restart_from is not None:
            try:
                supervisor.handover = await hot_restart.connect(restart_from)
            except hot_restart.HotRestartError as exc:
                log.error("cannot start: %s", exc)
                return 1
        try:
            await supervisor.start()
        except (OSError, WorkerGone) as exc:
            log.error("cannot start: %s", exc)
            if supervisor.handover is not None:
                supervisor.handover.close()  # the running generation serves on
            return 1
        for name in supervisor.contexts:
            log.info("serving %s on port %d with %d workers", name, supervisor.bound_port(name), concurrency)
        client_task = None
        if xds:
            from metaprotocol.xds.client import AdsClient

            client_task = asyncio.ensure_future(AdsClient(supervisor, xds, node_id, delta=delta).run())
            log.info("configuration from ADS at %s (node %s) for %d workers", xds, node_id, concurrency)
        handover = supervisor.handover
        if handover is not None:
            # Until every socket is claimed and the configuration that claimed it applied by the workers.
            await hot_restart.finish(handover, lambda: bool(handover.pending()) or supervisor.applying(), drain_timeout if xds else 0.0)
            supervisor.handover = None

        def taken_over() -> None:
            supervisor.stop_accepting()
            stop.set()

        restarts = await hot_restart.serve_restarts(restart_socket, supervisor.listening, taken_over, drain_timeout)
        await stop.wait()
        timeout = drain_timeout
        if restarts is not None:
            restarts.close()
            if restarts.draining:  # taken over: the workers stop accepting, read what was sent, then drain
                await supervisor.stop_workers_accepting()
                await asyncio.sleep(grace := hot_restart.grace_period(drain_timeout))
                timeout -= grace
        if client_task is not None:
            client_task.cancel()
        log.info("draining %d workers (up to %.1fs)", concurrency, timeout)
        return await supervisor.drain(timeout)

    if use_uvloop:
        try:
            import uvloop

            return uvloop.run(serve())
        except ImportError:
            log.warning("uvloop is not installed; using the stdlib event loop")
    return asyncio.run(serve())


def listener_ports(config: Mapping[str, object]) -> dict[str, int]:
    """Listener name -> port from a ``/config_dump`` answer (tests and tools)."""
    listeners: list[dict[str, Any]] = config.get("listeners", [])  # type: ignore[assignment]
    return {lst["name"]: int(lst["port"]) for lst in listeners}


if __name__ == "__main__":
    sys.exit(worker_main())
