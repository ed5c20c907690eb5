"""The proxy's ADS client: subscribe, convert, apply atomically, ACK or NACK, reconnect.

Listeners and clusters are subscribed as wildcards; the routes and endpoints they name follow.
A configuration is applied only when it is complete (every listener has its route table, every
cluster its endpoints). Acceptance is per resource, as Envoy's for CDS and LDS: in an update whose
resources are partly invalid (conversion fails, the listener's codec is unknown or cannot carry its
routes, a listener cannot bind), the valid ones are applied, each rejected one keeps its previous
version (one never valid is not served), and the update is NACKed naming every rejected resource
with its reason. A lost control plane leaves the last good configuration serving until it returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2

from metaprotocol import __version__
from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import Bootstrap, DownstreamTls, ListenerConfig, RouteConfig, UpstreamTls
from metaprotocol.io.proxy import listener_factory
from metaprotocol.xds import convert
from metaprotocol.xds.status import Nack, XdsStatus

if TYPE_CHECKING:
    from metaprotocol.registry import CodecRegistry

log = logging.getLogger(__name__)
INVALID_ARGUMENT = 3
NODE_METADATA: dict[str, str] = {}  # metaprotocol proxy --node-metadata: for clients not given their own
Queue = asyncio.Queue[Any]  # of DiscoveryRequest (state of the world) or DeltaDiscoveryRequest (delta)


class _Serving(Protocol):
    @property
    def config(self) -> ListenerConfig: ...


class ConfigTarget(Protocol):
    """What the client keeps in step: a Proxy, or the parent of worker processes
    (metaprotocol.io.workers.Supervisor), which hands each configuration to its workers."""

    registry: CodecRegistry
    xds: XdsStatus | None

    @property
    def bootstrap(self) -> Bootstrap: ...

    @property
    def contexts(self) -> Mapping[str, _Serving]: ...

    async def apply(self, bootstrap: Bootstrap, unbound: dict[str, str] | None = None) -> None: ...


@dataclass(frozen=True)
class XdsTls:
    """TLS to the xDS server (``metaprotocol proxy --xds-ca F [--xds-cert F --xds-key F]``): the
    CA that signed the server's certificate, and a client certificate when the server asks for one
    (``aeraki-ctl serve --client-ca``). The files are read at every connect, so a renewed
    certificate is used from the next reconnect."""

    ca: str
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None  # the name checked against the server's certificate (default: the host)

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from the files as they are now."""

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca), private_key=read(self.key), certificate_chain=read(self.cert))


XDS_TLS: XdsTls | None = None
"""The process's TLS settings for xDS (and the CA on the same port); None: plaintext. Set by the CLI."""


def open_channel(address: str, tls: XdsTls | None = None) -> grpc.aio.Channel:
    """A gRPC channel to the xDS server: over TLS with ``tls`` (default: :data:`XDS_TLS`), else plaintext."""
    tls = tls if tls is not None else XDS_TLS
    if tls is None:
        return grpc.aio.insecure_channel(address)
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.aio.secure_channel(address, tls.credentials(), options=options)


class AdsClient:
    """Keeps a Proxy (or a Supervisor of workers) in step with an ADS server."""

    def __init__(self, proxy: ConfigTarget, address: str, node_id: str, cluster: str = "metaprotocol", delta: bool = False,
                 metadata: Mapping[str, str] | None = None, tls: XdsTls | None = None) -> None:  # fmt: skip
        self.proxy = proxy
        self.tls = tls
        self.address = address
        # The user agent tells a control plane serving Envoy too which data plane this is.
        self.node = base_pb2.Node(id=node_id, cluster=cluster, user_agent_name="metaprotocol", user_agent_version=__version__)
        self.node.metadata.update(node_metadata(NODE_METADATA if metadata is None else metadata))
        self.listeners: dict[str, ListenerConfig] = {}
        self.routes: dict[str, RouteConfig] = {}
        self.clusters: dict[str, cluster_pb2.Cluster] = {}
        self.endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        self.versions: dict[str, str] = {}
        self.applied = 0
        self.nacks: list[str] = []
        self.connected = asyncio.Event()
        self.status = XdsStatus(address, node_id)
        proxy.xds = self.status
        self._subscribed: dict[str, list[str]] = {}
        self._never_valid: dict[str, set[str]] = {}  # per type: names rejected and never accepted
        self._applied_once = False
        self.delta = delta  # incremental xDS (DeltaAggregatedResources) instead of state of the world
        self._held_versions: dict[str, dict[str, str]] = {}  # delta: per type, resource -> version accepted

    async def run(self) -> None:
        """Stream forever, reconnecting with back-off (0.2 s doubling to 5 s)."""
        delay = 0.2
        while True:
            try:
                await (self._stream_delta() if self.delta else self._stream())
                delay = 0.2
            except (grpc.aio.AioRpcError, ConnectionError, OSError) as exc:
                reason = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc
                log.warning("ADS stream to %s lost (%s); serving the last good configuration", self.address, reason)
            self.connected.clear()
            self.status.connected = False
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _stream(self) -> None:
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await queue.get()

        async with open_channel(self.address, self.tls) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(requests())
            self._subscribed = {}
            for type_url in (convert.CLUSTER_TYPE, convert.LISTENER_TYPE):
                self._subscribe(queue, type_url, [])
            # Resubscribe to what we knew, with the versions we have (a reconnect).
            self._subscribe(queue, convert.ENDPOINT_TYPE, sorted(self.clusters))
            self._subscribe(queue, convert.ROUTE_TYPE, sorted({lst.rds_name for lst in self.listeners.values() if lst.rds_name}))
            async for response in call:
                self.connected.set()
                self.status.connected = True
                await self._on_update(queue, response.type_url, response.resources, None, response.version_info, response.nonce)

    async def _stream_delta(self) -> None:
        queue: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()

        async def requests() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
            while True:
                yield await queue.get()

        async with open_channel(self.address, self.tls) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources(requests())
            self._subscribed = {}
            for type_url in (convert.CLUSTER_TYPE, convert.LISTENER_TYPE):  # wildcard, with what we hold (a reconnect)
                queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=type_url, initial_resource_versions=self._held_versions.get(type_url, {})))
                self._subscribed[type_url] = []
            self._follow(queue, convert.LISTENER_TYPE)
            self._follow(queue, convert.CLUSTER_TYPE)
            async for response in call:
                self.connected.set()
                self.status.connected = True
                versions = {res.name: res.version for res in response.resources}
                await self._on_update(queue, response.type_url, [res.resource for res in response.resources], list(response.removed_resources),
                                      response.system_version_info, response.nonce, versions)  # fmt: skip

    def _subscribe(self, queue: asyncio.Queue[discovery_pb2.DiscoveryRequest], type_url: str, names: list[str], version: str = "", nonce: str = "", error: str | None = None) -> None:
        if type_url in (convert.ROUTE_TYPE, convert.ENDPOINT_TYPE) and not names and type_url not in self._subscribed:
            return
        req = discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url, resource_names=names, version_info=version or self.versions.get(type_url, ""), response_nonce=nonce)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        self._subscribed[type_url] = names
        queue.put_nowait(req)

    async def _on_update(
        self,
        queue: Queue,
        t: str,
        resources: Sequence[any_pb2.Any],
        removed: Sequence[str] | None,
        version: str,
        nonce: str,
        resource_versions: Mapping[str, str] | None = None,
    ) -> None:
        """Apply the valid resources of an update; ACK it, or NACK it naming each rejected one.
        ``removed`` is None for a state-of-the-world response (wildcard types: the whole set),
        the names removed for a delta one (every type: changes only)."""
        names = self._subscribed.get(t, [])
        staged, reasons = self._convert(t, resources, removed)
        reasons.update(self._check(t, staged))
        unbound: dict[str, str] = {}
        try:
            candidate = self._assemble(staged)
            if candidate is not None:
                await self.proxy.apply(candidate, unbound)
                self.applied += 1
                self._applied_once = True
        except (convert.ConversionError, ConfigError, ValueError) as exc:  # the update as a whole: nothing applied
            self._nack(queue, t, names, version, nonce, {"(update)": str(exc)})
            return
        if unbound:  # a listener that cannot bind here is rejected; the next update of it retries
            listeners = dict(staged.get("listeners", self.listeners))  # type: ignore[call-overload]
            for name, reason in unbound.items():
                listeners.pop(name, None)
                reasons[name if t == convert.LISTENER_TYPE else f"listener {name}"] = reason
            staged["listeners"] = listeners
        self._commit(t, staged, reasons)
        if resource_versions is not None:
            held = self._held_versions.setdefault(t, {})
            for name in removed or ():
                held.pop(name, None)
            held.update((name, v) for name, v in resource_versions.items() if name not in reasons)
        if reasons:
            self._nack(queue, t, names, version, nonce, reasons)
        else:
            self.versions[t] = version
            self.status.record_ack(t, version)
            self._reply(queue, t, names, version, nonce)
        self._follow(queue, t)

    def _reply(self, queue: Queue, t: str, names: list[str], version: str, nonce: str, error: str | None = None) -> None:
        """ACK (or, with ``error``, NACK) the response ``nonce``."""
        if not self.delta:
            self._subscribe(queue, t, names, version, nonce, error)
            return
        req = discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=t, response_nonce=nonce)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        queue.put_nowait(req)

    def _nack(self, queue: Queue, t: str, names: list[str], version: str, nonce: str, reasons: dict[str, str]) -> None:
        nack = Nack(version, nonce, reasons, time.time())
        message = nack.message(t)
        log.error("rejecting update: %s", message)
        self.nacks.append(message)
        self.status.record_nack(t, nack)
        self._reply(queue, t, names, self.versions.get(t, ""), nonce, message)

    def _follow(self, queue: Queue, t: str) -> None:
        """Subscribe to the route tables the listeners name and the endpoints of the clusters."""
        if t == convert.LISTENER_TYPE:
            self._want(queue, convert.ROUTE_TYPE, sorted({lst.rds_name for lst in self.listeners.values() if lst.rds_name}))
        elif t == convert.CLUSTER_TYPE:
            self._want(queue, convert.ENDPOINT_TYPE, sorted(self.clusters))

    def _want(self, queue: Queue, t: str, wanted: list[str]) -> None:
        before = self._subscribed.get(t)
        if wanted == before:
            return
        if not self.delta:
            self._subscribe(queue, t, wanted)
            return
        if not wanted and before is None:
            return
        held = self._held_versions.get(t, {})
        subscribe = sorted(set(wanted) - set(before or ()))
        unsubscribe = sorted(set(before or ()) - set(wanted))
        initial = {n: held[n] for n in subscribe if n in held} if before is None else {}
        queue.put_nowait(discovery_pb2.DeltaDiscoveryRequest(node=self.node, type_url=t, resource_names_subscribe=subscribe,
                                                             resource_names_unsubscribe=unsubscribe, initial_resource_versions=initial))  # fmt: skip
        self._subscribed[t] = wanted

    def _convert(self, t: str, resources: Sequence[any_pb2.Any], removed: Sequence[str] | None) -> tuple[dict[str, object], dict[str, str]]:
        """The state this update would lead to (nothing is changed yet), and the resources it
        rejects with their reasons. A rejected resource keeps its previous version, if any."""
        reasons: dict[str, str] = {}

        def merged(previous: Mapping[str, Any], fresh: dict[str, Any], wildcard: bool) -> dict[str, Any]:
            if removed is None:  # state of the world: a wildcard type's response is the whole set
                return _keep_previous(fresh, previous, reasons) if wildcard else {**previous, **fresh}
            return {name: v for name, v in {**previous, **fresh}.items() if name not in removed}

        if t == convert.LISTENER_TYPE:
            return {"listeners": merged(self.listeners, _each(resources, listener_pb2.Listener, convert.listener_from_xds, reasons), True)}, reasons
        if t == convert.ROUTE_TYPE:  # routes and endpoints are named, not wildcard: updates merge
            return {"routes": merged(self.routes, _each(resources, route_pb2.RouteConfiguration, convert.route_config_from_xds, reasons), False)}, reasons
        if t == convert.CLUSTER_TYPE:
            return {"clusters": merged(self.clusters, _each(resources, cluster_pb2.Cluster, _valid_cluster, reasons), True)}, reasons
        if t == convert.ENDPOINT_TYPE:

            def valid_endpoints(cla: endpoint_pb2.ClusterLoadAssignment) -> endpoint_pb2.ClusterLoadAssignment:
                convert.cluster_from_xds(self.clusters.get(cla.cluster_name, cluster_pb2.Cluster(name=cla.cluster_name)), cla)
                return cla

            return {"endpoints": merged(self.endpoints, _each(resources, endpoint_pb2.ClusterLoadAssignment, valid_endpoints, reasons), False)}, reasons
        raise convert.ConversionError(f"unexpected type {t}")

    def _check(self, t: str, staged: dict[str, object]) -> dict[str, str]:
        """Check each changed listener against its codec with its route table (codec known, its
        config valid, the routes expressible); a failure rejects the resource of this update
        (the listener, or the route table) and puts back its previous version."""
        reasons: dict[str, str] = {}
        if t == convert.LISTENER_TYPE:
            listeners: dict[str, ListenerConfig] = staged["listeners"]  # type: ignore[assignment]
            for name, lst in list(listeners.items()):
                if lst == self.listeners.get(name):
                    continue
                error = self._codec_problem(lst, self.routes.get(lst.rds_name or "")) or self._bind_problem(lst) or _tls_problem(lst.tls)
                if error is not None:
                    reasons[name] = error
                    _put_back(listeners, self.listeners, name)
        elif t == convert.CLUSTER_TYPE:
            clusters: dict[str, cluster_pb2.Cluster] = staged["clusters"]  # type: ignore[assignment]
            for name, c in list(clusters.items()):
                if c == self.clusters.get(name) or not c.HasField("transport_socket"):
                    continue
                error = _tls_problem(convert.cluster_from_xds(c, None).tls)
                if error is not None:
                    reasons[name] = error
                    _put_back(clusters, self.clusters, name)
        elif t == convert.ROUTE_TYPE:
            routes: dict[str, RouteConfig] = staged["routes"]  # type: ignore[assignment]
            for name, rc in list(routes.items()):
                if rc == self.routes.get(name):
                    continue
                for lst in self.listeners.values():
                    error = self._codec_problem(lst, rc) if lst.rds_name == name else None
                    if error is not None:
                        reasons[name] = error
                        _put_back(routes, self.routes, name)
                        break
        return reasons

    def _codec_problem(self, lst: ListenerConfig, routes: RouteConfig | None) -> str | None:
        try:
            listener_factory(replace(lst, route_config=routes), self.proxy.registry, "xds", f"listener {lst.name}")
        except ConfigError as exc:
            return f"{exc.path}: {exc.reason}"
        return None

    def _bind_problem(self, lst: ListenerConfig) -> str | None:
        """Why a listener's new address cannot be bound here, found when it arrives (as Envoy binds
        at LDS time), not when its route table completes it."""
        ctx = self.proxy.contexts.get(lst.name)
        if lst.port == 0 or (ctx is not None and (ctx.config.address, ctx.config.port) == (lst.address, lst.port)):
            return None
        if lst.name in getattr(self.proxy, "inherited", ()):  # its socket was taken over from the previous process (hot restart)
            return None
        try:
            with socket.socket(socket.AF_INET6 if ":" in lst.address else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((lst.address, lst.port))
        except OSError as exc:
            return f"cannot listen on {lst.address}:{lst.port}: {exc}"
        return None

    def _commit(self, t: str, staged: dict[str, object], reasons: dict[str, str]) -> None:
        for key, value in staged.items():
            setattr(self, key, value)
        by_type: dict[str, Mapping[str, object]] = {convert.LISTENER_TYPE: self.listeners, convert.ROUTE_TYPE: self.routes, convert.CLUSTER_TYPE: self.clusters, convert.ENDPOINT_TYPE: self.endpoints}
        held = by_type[t]
        never = self._never_valid.setdefault(t, set())
        never.difference_update(held)
        never.update(name for name in reasons if name not in held)

    def _assemble(self, staged: dict[str, object]) -> Bootstrap | None:
        """The whole configuration with ``staged`` applied, or None while it is incomplete."""
        listeners: dict[str, ListenerConfig] = staged.get("listeners", self.listeners)  # type: ignore[assignment]
        routes: dict[str, RouteConfig] = staged.get("routes", self.routes)  # type: ignore[assignment]
        clusters: dict[str, cluster_pb2.Cluster] = staged.get("clusters", self.clusters)  # type: ignore[assignment]
        endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = staged.get("endpoints", self.endpoints)  # type: ignore[assignment]
        if self._applied_once and all(getattr(self, key) == value for key, value in staged.items()):
            return None  # nothing changed (everything new was rejected)
        # A listener whose route table was only ever rejected is not served; a cluster whose
        # endpoints were is served with none. Anything else missing: wait for it.
        bad_routes = self._never_valid.get(convert.ROUTE_TYPE, set())
        bad_endpoints = self._never_valid.get(convert.ENDPOINT_TYPE, set())
        served = [(lst, lst.rds_name) for lst in listeners.values() if lst.rds_name and lst.rds_name not in bad_routes]
        if any(rds not in routes for _, rds in served) or any(name not in endpoints and name not in bad_endpoints for name in clusters):
            return None
        return Bootstrap(
            tuple(replace(lst, route_config=routes[rds]) for lst, rds in served),
            tuple(convert.cluster_from_xds(c, endpoints.get(name)) for name, c in sorted(clusters.items())),
            self.proxy.bootstrap.admin,
            f"xds://{self.address}",
        )


def node_metadata(pairs: Mapping[str, str]) -> dict[str, object]:
    """Node metadata as Istio's sidecars send it: ``LABELS`` a map (given as a JSON object or
    ``k=v,k=v``), every other key a string."""
    out: dict[str, object] = dict(pairs)
    labels = pairs.get("LABELS")
    if labels is not None:
        try:
            parsed = json.loads(labels) if labels.strip().startswith("{") else dict(kv.split("=", 1) for kv in labels.split(",") if "=" in kv)
        except ValueError as exc:
            raise ValueError(f"LABELS {labels!r} is neither a JSON object nor k=v,k=v: {exc}") from exc
        out["LABELS"] = {str(k): str(v) for k, v in parsed.items()}
    return out


def _each(resources: Sequence[any_pb2.Any], message_type: Any, make: Callable[[Any], Any], reasons: dict[str, str]) -> dict[str, Any]:  # noqa: ANN401 - generated protobuf classes are untyped
    """``make`` of each resource by name; a resource it fails on goes to ``reasons`` instead."""
    out: dict[str, Any] = {}
    for i, packed in enumerate(resources):
        message = message_type()
        try:
            unpacked = packed.Unpack(message)
        except DecodeError as exc:  # corrupt bytes: this resource is rejected alone
            reasons[f"resources[{i}]"] = f"cannot be decoded: {exc}"
            continue
        if not unpacked:
            reasons[f"resources[{i}]"] = f"{packed.type_url} is not a {message_type.DESCRIPTOR.full_name}"
            continue
        name = message.cluster_name if message_type is endpoint_pb2.ClusterLoadAssignment else message.name
        try:
            out[name] = make(message)
        except Exception as exc:  # noqa: BLE001 - any failure on one resource rejects that resource alone
            reasons[name] = str(exc) or type(exc).__name__
    return out


def _keep_previous(fresh: dict[str, Any], previous: Mapping[str, Any], reasons: dict[str, str]) -> dict[str, Any]:
    """A wildcard type's new state: what was accepted, and the previous version of what was rejected."""
    out = dict(fresh)
    for name in reasons:
        if name in previous:
            out[name] = previous[name]
    return out


def _put_back(staged: dict[str, Any], previous: Mapping[str, Any], name: str) -> None:
    if name in previous:
        staged[name] = previous[name]
    else:
        staged.pop(name, None)


def _tls_problem(config: DownstreamTls | UpstreamTls | None) -> str | None:
    """Why a listener's or cluster's TLS context cannot be made here (a certificate file missing,
    a key not matching): the resource is rejected alone, as Envoy rejects it."""
    if config is None:
        return None
    from metaprotocol.io.tls import TlsConfigError, build_context

    try:
        build_context(config)
    except TlsConfigError as exc:
        return f"transport_socket: {exc}"
    return None


def _valid_cluster(c: cluster_pb2.Cluster) -> cluster_pb2.Cluster:
    convert.cluster_from_xds(c, None)  # raises if it cannot be served
    return c
