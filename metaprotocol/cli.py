"""metaprotocol: a service-mesh proxy for any layer-7 protocol.

  metaprotocol proxy -c bootstrap.yaml      run the proxy on a static configuration
  metaprotocol proxy --xds HOST:PORT        run it on configuration from aeraki-ctl serve (ADS)
  metaprotocol proxy ... --concurrency N    N worker processes sharing each listener (SO_REUSEPORT)
  metaprotocol proxy --xds H:P --identity spiffe://TD/ns/NS/sa/SA --identity-dir DIR [--identity-token-file F]
                                            also keep a certificate from aeraki-ctl serve --ca in DIR
  metaprotocol proxy ... --restart-from [S]  hot restart: take over the listening sockets of the
                                            proxy at hot-restart socket S; it drains and exits
  metaprotocol validate -c bootstrap.yaml   check a configuration as the proxy would, and exit
  metaprotocol codecs                       list the installed codec plugins

Exit codes: 0 ok; 1 cannot start (a port is taken); 2 invalid configuration (the same for
validate and proxy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from metaprotocol import __version__, _native
from metaprotocol.config.bootstrap import load_bootstrap
from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import AdminConfig, Bootstrap
from metaprotocol.registry import CodecRegistry, RegistryError

if TYPE_CHECKING:
    from metaprotocol.io.identity import IdentityAgent
    from metaprotocol.xds.client import XdsTls

log = logging.getLogger("metaprotocol")


def _native_mode() -> str:
    """Compiled or pure Python, and why (``metaprotocol._native``)."""
    mode, reason = _native.mode()
    return f"{mode}, {reason}" if reason else mode

EXIT_CONFIG = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
COMMANDS_GROUP = "metaprotocol.commands"


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _key_value(value: str) -> tuple[str, str]:
    key, eq, val = value.partition("=")
    if not key or not eq:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metaprotocol", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"metaprotocol {__version__} (hot path: {_native_mode()})")
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run the proxy")
    proxy.add_argument("-c", "--config", help="bootstrap YAML file (optional with --xds)")
    proxy.add_argument("--xds", type=_host_port, help="ADS server HOST:PORT (aeraki-ctl serve)")
    proxy.add_argument("--node-id", default="metaprotocol-proxy", help="node id sent to the ADS server")
    proxy.add_argument("--xds-delta", action="store_true", help="incremental xDS (DeltaAggregatedResources) instead of state of the world")
    proxy.add_argument("--xds-ca", metavar="FILE", help="xDS over TLS: the PEM CA that signed aeraki-ctl's certificate (serve --tls-cert)")
    proxy.add_argument("--xds-cert", metavar="FILE", help="xDS over TLS: this proxy's PEM certificate chain, for a server that asks (serve --client-ca)")
    proxy.add_argument("--xds-key", metavar="FILE", help="xDS over TLS: the private key of --xds-cert")
    proxy.add_argument("--xds-server-name", metavar="NAME", help="xDS over TLS: the name to check the server's certificate for (default: the --xds host)")
    proxy.add_argument("--node-metadata", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="node metadata sent to the ADS server, repeatable; as Istio's sidecars: NAMESPACE=ns, "
                            "LABELS=app=a,version=v1 (or LABELS as a JSON object); they choose the Sidecar scope")  # fmt: skip
    proxy.add_argument("--admin", type=_host_port, help="admin endpoint HOST:PORT")
    proxy.add_argument("--drain-timeout", type=float, default=10.0, help="seconds (SIGTERM)")
    proxy.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    proxy.add_argument("--concurrency", type=_positive, default=1, metavar="N",
                       help="worker processes sharing each listener (SO_REUSEPORT, Linux); 1: this process serves")  # fmt: skip
    proxy.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    proxy.add_argument("--hot-restart-socket", metavar="PATH",
                       help="Unix socket a new process takes this one's listeners over from ('@name': abstract namespace; "
                            "default @metaprotocol-hot-restart-<admin port> when --admin is set; 'off': none)")  # fmt: skip
    proxy.add_argument("--restart-from", nargs="?", const="", metavar="PATH",
                       help="hot restart: take over the listening sockets of the proxy at this hot-restart socket "
                            "(no PATH: this configuration's default), which then drains and exits")  # fmt: skip
    _identity_flags(proxy)
    validate = sub.add_parser("validate", help="check a bootstrap file and exit")
    validate.add_argument("-c", "--config", required=True)
    sub.add_parser("codecs", help="list installed codec plugins")
    # Further subcommands (e.g. `demo`) come from plugins, as codecs do: the core imports none.
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            ep.load()(sub)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            print(f"metaprotocol: ignoring command plugin {ep.name}: {exc}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaprotocol`` console script."""
    args = _parser().parse_args(argv)
    if hasattr(args, "run"):
        return int(args.run(args))
    registry = CodecRegistry.from_entry_points()
    if args.command == "codecs":
        return _list_codecs(registry)
    if args.command == "validate":
        return _validate(args.config, registry)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from metaprotocol.xds import client as xds_client

    xds_client.NODE_METADATA.update(args.node_metadata)
    try:
        xds_client.XDS_TLS = _xds_tls(args)
    except ConfigError as exc:
        print(f"metaprotocol: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        xds_client.node_metadata(xds_client.NODE_METADATA)
    except ValueError as exc:
        print(f"metaprotocol: --node-metadata: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.config:
            bootstrap = load_bootstrap(args.config)
        elif args.xds:
            bootstrap = Bootstrap((), (), None, "xds")
        else:
            print("metaprotocol proxy: -c FILE or --xds HOST:PORT is required", file=sys.stderr)
            return EXIT_CONFIG
        if args.admin:
            bootstrap = _with_admin(bootstrap, *args.admin)
        stats_sources: list[Callable[[], str]] = []
        if args.identity:
            stats_sources.append(_start_identity(args, args.identity_ca or args.xds or bootstrap.ads).prometheus)
        from metaprotocol.io.proxy import Proxy, build_factories

        if args.concurrency > 1:
            build_factories(bootstrap, registry)  # invalid: exit 2 here, before any worker starts
            return _run_workers(args, bootstrap, registry, stats_sources)

        restart_from, restart_socket = _hot_restart_paths(args, bootstrap)
        proxy = Proxy(bootstrap, registry)
        proxy.stats_sources.extend(stats_sources)
    except ConfigError as exc:
        print(f"metaprotocol: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    ads = args.xds or bootstrap.ads
    xds = f"{ads[0]}:{ads[1]}" if ads else None
    node_id = bootstrap.node_id if bootstrap.node_id and args.node_id == "metaprotocol-proxy" else args.node_id
    return _run(proxy, args.drain_timeout, use_uvloop=not args.no_uvloop, xds=xds, node_id=node_id, delta=args.xds_delta,
                restart_from=restart_from, restart_socket=restart_socket)  # fmt: skip


def _xds_tls(args: argparse.Namespace) -> XdsTls | None:
    """The xDS TLS settings of the command line (None: plaintext)."""
    from metaprotocol.xds.client import XdsTls

    if args.xds_ca is None:
        for flag in ("xds_cert", "xds_key", "xds_server_name"):
            if getattr(args, flag):
                raise ConfigError("command line", f"--{flag.replace('_', '-')}", "needs --xds-ca FILE (the CA of aeraki-ctl's certificate)")
        return None
    if (args.xds_cert is None) != (args.xds_key is None):
        raise ConfigError("command line", "--xds-cert", "--xds-cert and --xds-key go together")
    for flag in ("xds_ca", "xds_cert", "xds_key"):
        path = getattr(args, flag)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError("command line", f"--{flag.replace('_', '-')}", f"cannot read {path}")
    return XdsTls(args.xds_ca, args.xds_cert, args.xds_key, args.xds_server_name)


def _identity_flags(proxy: argparse.ArgumentParser) -> None:
    """The workload certificate from aeraki-ctl's CA (metaprotocol.io.identity; docs/security.md)."""
    g = proxy.add_argument_group("workload identity", "a certificate from aeraki-ctl serve --ca, renewed at half-life, written as files")
    g.add_argument("--identity", metavar="SPIFFE_ID", help="ask the CA at the --xds address for this identity (spiffe://<td>/ns/<ns>/sa/<sa>)")
    g.add_argument("--identity-ca", type=_host_port, metavar="HOST:PORT", help="the CA's address when it is not the --xds one (as Istio's CA_ADDR)")
    g.add_argument("--identity-token-file", metavar="FILE", help="the bearer token proving the identity (read at every request)")
    g.add_argument("--identity-dir", metavar="DIR", help="where cert.pem, key.pem and ca.pem are written (required with --identity)")
    g.add_argument("--identity-ttl", type=_positive, default=0, metavar="SECONDS", help="validity to ask for (default: the CA's, 24 h)")
    g.add_argument("--identity-wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for the first certificate before serving (default 10; 0: do not wait)")  # fmt: skip


def _start_identity(args: argparse.Namespace, ads: tuple[str, int] | None) -> IdentityAgent:
    """Start the identity agent and wait (up to --identity-wait) for the first certificate."""
    from metaprotocol.io.identity import IdentityAgent

    if not ads:
        raise ConfigError("command line", "--identity", "needs --xds HOST:PORT or --identity-ca HOST:PORT (the CA is aeraki-ctl serve --ca)")
    if not args.identity_dir:
        raise ConfigError("command line", "--identity", "needs --identity-dir DIR (where cert.pem, key.pem and ca.pem are written)")
    if not args.identity.startswith("spiffe://"):
        raise ConfigError("command line", "--identity", f"expected spiffe://<trust-domain>/ns/<ns>/sa/<sa>, got {args.identity!r}")
    from metaprotocol.xds import client as xds_client

    tls = getattr(xds_client, "XDS_TLS", None)  # xDS over TLS (--xds-ca ...): the CA is on the same port, asked the same way
    agent = IdentityAgent(f"{ads[0]}:{ads[1]}", args.identity, args.identity_dir, token_file=args.identity_token_file, ttl=args.identity_ttl,
                          metadata={"WorkloadName": args.node_id}, credentials=tls.credentials if tls is not None else None,
                          channel_options=[("grpc.ssl_target_name_override", tls.server_name)] if tls is not None and tls.server_name else [])  # fmt: skip
    agent.start()
    if args.identity_wait > 0 and not agent.ready.wait(args.identity_wait):
        log.warning("no certificate for %s after %.0f s (%s): serving without one, still asking", args.identity, args.identity_wait,
                    agent.last_error or "no answer yet")  # fmt: skip
    return agent


def _hot_restart_paths(args: argparse.Namespace, bootstrap: Bootstrap) -> tuple[str | None, str | None]:
    """(socket to take over from, socket to listen on for the next process), None for none."""
    from metaprotocol.io.hot_restart import default_path

    own = args.hot_restart_socket
    if own is None:
        own = default_path(bootstrap.admin.port if bootstrap.admin is not None else None)
    elif own == "off":
        own = None
    restart_from = args.restart_from
    if restart_from == "":
        restart_from = default_path(bootstrap.admin.port if bootstrap.admin is not None else None) or args.hot_restart_socket
        if not restart_from:
            raise ConfigError("command line", "--restart-from", "no PATH given and no default (set --admin or --hot-restart-socket)")
    return restart_from, own


def _run_workers(args: argparse.Namespace, bootstrap: Bootstrap, registry: CodecRegistry, stats_sources: Sequence[Callable[[], str]] = ()) -> int:
    from metaprotocol.io.workers import run_supervisor

    ads = args.xds or bootstrap.ads
    node_id = bootstrap.node_id if bootstrap.node_id and args.node_id == "metaprotocol-proxy" else args.node_id
    restart_from, restart_socket = _hot_restart_paths(args, bootstrap)
    return run_supervisor(bootstrap, registry, args.concurrency, drain_timeout=args.drain_timeout, use_uvloop=not args.no_uvloop,
                          log_level=args.log_level, xds=f"{ads[0]}:{ads[1]}" if ads else None, node_id=node_id, delta=args.xds_delta,
                          restart_from=restart_from, restart_socket=restart_socket, stats_sources=stats_sources)  # fmt: skip


def _with_admin(bootstrap: Bootstrap, host: str, port: int) -> Bootstrap:
    from dataclasses import replace

    return replace(bootstrap, admin=AdminConfig(host, port))


def _list_codecs(registry: CodecRegistry) -> int:
    for name in registry.names():
        ep = registry.describe(name)
        try:
            factory = registry.get(name)
        except RegistryError as exc:
            print(f"{name}\tBROKEN: {exc}")
            continue
        dist = ep.dist.name if ep is not None and ep.dist is not None else "?"
        print(
            f"{name}\t{factory.correlation.value}\t{ep.value if ep else factory.__module__}"
            f"\t({dist})\taliases: {', '.join(dict.fromkeys((*factory.aliases, f'aeraki.meta_protocol.codec.{name}')))}"
        )
    return 0


def _validate(path: str, registry: CodecRegistry) -> int:
    try:
        bootstrap = load_bootstrap(path)
        from metaprotocol.io.proxy import build_factories

        build_factories(bootstrap, registry)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"ok: {len(bootstrap.listeners)} listener(s), {len(bootstrap.clusters)} cluster(s)")
    return 0


GC_YOUNG_THRESHOLD = 50_000
"""Container allocations between young-generation collections while serving (Python's is 700)."""


def relax_gc() -> None:
    """Collect less often once the proxy serves.

    Requests, messages and their dicts are freed by reference counting the moment they are
    answered; the cyclic collector only finds them alive, yet with Python's default it walks
    the young ones every 700 allocations (about 2 % of the CPU at 50k requests/s). Objects made
    at start-up (config, tables, modules) are frozen out of collections altogether."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _run(proxy: object, drain_timeout: float, *, use_uvloop: bool, xds: str | None = None, node_id: str = "", delta: bool = False,
         restart_from: str | None = None, restart_socket: str | None = None) -> int:  # fmt: skip
    from metaprotocol.io import hot_restart
    from metaprotocol.io.proxy import Proxy

    assert isinstance(proxy, Proxy)  # noqa: S101

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        handover = None
        if restart_from is not None:
            try:
                handover = await hot_restart.inherit(proxy, restart_from, dynamic=bool(xds))
            except hot_restart.HotRestartError as exc:
                log.error("cannot start: %s", exc)
                return 1
        try:
            await proxy.start()
        except OSError as exc:
            log.error("cannot start: %s", exc)
            if handover is not None:
                handover.close()  # the running process serves on
            return 1
        for name in proxy.servers:
            log.info("serving %s on port %d", name, proxy.bound_port(name))
        log.info("hot path: %s", _native_mode())
        relax_gc()
        client_task = None
        if xds:
            from metaprotocol.xds.client import AdsClient

            client_task = asyncio.ensure_future(AdsClient(proxy, xds, node_id, delta=delta).run())
            log.info("configuration from ADS at %s (node %s, %s)", xds, node_id, "delta" if delta else "state of the world")
        if handover is not None:
            await hot_restart.complete(proxy, handover, wait=drain_timeout if xds else 0.0)

        def taken_over() -> None:
            proxy.stop_accepting()
            stop.set()

        restarts = await hot_restart.serve_restarts(restart_socket, lambda: hot_restart.proxy_listening(proxy), taken_over, drain_timeout)
        await stop.wait()
        timeout = drain_timeout
        if restarts is not None:
            restarts.close()
            if restarts.draining:  # taken over: requests already sent on our connections are read first
                await asyncio.sleep(grace := hot_restart.grace_period(drain_timeout))
                timeout -= grace
        if client_task is not None:
            client_task.cancel()
        log.info("draining (up to %.1fs)", timeout)
        await proxy.drain(timeout)
        return 0

    if use_uvloop:
        try:
            import uvloop

            return uvloop.run(serve())
        except ImportError:
            log.warning("uvloop is not installed; using the stdlib event loop")
    return asyncio.run(serve())


if __name__ == "__main__":
    sys.exit(main())
