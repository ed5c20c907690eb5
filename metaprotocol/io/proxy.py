"""The running proxy: listeners, clusters, admin endpoint, live updates and graceful drain."""

from __future__ import annotations

import asyncio
import logging
import mmap
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING

from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import Bootstrap, DownstreamTls, ListenerConfig, RouteConfig
from metaprotocol.io.loop_io import LoopIO
from metaprotocol.proxy.context import ListenerContext
from metaprotocol.proxy.overload import Overload
from metaprotocol.proxy.session import DownstreamSession
from metaprotocol.proxy.stats import render_prometheus
from metaprotocol.proxy.upstream import Upstreams
from metaprotocol.registry import CodecRegistry, RegistryError
from metaprotocol.router.table import RouteTable
from metaprotocol.spi import CodecConfigError, CodecFactory

if TYPE_CHECKING:
    from metaprotocol.io.access_log import AccessLogWriter
    from metaprotocol.io.tls import TlsAcceptor
    from metaprotocol.xds.status import XdsStatus

log = logging.getLogger(__name__)


def build_factories(
    bootstrap: Bootstrap, registry: CodecRegistry
) -> dict[str, CodecFactory]:
    """A codec factory per listener, validating codec names, configs and mutations.

    Raises:
        ConfigError: the first problem, with the listener it belongs to.
    """
    return {
        lst.name: listener_factory(lst, registry, bootstrap.source, f"static_resources.listeners[{i}] ({lst.name})")
        for i, lst in enumerate(bootstrap.listeners)
    }


def listener_factory(lst: ListenerConfig, registry: CodecRegistry, source: str, path: str) -> CodecFactory:
    """The codec factory of one listener, its route table (if any) checked against the codec.

    Raises:
        ConfigError: the codec is unknown, its config invalid, or the routes need what it lacks.
    """
    try:
        factory = registry.get(lst.codec.name)(lst.codec.config)
    except (RegistryError, CodecConfigError) as exc:
        raise ConfigError(source, f"{path}.codec", str(exc)) from exc
    if lst.route_config is not None:
        validate_routes(factory, lst.route_config, source, path)
    return factory


def validate_routes(factory: CodecFactory, routes: RouteConfig, source: str, path: str) -> None:
    """Reject route features the codec cannot express on the wire."""
    if factory.supports_mutation:
        return
    for j, rule in enumerate(routes.routes):
        if rule.request_mutation or rule.response_mutation:
            raise ConfigError(
                source,
                f"{path}.route_config.routes[{j}]",
                f"the {factory.name} codec cannot carry request/response mutations",
            )


class Proxy:
    """Owns the listeners and upstreams of one proxy process (one event loop)."""

    def __init__(self, bootstrap: Bootstrap, registry: CodecRegistry, seed: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.registry = registry
        self.factories = build_factories(bootstrap, registry)
        self.seed = seed
        self.loop: asyncio.AbstractEventLoop | None = None
        self.io: LoopIO | None = None
        self.upstreams: Upstreams | None = None
        self.contexts: dict[str, ListenerContext] = {}
        self.servers: dict[str, asyncio.Server] = {}
        self.admin_server: asyncio.Server | None = None
        self.log_writers: dict[str, list[AccessLogWriter]] = {}
        self.overload = Overload(bootstrap.overload, _fd_limit())
        self.ready = False
        self.stopped = False
        self.xds: XdsStatus | None = None  # set by an ADS client: /config_dump and /stats show it
        self.stats_sources: list[Callable[[], str]] = []  # more /stats text (the identity agent's counters)
        self.reuse_port = False  # a worker of several (metaprotocol.io.workers) shares its listeners
        # Listening sockets taken over from another process (metaprotocol.io.hot_restart) or handed
        # by the parent of workers: a listener of that name serves on it instead of binding.
        self.inherited: dict[str, socket.socket] = {}
        self.inherited_admin: socket.socket | None = None
        self.handshaking: dict[str, set[TlsAcceptor]] = {}  # per listener: TLS handshakes under way

    async def start(self) -> None:
        """Bind every listener (and the admin endpoint); raise before serving if any bind fails."""
        import random

        loop = asyncio.get_running_loop()
        self.loop = loop
        self.io = LoopIO(loop)
        self.upstreams = Upstreams(self.io, self.bootstrap.cluster_map())
        self.io.upstreams = self.upstreams
        self._check_tls(self.bootstrap)
        self._watch_heap()
        try:
            for lst in self.bootstrap.listeners:
                rng = random.Random(self.seed)  # noqa: S311 - load balancing only
                await self._start_listener(lst, self.factories[lst.name], rng)
            if self.bootstrap.admin is not None:
                from metaprotocol.io.admin import start_admin

                a = self.bootstrap.admin
                self.admin_server = await start_admin(self, a.address, a.port, sock=self.inherited_admin)
                self.inherited_admin = None
        except OSError:
            await self.close()
            raise
        self.ready = True

    async def _start_listener(
        self, lst: ListenerConfig, factory: CodecFactory, rng: object
    ) -> None:
        assert self.io is not None and self.upstreams is not None  # noqa: S101
        table = RouteTable(lst.route_config) if lst.route_config is not None else None
        ctx = ListenerContext(lst, factory, table, self.upstreams, self.io, rng, self.overload)  # type: ignore[arg-type]
        assert self.loop is not None  # noqa: S101
        inherited = self.inherited.pop(lst.name, None)
        if inherited is not None and lst.port not in (0, inherited.getsockname()[1]):
            inherited.close()  # the listener moved: bind the new port
            inherited = None
        make_session = self._session_factory(ctx)
        if inherited is not None:  # already bound and listening: no rebind, nothing refused
            server = await self.loop.create_server(make_session, sock=inherited, backlog=1024)
        else:
            server = await self.loop.create_server(
                make_session,
                lst.address,
                lst.port,
                reuse_address=True,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        for sock in server.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.contexts[lst.name] = ctx
        self.servers[lst.name] = server
        self._attach_policies(ctx)
        self._watch_health(ctx)
        log.info("listener %s on %s:%d (codec %s)", lst.name, lst.address, lst.port, factory.name)

    def _session_factory(self, ctx: ListenerContext) -> Callable[[], asyncio.BaseProtocol]:
        """The protocol of an accepted connection: a session, or on a TLS listener a
        ``TlsAcceptor`` that hands the connection to a session once its handshake succeeded (the
        listener's TLS config is read per connection, so a live update applies to new ones)."""
        from metaprotocol.io.tls import TlsAcceptor

        assert self.io is not None  # noqa: S101
        tls_manager = self.io.tls
        pending = self.handshaking.setdefault(ctx.name, set())

        def session() -> asyncio.BaseProtocol:
            return DownstreamSession(ctx)  # type: ignore[return-value]

        def accept() -> asyncio.BaseProtocol:
            tls = ctx.config.tls
            if tls is None:
                return DownstreamSession(ctx)  # type: ignore[return-value]
            return TlsAcceptor(tls_manager, ctx.name, tls_manager.holder(tls), session, pending)

        return accept

    def _check_tls(self, bootstrap: Bootstrap) -> None:
        """Build (or find) the TLS context of every listener and cluster before serving them.

        Raises:
            ConfigError: a context cannot be built (a missing file, a key not matching its
                certificate), naming the listener or cluster.
        """
        from metaprotocol.io.tls import TlsConfigError

        assert self.io is not None  # noqa: S101
        used: list[object] = []
        for kind, items in (("listener", bootstrap.listeners), ("cluster", bootstrap.clusters)):
            for item in items:
                if item.tls is not None:
                    try:
                        self.io.tls.holder(item.tls)
                    except TlsConfigError as exc:
                        raise ConfigError(bootstrap.source, f"{kind} {item.name}", f"transport_socket: {exc}") from exc
                    used.append(item.tls)
        self.io.tls.retain(used)  # type: ignore[arg-type]

    def _attach_policies(self, ctx: ListenerContext) -> None:
        """Access log writers and the idle-timeout check for a listener (IO lives here)."""
        from metaprotocol.io.access_log import AccessLogWriter, fan_out

        assert self.loop is not None  # noqa: S101
        for w in self.log_writers.pop(ctx.name, []):
            w.close()
        writers = [AccessLogWriter(a, ctx.factory.name, self.loop) for a in ctx.config.access_log]
        self.log_writers[ctx.name] = writers
        ctx.access_log = fan_out(writers) if writers else None
        idle = ctx.config.idle_timeout
        if idle > 0:
            self.loop.call_later(min(idle / 2, 1.0), self._check_idle, ctx)

    def _watch_health(self, ctx: ListenerContext) -> None:
        """Start the active health checks of the clusters this listener's routes name (the
        probe is its codec's); clusters reached only later are checked from their first pool."""
        if ctx.table is None or self.upstreams is None:
            return
        for route in ctx.table.config.routes:
            for name in route.action.cluster_names():
                self.upstreams.watch_health(name, ctx.factory)

    def _watch_heap(self) -> None:
        """Read the process's resident memory every refresh interval for the overload bounds."""
        if self.loop is None or self.stopped or self.bootstrap.overload.max_heap_size_bytes <= 0:
            return
        self.overload.observe_heap(resident_bytes())
        self.loop.call_later(max(0.01, self.bootstrap.overload.refresh_interval), self._watch_heap)

    def _check_idle(self, ctx: ListenerContext) -> None:
        if self.contexts.get(ctx.name) is not ctx or self.loop is None:
            return
        idle = ctx.config.idle_timeout
        if idle <= 0:
            return
        now = self.loop.time()
        for session in list(ctx.sessions):
            if session.inflight == 0 and not session.slots and now - session.last_active >= idle and session.transport is not None:
                ctx.stats.idle_timeouts += 1
                session.transport.close()
        self.loop.call_later(min(idle / 2, 1.0), self._check_idle, ctx)

    def bound_port(self, listener: str) -> int:
        """The port a listener is bound to (useful with port 0)."""
        return int(self.servers[listener].sockets[0].getsockname()[1])

    def admin_port(self) -> int | None:
        """The admin endpoint's bound port."""
        if self.admin_server is None:
            return None
        return int(self.admin_server.sockets[0].getsockname()[1])

    # -- live updates -------------------------------------------------------------------------

    def update_routes(self, listener: str, routes: RouteConfig) -> None:
        """Swap a listener's route table atomically; connections and requests in flight stay."""
        ctx = self.contexts[listener]
        validate_routes(ctx.factory, routes, "update", listener)
        ctx.table = RouteTable(routes)
        self._watch_health(ctx)

    async def apply(self, bootstrap: Bootstrap, unbound: dict[str, str] | None = None) -> None:
        """Apply a whole new configuration without dropping existing connections.

        Clusters whose config is unchanged keep their pools; listeners with the same name,
        address and codec keep their sockets and get the new route table; others are started or
        drained. A new listener that cannot bind raises ConfigError, or, when ``unbound`` is
        given, is left out (the rest applied) and its name and reason are added to ``unbound``.
        """
        factories = build_factories(bootstrap, self.registry)
        assert self.upstreams is not None  # noqa: S101
        self._check_tls(bootstrap)
        self.upstreams.update_clusters(bootstrap.cluster_map())
        heap_watch_was_off = self.bootstrap.overload.max_heap_size_bytes <= 0
        self.overload.reconfigure(bootstrap.overload)
        new = {lst.name: lst for lst in bootstrap.listeners}
        for name in list(self.contexts):
            ctx = self.contexts[name]
            lst = new.get(name)
            # Port 0 means "any": the listener bound to some port is the same listener.
            same = (
                lst is not None
                and (lst.address, lst.codec) == (ctx.config.address, ctx.config.codec)
                and lst.port in (ctx.config.port, self.bound_port(name))
            )
            if lst is not None and same:
                limits_changed = lst.local_rate_limit != ctx.config.local_rate_limit
                logs_changed = (lst.access_log, lst.idle_timeout) != (ctx.config.access_log, ctx.config.idle_timeout)
                if lst.global_rate_limit != ctx.config.global_rate_limit:
                    ctx.apply_global_limit(lst.global_rate_limit)
                if lst.tls != ctx.config.tls:
                    _drain_outdated(ctx, ctx.config.tls, lst.tls)
                ctx.config = lst
                if lst.route_config is not None:
                    ctx.table = RouteTable(lst.route_config)
                if limits_changed:
                    from metaprotocol.proxy.policies import RateLimiter

                    assert self.loop is not None  # noqa: S101
                    ctx.limiter = RateLimiter(lst.local_rate_limit, self.loop.time()) if lst.local_rate_limit else None
                if logs_changed:
                    self._attach_policies(ctx)
            else:
                await self._stop_listener(name)
        import random

        for name, lst in new.items():
            if name not in self.contexts:
                try:
                    await self._start_listener(lst, factories[name], random.Random(self.seed))  # noqa: S311
                except OSError as exc:
                    if unbound is None:
                        raise ConfigError(bootstrap.source, f"listener {name}", f"cannot listen on {lst.address}:{lst.port}: {exc}") from exc
                    unbound[name] = f"cannot listen on {lst.address}:{lst.port}: {exc}"
                    factories.pop(name)
        if unbound:
            bootstrap = replace(bootstrap, listeners=tuple(lst for lst in bootstrap.listeners if lst.name not in unbound))
        self.bootstrap = bootstrap
        self.factories.update(factories)
        if heap_watch_was_off:
            self._watch_heap()
        for ctx in self.contexts.values():
            self._watch_health(ctx)

    async def _stop_listener(self, name: str, timeout: float = 5.0) -> None:
        server = self.servers.pop(name)
        server.close()
        for acceptor in list(self.handshaking.pop(name, ())):
            acceptor.abort()
        ctx = self.contexts.pop(name)
        ctx.close()
        await _drain_sessions([ctx], timeout)

    # -- shutdown -----------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listening sockets and the admin endpoint (another process serves them now,
        metaprotocol.io.hot_restart); connections already accepted stay until :meth:`drain`."""
        self.ready = False
        for server in self.servers.values():
            server.close()
        if self.admin_server is not None:
            self.admin_server.close()

    async def drain(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish in-flight requests (up to ``timeout``), then close everything."""
        self.ready = False
        for server in self.servers.values():
            server.close()
        await _drain_sessions(list(self.contexts.values()), timeout)
        await self.close()

    async def close(self) -> None:
        """Close listeners, admin and upstream connections immediately."""
        self.ready = False
        self.stopped = True
        for server in self.servers.values():
            server.close()
        for ctx in self.contexts.values():
            for session in list(ctx.sessions):
                if session.transport is not None:
                    session.transport.close()
        for pending in self.handshaking.values():
            for acceptor in list(pending):
                acceptor.abort()
        if self.admin_server is not None:
            self.admin_server.close()
        for writers in self.log_writers.values():
            for w in writers:
                w.close()
        if self.upstreams is not None:
            self.upstreams.stop_health_checks()
            self.upstreams.close()
        if self.io is not None:
            await self.io.close()
        await asyncio.sleep(0)

    # -- admin views --------------------------------------------------------------------------

    def stats_text(self) -> str:
        """Prometheus exposition of every counter."""
        clusters = self.upstreams.cluster_stats.values() if self.upstreams else []
        text = render_prometheus((c.stats for c in self.contexts.values()), clusters, self.overload)
        if self.io is not None:
            text += self.io.tls.stats.prometheus()
        text += "".join(source() for source in self.stats_sources)
        return text + self.xds.prometheus() if self.xds is not None else text

    def config_dump(self) -> dict[str, object]:
        """The effective configuration as plain JSON-able data."""
        return {
            "source": self.bootstrap.source,
            "listeners": [redact_keys(_plain(c.config)) for c in self.contexts.values()],
            "route_tables": {
                name: _plain(c.table.config) if c.table is not None else None
                for name, c in self.contexts.items()
            },
            "clusters": [redact_keys(_plain(c)) for c in self.bootstrap.clusters],
            "codecs": {name: f.name for name, f in self.factories.items()},
            **({"xds": self.xds.dump()} if self.xds is not None else {}),
        }


def bootstrap_dump(bootstrap: Bootstrap, registry: CodecRegistry) -> dict[str, object]:
    """A configuration as ``/config_dump`` shows it (what a parent of worker processes holds)."""
    return {
        "source": bootstrap.source,
        "listeners": [redact_keys(_plain(lst)) for lst in bootstrap.listeners],
        "route_tables": {lst.name: _plain(lst.route_config) if lst.route_config is not None else None for lst in bootstrap.listeners},
        "clusters": [redact_keys(_plain(c)) for c in bootstrap.clusters],
        "codecs": {name: f.name for name, f in build_factories(bootstrap, registry).items()},
    }


def _drain_outdated(ctx: ListenerContext, old: DownstreamTls | None, new: DownstreamTls | None) -> None:
    """A listener's TLS changed: drain the connections its new settings would not accept (as Envoy
    drains the connections of a filter chain that went away): plaintext ones when TLS becomes
    required (PERMISSIVE -> STRICT), TLS ones when the certificate checks changed. Established
    connections otherwise keep going (a certificate file's rotation is not a settings change)."""
    if new is None:
        return
    checks_changed = old is None or (old.common, old.require_client_certificate) != (new.common, new.require_client_certificate)
    drained = 0
    for session in list(ctx.sessions):
        transport = session.transport
        if transport is None:
            continue
        secure = transport.get_extra_info("ssl_object") is not None
        if (not secure and not new.allow_plaintext) or (secure and checks_changed):
            session.drain()
            drained += 1
    if drained:
        log.info("listener %s: TLS settings changed: %d connection(s) accepted under the previous ones drained", ctx.name, drained)


async def _drain_sessions(contexts: list[ListenerContext], timeout: float) -> None:
    for ctx in contexts:
        ctx.draining = True
        for session in list(ctx.sessions):
            session.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(ctx.sessions for ctx in contexts) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    for ctx in contexts:
        for session in list(ctx.sessions):
            if session.transport is not None:
                session.transport.close()


def _fd_limit() -> int:
    """The limit on open files (0 when unknown), which sets the default connection bound. The
    soft limit is first raised to the hard one, as servers do (a distribution's default soft
    limit of 1024 would otherwise cap a proxy at about 900 clients)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (OSError, ValueError):
                pass  # not allowed here: keep the soft limit
    except (ImportError, OSError, ValueError):
        return 0
    return soft if soft != resource.RLIM_INFINITY else 0


_PAGE = mmap.PAGESIZE


def resident_bytes() -> int:
    """The process's resident set size now (Linux ``/proc/self/statm``; elsewhere the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


REDACTED = "[redacted]"


def redact_keys(tree: object) -> object:
    """A config tree with inline private keys replaced by ``[redacted]`` (as Envoy's config dump
    does): ``/config_dump`` shows where a key comes from, never the key."""
    if isinstance(tree, dict):
        out = {k: redact_keys(v) for k, v in tree.items()}
        key = out.get("private_key")
        if isinstance(key, dict) and key.get("inline"):
            out["private_key"] = {**key, "inline": REDACTED}
        return out
    if isinstance(tree, list):
        return [redact_keys(v) for v in tree]
    return tree


def _plain(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
