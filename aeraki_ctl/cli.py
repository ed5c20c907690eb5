"""aeraki-ctl: the control plane's command line.

    aeraki-ctl translate DIR [--listen-address 127.0.0.1] [--port-offset 0] [--format yaml|json]
    aeraki-ctl validate DIR [--data-plane metaprotocol|envoy|all]
    aeraki-ctl serve --config-dir DIR [--xds-address 127.0.0.1:15010] [--admin 127.0.0.1:15014]
    aeraki-ctl serve --kubernetes [--kubeconfig FILE] [--namespace NS ...] [--config-dir DIR] ...
                     [--lease-namespace NS] [--lease-duration 15] [--identity ID] [--list-page-size 500]
                     [--webhook-port 9443 --tls-cert FILE --tls-key FILE]
    aeraki-ctl webhook --port 9443 --tls-cert FILE --tls-key FILE [--address 0.0.0.0]
    aeraki-ctl envoy-bootstrap --xds HOST:PORT --node-id ID [--admin-port N] [--token-file F] [--delta]
    aeraki-ctl proxy-status --admin HOST:PORT
    aeraki-ctl status --admin HOST:PORT
    aeraki-ctl ratelimit --config FILE [--redis HOST:PORT] [--address HOST:PORT]

translate prints the proxy configuration made from the resources in DIR as a bootstrap that
"metaprotocol proxy -c" runs; problems go to stderr. validate lists every problem and exits 1
when any object was skipped; with --data-plane envoy (or all) it also reports what stock Envoy's
filters cannot express (exit 1 when a listener would be rejected for Envoy nodes). serve serves the configuration over xDS (ADS on gRPC, state of the
world and delta) to "metaprotocol proxy --xds" and to stock Envoy (node metadata DATA_PLANE:
envoy, or Envoy's user agent: Envoy's own dubbo/thrift/redis filters), follows changes to DIR (and, with
--kubernetes, watches the API server: in-cluster configuration, or --kubeconfig; the replica that
holds the Lease aeraki-ctl in --lease-namespace writes each MetaRouter's status), and with
--admin serves an HTTP admin API (/healthz, /readyz, /proxies, /status, /metrics).
webhook serves the validating admission webhook (AdmissionReview admission.k8s.io/v1 at /validate,
HTTPS): each object is checked as validate checks it, alone; serve --webhook-port serves it too,
checking each object beside the ones the controller sees.
envoy-bootstrap prints the bootstrap of a stock Envoy node (only the ADS cluster; DATA_PLANE:
envoy; the token file's token as the ADS stream's bearer token, for the CA's SDS secrets).
proxy-status prints, per connected proxy, SYNCED / STALE / NACKED per resource type and the NACK
reasons; status prints each object's state (accepted, rejected, serving-last-valid) and problems,
and exits 1 when any object is not accepted. Both exit 4 when the admin API cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import yaml

from aeraki_ctl.extras import MissingExtra
from aeraki_ctl.resources import ResourceSet, load_directory
from aeraki_ctl.translate import Options, report_lines, translate
from metaprotocol import __version__
from metaprotocol.config.dump import to_bootstrap_tree

if TYPE_CHECKING:
    from aeraki_ctl.ca import CertificateService
    from aeraki_ctl.xds.server import AdsServer, ServerTls

EXIT_INVALID = 1
EXIT_NOT_YET = 3
EXIT_UNREACHABLE = 4
EXIT_USAGE = 2
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aeraki-ctl`` console script."""
    parser = argparse.ArgumentParser(prog="aeraki-ctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"aeraki-ctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("translate", help="print the proxy configuration for a directory of resources")
    t.add_argument("directory")
    t.add_argument("--listen-address", default="127.0.0.1")
    t.add_argument("--port-offset", type=int, default=0)
    t.add_argument("--workload-identity-dir", default=Options.identity_dir, metavar="DIR",
                   help="where proxies keep their workload certificate (DestinationRule ISTIO_MUTUAL); default %(default)s")  # fmt: skip
    t.add_argument("--trust-domain", default=Options.trust_domain, help="SPIFFE trust domain ISTIO_MUTUAL servers must belong to")
    t.add_argument("--root-namespace", default=Options.root_namespace, help="authorization policies here apply to every namespace (default %(default)s)")
    t.add_argument("--format", choices=["yaml", "json"], default="yaml")
    v = sub.add_parser("validate", help="report every problem in a directory of resources")
    v.add_argument("directory")
    v.add_argument("--data-plane", choices=["metaprotocol", "envoy", "all"], default="metaprotocol",
                   help="also check what stock Envoy's filters can express (envoy, all); default %(default)s")  # fmt: skip
    e = sub.add_parser("envoy-bootstrap", help="print the bootstrap of a stock Envoy node of this aeraki-ctl")
    e.add_argument("--xds", type=_host_port, required=True, metavar="HOST:PORT", help="aeraki-ctl's xDS address as the node reaches it")
    e.add_argument("--node-id", required=True)
    e.add_argument("--cluster", default="aeraki-envoy", help="the node's cluster (default %(default)s)")
    e.add_argument("--admin-port", type=int, metavar="N", help="Envoy's admin API on 127.0.0.1:N")
    e.add_argument("--token-file", metavar="FILE", help="a token the CA grants an identity (sent as authorization: Bearer)")
    e.add_argument("--delta", action="store_true", help="incremental ADS (DELTA_GRPC)")
    e.add_argument("--format", choices=["yaml", "json"], default="yaml")
    s = sub.add_parser("serve", help="serve the configuration over xDS (ADS, gRPC) and follow changes")
    s.add_argument("--config-dir", help="a directory of YAML resources (optional with --kubernetes)")
    s.add_argument("--kubernetes", action="store_true", help="watch MetaRouters, ApplicationProtocols, ServiceEntries, DestinationRules, Services and EndpointSlices in Kubernetes")
    s.add_argument("--kubeconfig", metavar="FILE", help="with --kubernetes: this kubeconfig instead of the in-cluster configuration")
    s.add_argument("--namespace", action="append", default=[], metavar="NS", help="with --kubernetes: watch only this namespace (repeatable; default: all)")
    s.add_argument("--lease-namespace", metavar="NS", help="with --kubernetes: the namespace of the leader-election Lease (default: $POD_NAMESPACE, else aeraki)")
    s.add_argument("--lease-duration", type=int, default=15, metavar="SECONDS", help="with --kubernetes: the Lease's duration; renewed every third of it (default 15)")
    s.add_argument("--identity", help="with --kubernetes: this replica's name in the Lease (default: $POD_NAME or the host name, and the pid)")
    s.add_argument("--list-page-size", type=int, metavar="N", help="with --kubernetes: list in pages of N objects (limit/continue; default 500; 0: one whole list)")
    s.add_argument("--xds-address", default="127.0.0.1:15010")
    s.add_argument("--listen-address", default="127.0.0.1")
    s.add_argument("--port-offset", type=int, default=0)
    s.add_argument("--envoy-port-offset", type=int, default=0, metavar="N",
                   help="stock Envoy nodes listen on the port plus N (on top of --port-offset): both data planes on one host")  # fmt: skip
    s.add_argument("--workload-identity-dir", default=Options.identity_dir, metavar="DIR",
                   help="where proxies keep their workload certificate (DestinationRule ISTIO_MUTUAL); default %(default)s")  # fmt: skip
    s.add_argument("--root-namespace", default=Options.root_namespace, help="authorization policies here apply to every namespace (default %(default)s)")
    s.add_argument("--zookeeper", help="ZooKeeper HOST:PORT of a Dubbo registry (/dubbo/<interface>/providers)")
    s.add_argument("--admin", type=_host_port, metavar="HOST:PORT", help="serve the admin API (/healthz, /readyz, /proxies, /status, /metrics) here")
    s.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    s.add_argument("--webhook-port", type=int, help="also serve the validating admission webhook (HTTPS, /validate) on this port")
    s.add_argument("--webhook-address", default="0.0.0.0", help="the webhook's listen address (with --webhook-port)")
    s.add_argument("--tls-cert", help="PEM certificate chain: serve xDS over TLS (and the webhook, with --webhook-port)")
    s.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    s.add_argument("--client-ca", metavar="FILE", help="xDS over mTLS: require proxies' client certificates signed by this PEM CA")
    s.add_argument("--xds-plaintext", action="store_true", help="keep xDS plaintext even with --tls-cert (the certificate is then the webhook's only)")
    _ca_flags(s)
    w = sub.add_parser("webhook", help="serve the validating admission webhook (AdmissionReview v1 at /validate, HTTPS)")
    w.add_argument("--port", type=int, default=9443)
    w.add_argument("--address", default="0.0.0.0")
    w.add_argument("--tls-cert", required=True, help="PEM certificate chain")
    w.add_argument("--tls-key", required=True, help="PEM private key")
    w.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    ps = sub.add_parser("proxy-status", help="per connected proxy: SYNCED / STALE / NACKED per resource type, and NACK reasons")
    ps.add_argument("--admin", type=_host_port, metavar="HOST:PORT", required=True, help="aeraki-ctl serve's --admin address")
    st = sub.add_parser("status", help="each object's state and problems; exits 1 when any is not accepted")
    st.add_argument("--admin", type=_host_port, metavar="HOST:PORT", required=True, help="aeraki-ctl serve's --admin address")
    rl = sub.add_parser("ratelimit", help="run the global rate limit service (Envoy's RLS API, counters in Redis)")
    rl.add_argument("--config", required=True, help="YAML: domain and descriptors, as envoyproxy/ratelimit")
    rl.add_argument("--redis", default="127.0.0.1:6379")
    rl.add_argument("--address", default="127.0.0.1:8081")
    rl.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    args = parser.parse_args(argv)
    if args.command == "serve" and not args.config_dir and not args.kubernetes:
        parser.error("serve needs --config-dir, --kubernetes, or both")
    if args.command == "serve" and (args.kubeconfig or args.namespace or args.lease_namespace or args.identity or args.list_page_size is not None) and not args.kubernetes:
        parser.error("--kubeconfig, --namespace, --lease-namespace, --identity and --list-page-size go with --kubernetes")
    if args.command == "serve" and args.list_page_size is not None and args.list_page_size < 0:
        parser.error("--list-page-size must be 0 (no pages) or more")
    if args.command == "serve" and (problem := _ca_problem(args)):
        parser.error(problem)
    if args.command == "serve" and args.lease_duration < 1:
        parser.error("--lease-duration must be at least 1 (seconds)")
    if args.command == "ratelimit":
        try:
            return _ratelimit(args)
        except MissingExtra as exc:
            print(f"aeraki-ctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "webhook":
        return _webhook(args)
    if args.command == "serve":
        if args.webhook_port is not None and not (args.tls_cert and args.tls_key):
            parser.error("--webhook-port needs --tls-cert and --tls-key")
        if bool(args.tls_cert) != bool(args.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        if args.client_ca and not args.tls_cert:
            parser.error("--client-ca needs --tls-cert and --tls-key (xDS over TLS)")
        try:
            return _serve(args)
        except MissingExtra as exc:
            print(f"aeraki-ctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "envoy-bootstrap":
        return _envoy_bootstrap(args)
    if args.command in ("proxy-status", "status"):
        from aeraki_ctl.admin_client import AdminUnreachable, object_status, proxy_status

        try:
            return (proxy_status if args.command == "proxy-status" else object_status)(f"{args.admin[0]}:{args.admin[1]}", sys.stdout)
        except AdminUnreachable as exc:
            print(f"aeraki-ctl {args.command}: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
    resources = load_directory(args.directory)
    if args.command == "validate":
        return _validate(resources, args.data_plane)
    result = translate(resources, _options(args))
    for line in report_lines(result.problems):
        print(line, file=sys.stderr)
    tree = to_bootstrap_tree(result.bootstrap)
    if args.format == "json":
        print(json.dumps(tree, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(tree, sort_keys=False), end="")
    return EXIT_INVALID if result.errors else 0  # something was skipped


def _envoy_bootstrap(args: argparse.Namespace) -> int:
    from aeraki_ctl.envoy.bootstrap import envoy_bootstrap

    token = ""
    if args.token_file:
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            print(f"aeraki-ctl envoy-bootstrap: cannot read {args.token_file}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    tree = envoy_bootstrap(args.xds, args.node_id, cluster=args.cluster, admin_port=args.admin_port, token=token, delta=args.delta)
    print(json.dumps(tree, indent=2) if args.format == "json" else yaml.safe_dump(tree, sort_keys=False), end="" if args.format == "yaml" else "\n")
    return 0


def _validate(resources: ResourceSet, data_plane: str) -> int:
    """Every problem of the resources, and with ``data_plane`` envoy/all every gap of stock
    Envoy's rendering; exit 1 when an object (or, for Envoy, a listener) would be rejected."""
    from aeraki_ctl.envoy.snapshot import EnvoySnapshotBuilder
    from aeraki_ctl.incremental import IncrementalTranslator

    translator = IncrementalTranslator()
    result = translator(resources)
    problems = list(result.problems)
    envoy_rejects = False
    if data_plane in ("envoy", "all"):
        builder = EnvoySnapshotBuilder()
        builder.build(translator.outputs, list(translator.outputs))
        gaps = builder.problems(translator.owner_of)
        envoy_rejects = any(p.fatal for p in gaps)
        problems.extend(gaps)
    for line in report_lines(problems):
        print(line)
    if result.errors or envoy_rejects:
        return EXIT_INVALID
    what = {"metaprotocol": "", "envoy": " (checked for Envoy too)", "all": " (checked for Envoy too)"}[data_plane]
    print(f"ok: {len(resources.resources)} resource(s), {len(result.bootstrap.listeners)} listener(s), {len(result.bootstrap.clusters)} cluster(s){what}")
    return 0


def _ratelimit(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from aeraki_ctl.ratelimit import serve

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        server, _ = await serve(args.config, args.redis, args.address)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)
        return 0

    return asyncio.run(run())


def _webhook(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal
    import ssl

    from aeraki_ctl.webhook import WebhookServer, tls_context

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tls = tls_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        print(f"aeraki-ctl webhook: cannot load the certificate or key: {exc}", file=sys.stderr)
        return EXIT_USAGE

    async def run() -> int:
        server = WebhookServer(tls)
        port = await server.start(args.address, args.port)
        logging.getLogger("aeraki_ctl").info("admission webhook on https://%s:%d/validate", args.address, port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.close()
        return 0

    return asyncio.run(run())


def _xds_tls(args: argparse.Namespace) -> ServerTls | None:
    """TLS on the xDS port from --tls-cert/--tls-key/--client-ca (None: plaintext)."""
    from aeraki_ctl.xds.server import ServerTls

    if args.xds_plaintext or not args.tls_cert:
        return None
    return ServerTls(args.tls_cert, args.tls_key, args.client_ca)


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from aeraki_ctl.controller import Controller, supervise
    from aeraki_ctl.sources import Source
    from aeraki_ctl.xds.server import AdsServer, start_server

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> int:
        zookeeper = None
        if args.zookeeper:  # first: a missing extra must stop us before anything listens
            from aeraki_ctl.sources.zookeeper import ZooKeeperSource

            zookeeper = ZooKeeperSource(args.zookeeper)
        sources: list[Source] = []
        elector = writer = None
        if args.kubernetes:  # also before listening: the extra, and the client configuration
            from aeraki_ctl.sources.kubernetes import KubernetesSource

            page = {} if args.list_page_size is None else {"list_page_size": args.list_page_size}
            kubernetes = KubernetesSource(kubeconfig=args.kubeconfig, namespaces=args.namespace, **page)
            await kubernetes.connect()
            sources.append(kubernetes)
            from aeraki_ctl.k8s_status import LeaderElector, StatusWriter

            elector = LeaderElector(kubernetes.api_client, args.lease_namespace, identity=args.identity, lease_duration=args.lease_duration)
            writer = StatusWriter(kubernetes.api_client, kubernetes.cache, lambda: elector.is_leader)
            elector.on_change(lambda leading: writer.wake() if leading else None)
        ca_service = _ca_service(args, kubernetes.api_client if args.kubernetes else None) if args.ca else None
        ads = AdsServer() if ca_service is None else _sds_server(ca_service)  # with the CA: Envoy's SDS over ADS too
        grpc_server, port = await start_server(ads, args.xds_address, services=[ca_service.handler()] if ca_service else [], tls=_xds_tls(args))
        where = [w for w in (args.config_dir, "Kubernetes" if args.kubernetes else None, args.zookeeper) if w]
        logging.getLogger("aeraki_ctl").info("xDS (ADS) on port %d, resources from %s", port, ", ".join(where))
        controller = Controller(args.config_dir, ads, _options(args), zookeeper=zookeeper, sources=sources)
        stop = asyncio.Event()
        fatal: list[BaseException] = []

        def on_fatal(exc: BaseException) -> None:
            fatal.append(exc)
            stop.set()

        status_provider = controller.status
        writing = None
        if elector is not None and writer is not None:
            controller.on_sync.append(writer.observe)
            elector.start()
            writing = asyncio.ensure_future(writer.run())
            election = elector

            def status_provider() -> dict[str, object]:
                return {**controller.status(), "leader_election": election.status()}

        if ca_service is not None:
            status_provider = _with_ca_status(status_provider, ca_service)
        task = asyncio.ensure_future(supervise(controller.run, on_fatal))
        admin = None
        if args.admin:
            from aeraki_ctl.admin import AdminServer

            admin = AdminServer(ads, health=lambda: not task.done(), status_provider=status_provider)
            admin_port = await admin.start(*args.admin)
            logging.getLogger("aeraki_ctl").info("admin API on %s:%d", args.admin[0], admin_port)
        webhook = None
        if args.webhook_port is not None:
            from aeraki_ctl.webhook import WebhookServer, tls_context

            async def seen() -> ResourceSet:
                # the objects the controller sees, read on the loop: the sources' state is the loop's
                # (a --config-dir is read here too; keep it small, or use the standalone webhook)
                return controller.resources()

            webhook = WebhookServer(tls_context(args.tls_cert, args.tls_key), seen)
            webhook_port = await webhook.start(args.webhook_address, args.webhook_port)
            logging.getLogger("aeraki_ctl").info("admission webhook on https://%s:%d/validate", args.webhook_address, webhook_port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if writing is not None:
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        if elector is not None:
            await elector.stop(release=True)  # before the source closes the client
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if admin is not None:
            await admin.close()
        if webhook is not None:
            await webhook.close()
        await grpc_server.stop(1)
        return 1 if fatal else 0

    return asyncio.run(run())


def _options(args: argparse.Namespace) -> Options:
    """Translation options from translate's or serve's flags."""
    return Options(args.listen_address, args.port_offset, root_namespace=args.root_namespace, identity_dir=args.workload_identity_dir, trust_domain=args.trust_domain,
                   envoy_port_offset=getattr(args, "envoy_port_offset", 0))  # fmt: skip


def _ca_flags(s: argparse.ArgumentParser) -> None:
    """serve's CA flags (aeraki_ctl.ca; docs/security.md "Certificates from the control plane")."""
    g = s.add_argument_group("workload CA", "sign proxies' certificates (istio.v1.auth.IstioCertificateService on the xDS port)")
    g.add_argument("--ca", action="store_true", help="run the CA")
    g.add_argument("--ca-cert", metavar="FILE", help="the CA's PEM certificate (then its chain, the root last)")
    g.add_argument("--ca-key", metavar="FILE", help="the CA's PEM private key")
    g.add_argument("--ca-dir", metavar="DIR", help="without --ca-cert/--ca-key: keep a generated root CA here (made the first time)")
    g.add_argument("--trust-domain", default="cluster.local", help="the SPIFFE trust domain of the identities (default cluster.local)")
    g.add_argument("--ca-tokens", metavar="FILE", help="YAML/JSON identity -> token: who may get which identity (the default authenticator)")
    g.add_argument("--ca-authn", choices=["tokens", "kubernetes"],
                   help="tokens: --ca-tokens; kubernetes: TokenReview of service-account tokens (default: tokens, or kubernetes with --kubernetes and no --ca-tokens)")  # fmt: skip
    g.add_argument("--ca-workload-ttl", default="24h", metavar="DURATION", help="validity of a certificate when the request asks none (default 24h)")
    g.add_argument("--ca-max-workload-ttl", default="90d", metavar="DURATION", help="the longest validity granted (default 90d)")


def _ca_problem(args: argparse.Namespace) -> str | None:
    from aeraki_ctl.ca import parse_duration

    given = [f for f in ("ca_cert", "ca_key", "ca_dir", "ca_tokens", "ca_authn") if getattr(args, f)]
    if not args.ca:
        return f"--{given[0].replace('_', '-')} goes with --ca" if given else None
    if bool(args.ca_cert) != bool(args.ca_key):
        return "--ca-cert and --ca-key go together"
    if not args.ca_cert and not args.ca_dir:
        return "--ca needs --ca-cert and --ca-key, or --ca-dir (a generated root is kept there)"
    authn = args.ca_authn or ("tokens" if args.ca_tokens or not args.kubernetes else "kubernetes")
    if authn == "tokens" and not args.ca_tokens:
        return "--ca needs --ca-tokens FILE (or --ca-authn kubernetes with --kubernetes)"
    if authn == "kubernetes" and not args.kubernetes:
        return "--ca-authn kubernetes needs --kubernetes"
    args.ca_authn = authn
    try:
        args.ca_workload_ttl = parse_duration(str(args.ca_workload_ttl))
        args.ca_max_workload_ttl = parse_duration(str(args.ca_max_workload_ttl))
    except ValueError as exc:
        return f"--ca-workload-ttl/--ca-max-workload-ttl: {exc}"
    return None


def _ca_service(args: argparse.Namespace, api_client: object) -> CertificateService:
    """The CA service of ``serve --ca`` (its errors stop serve before anything listens)."""
    import logging

    from aeraki_ctl.authn import Authenticator, TokenReviewAuthenticator, load_tokens
    from aeraki_ctl.ca import CAError, CertificateAuthority, CertificateService

    options = {"trust_domain": args.trust_domain, "default_ttl": args.ca_workload_ttl, "max_ttl": args.ca_max_workload_ttl}
    try:
        if args.ca_cert:
            ca = CertificateAuthority.from_files(args.ca_cert, args.ca_key, **options)
        else:
            ca = CertificateAuthority.in_directory(args.ca_dir, **options)
        authn: Authenticator = load_tokens(args.ca_tokens) if args.ca_authn == "tokens" else TokenReviewAuthenticator(api_client, args.trust_domain)
    except (CAError, ValueError) as exc:
        raise SystemExit(f"aeraki-ctl serve: {exc}") from exc
    logging.getLogger("aeraki_ctl").info("CA for trust domain %s (%s), authenticating by %s", args.trust_domain, args.ca_cert or args.ca_dir, args.ca_authn)
    return CertificateService(ca, authn)


def _with_ca_status(provider: Callable[[], dict[str, object]], service: CertificateService) -> Callable[[], dict[str, object]]:
    """/status with the CA's counters under "ca"."""

    def status() -> dict[str, object]:
        return {**provider(), "ca": service.metrics()}

    return status


def _sds_server(service: CertificateService) -> AdsServer:
    from aeraki_ctl.xds.sds import SdsAdsServer, SecretSource

    return SdsAdsServer(SecretSource(service))


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


if __name__ == "__main__":
    sys.exit(main())
