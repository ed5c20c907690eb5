"""Aggregated Discovery Service over gRPC (asyncio): state-of-the-world and delta.

Per stream and per type it keeps the subscription, the last nonce sent, the version the client
ACKed and the version it NACKed. A response goes out when the client has not seen the current
version of what it subscribed to; a NACKed version is not sent again (the next different version
is); requests carrying a stale nonce are ignored, as the xDS protocol says.

Work per snapshot is proportional to what changed: ``set_snapshot`` takes the changed names (from
the snapshot, or by comparing when it does not say), updates the scoped views, and adds to each
watch the changed names it holds (``pending``). A state-of-the-world response for routes or
endpoints then carries only those when the stream holds an earlier version (the client merges
them; the full set on a new subscription and after a NACK); listeners and clusters carry the
whole (scoped) set, as the protocol requires. Delta responses carry changes and removals only.
A proxy's scope is the Istio Sidecar that applies to it (``aeraki_ctl.sidecar``), from the
namespace and labels in its node metadata; proxies of one scope (and data plane) share one view.

One server speaks to two data planes, each from its own snapshot of the same resources: our
proxy (MetaProtocol listeners) and stock Envoy (its own dubbo/thrift/redis filters,
``aeraki_ctl.envoy``). A stream's data plane is decided by its node once (``data_plane_of``):
node metadata ``DATA_PLANE: envoy`` (or ``metaprotocol``) says it; without it a node whose user
agent is Envoy's is Envoy. The first stream of a data plane calls the ``on_data_plane`` hooks (the
controller then starts making that data plane's snapshots).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from google.protobuf import json_format

from aeraki_ctl.envoy.common import ENVOY_ROUTE_TYPES
from aeraki_ctl.sidecar import Scope, node_identity
from aeraki_ctl.xds.snapshot import TYPES, Resource, Snapshot, token, version_of
from aeraki_ctl.xds.views import View, ViewCache
from metaprotocol.xds import convert
from metaprotocol.xds.status import short_name

log = logging.getLogger(__name__)
WILDCARD_TYPES = frozenset({convert.LISTENER_TYPE, convert.CLUSTER_TYPE})
Req = TypeVar("Req", discovery_pb2.DiscoveryRequest, discovery_pb2.DeltaDiscoveryRequest)
Resp = TypeVar("Resp", discovery_pb2.DiscoveryResponse, discovery_pb2.DeltaDiscoveryResponse)


METAPROTOCOL: Final = "metaprotocol"  # our proxy
ENVOY: Final = "envoy"  # stock Envoy
DATA_PLANES: Final = (METAPROTOCOL, ENVOY)
SYNCED: Final = "SYNCED"  # the client ACKed the last response sent
STALE: Final = "STALE"  # a response was sent and not yet ACKed or NACKed
NACKED: Final = "NACKED"  # the client NACKed the last response sent
NOT_SENT: Final = "NOT SENT"  # subscribed (or not), nothing sent yet
_WORSE: Final = {SYNCED: 0, NOT_SENT: 1, STALE: 2, NACKED: 3}
PUSH_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class _Watch:
    """One type on one stream."""

    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    nonce: str = ""
    sent_version: str = ""
    acked_version: str = ""
    nacked_version: str = ""
    sent: dict[str, str] = field(default_factory=dict)  # delta: resource name -> version sent
    pending: set[str] = field(default_factory=set)  # names changed since the last response
    full: bool = True  # the next response carries every resource (a new subscription, after a NACK)
    digest: int = 0  # named subscriptions: the sum of the tokens of what they name
    state: str = NOT_SENT
    requested_at: float = 0.0  # monotonic time of the last request of this type
    nack_message: str = ""  # the error_detail of the last NACK
    nack_nonce: str = ""
    nack_time: float = 0.0  # wall clock


@dataclass
class StreamInfo:
    """What the server knows of one connected client (exposed for tests and the admin API)."""

    node_id: str = ""
    watches: dict[str, _Watch] = field(default_factory=dict)
    acks: int = 0
    nacks: list[str] = field(default_factory=list)
    peer: str = ""
    kind: str = "sotw"  # or "delta"
    connected_since: float = field(default_factory=time.time)
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    scope: Scope | None = None  # the Sidecar that applies; None: it sees everything
    scoped: bool = False  # the scope was resolved (from the first request with a node)
    data_plane: str = METAPROTOCOL

    def as_dict(self) -> dict[str, object]:
        """The stream's state per resource type, for ``/proxies``."""
        types: dict[str, object] = {}
        for type_url, w in sorted(self.watches.items(), key=lambda item: short_name(item[0])):
            nack = None
            if w.nack_message:
                nack = {"version": w.nacked_version, "nonce": w.nack_nonce, "message": w.nack_message, "time": _iso(w.nack_time)}
            short = short_name(type_url)
            if short in types and _WORSE.get(str(types[short]["state"]), 0) >= _WORSE.get(w.state, 0):  # type: ignore[index]
                continue  # two route types under one name (an Envoy node with Dubbo and Thrift): the worse state shows
            types[short] = {
                "type_url": type_url,
                "state": w.state,
                "sent_version": w.sent_version,
                "sent_nonce": w.nonce,
                "acked_version": w.acked_version,
                "nack": nack,
            }
        return {
            "node_id": self.node_id,
            "data_plane": self.data_plane,
            "namespace": self.namespace,
            "sidecar": self.scope.ref if self.scope is not None else "",
            "peer": self.peer,
            "stream": self.kind,
            "connected_since": _iso(self.connected_since),
            "acks": self.acks,
            "nacks": len(self.nacks),
            "types": types,
        }


def data_plane_of(node: object) -> str:
    """The data plane a node is: its metadata ``DATA_PLANE`` (``envoy`` or ``metaprotocol``, any
    case) when present, else Envoy when its user agent is Envoy's, else our proxy."""
    metadata = getattr(node, "metadata", None)
    if metadata is not None and "DATA_PLANE" in metadata.fields:
        said = str(json_format.MessageToDict(metadata).get("DATA_PLANE", "")).strip().lower()
        if said in DATA_PLANES:
            return said
        log.warning("node %s: DATA_PLANE %r is neither %s nor %s; deciding by its user agent", getattr(node, "id", ""), said, ENVOY, METAPROTOCOL)
    return ENVOY if getattr(node, "user_agent_name", "") == "envoy" else METAPROTOCOL


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass
class ServerMetrics:
    """Counters of the ADS server, rendered by the admin API's ``/metrics``."""

    pushes: Counter[str] = field(default_factory=Counter)  # responses sent, per type
    acks: Counter[str] = field(default_factory=Counter)
    nacks: Counter[str] = field(default_factory=Counter)
    snapshots: int = 0  # snapshots published (with a change)
    push_buckets: list[int] = field(default_factory=lambda: [0] * len(PUSH_BUCKETS))
    push_count: int = 0
    push_sum: float = 0.0

    def observe_push(self, type_url: str, seconds: float) -> None:
        """One response sent, ``seconds`` after what made it due (a snapshot or a request)."""
        self.pushes[type_url] += 1
        self.push_count += 1
        self.push_sum += seconds
        for i, bound in enumerate(PUSH_BUCKETS):
            if seconds <= bound:
                self.push_buckets[i] += 1


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves the current snapshot to every stream, pushing changes as they are set."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.snapshots: dict[str, Snapshot] = {METAPROTOCOL: snapshot or Snapshot(), ENVOY: Snapshot()}
        self.data_planes_seen: set[str] = set()
        self.on_data_plane: list[Callable[[str], None]] = []  # called when a data plane's first stream says what it is
        self._changed = asyncio.Condition()
        self._generation = 0
        self._nonces = itertools.count(1)
        self.streams: dict[int, StreamInfo] = {}
        self._stream_ids = itertools.count(1)
        self.published = False  # a snapshot was set (the controller's first sync is done)
        self.metrics = ServerMetrics()
        self._published_at = time.monotonic()
        self.views = ViewCache()  # our proxies' Sidecar views
        self.envoy_views = ViewCache(ENVOY_ROUTE_TYPES)  # Envoy nodes' (their route tables are Envoy's filters')
        self.ack_hooks: list[Callable[[StreamInfo, str], None]] = []  # called on every ACK (bench, tests)

    @property
    def snapshot(self) -> Snapshot:
        """What our proxies are served."""
        return self.snapshots[METAPROTOCOL]

    def install(self, snapshot: Snapshot, data_plane: str) -> None:
        """Set a data plane's first snapshot at once, from an ``on_data_plane`` hook: its first
        stream (the one being read) holds nothing yet, so nothing is to be compared or marked."""
        self.snapshots[data_plane] = snapshot

    def _snap(self, info: StreamInfo) -> Snapshot:
        return self.snapshots[info.data_plane]

    async def set_snapshot(self, snapshot: Snapshot, data_plane: str = METAPROTOCOL) -> None:
        """Publish a new snapshot for one data plane; its streams push what changed for them."""
        if data_plane == METAPROTOCOL:
            self.published = True
        old = self.snapshots[data_plane]
        streams = [info for info in self.streams.values() if info.data_plane == data_plane]
        views = self._views(data_plane)
        if snapshot.versions == old.versions and snapshot.scopes == old.scopes and snapshot.hosts == old.hosts:
            if snapshot.base == old.serial:  # the same content: follow it, so the next one's changes apply
                views.update(old, snapshot, {}, (), (info.scope for info in streams))
                self.snapshots[data_plane] = snapshot
            return
        if snapshot.base == old.serial:
            changed: dict[str, Collection[str]] = dict(snapshot.changed)
            hosts: Iterable[str] = snapshot.changed_hosts
        else:  # not made from the one served: compare
            changed = {t: _differ(old.of(t), snapshot.of(t)) for t in {*TYPES, *old.resources, *snapshot.resources}}
            hosts = {h for h in {*(old.hosts or {}), *(snapshot.hosts or {})} if (old.hosts or {}).get(h) != (snapshot.hosts or {}).get(h)}
        moved = views.update(old, snapshot, changed, hosts, (info.scope for info in streams))
        self.snapshots[data_plane] = snapshot
        for info in streams:
            if snapshot.scopes != old.scopes or (snapshot.hosts is None) != (old.hosts is None):
                self._rescope(info)
            else:
                self._mark(info, old, changed, moved.get(info.scope, {}) if info.scope is not None else {})
        self.metrics.snapshots += 1
        self._published_at = time.monotonic()
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def _views(self, data_plane: str) -> ViewCache:
        return self.envoy_views if data_plane == ENVOY else self.views

    def _view(self, info: StreamInfo) -> View | None:
        snap = self._snap(info)
        if info.scope is None or snap.hosts is None:
            return None
        return self._views(info.data_plane).get(info.scope, snap)

    def _resolve_scope(self, info: StreamInfo, node: object) -> None:
        """The proxy's namespace, labels and Sidecar scope, from the first request with a node."""
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}  # type: ignore[attr-defined]
        info.namespace, info.labels = node_identity(info.node_id, metadata)
        info.data_plane = data_plane_of(node)
        info.scoped = True
        if info.data_plane not in self.data_planes_seen:
            self.data_planes_seen.add(info.data_plane)
            for hook in self.on_data_plane:
                hook(info.data_plane)
        self._rescope(info)

    def _rescope(self, info: StreamInfo) -> None:
        """Find the stream's scope again (Sidecars changed): its next responses are whole."""
        snap = self._snap(info)
        scope = snap.scopes.scope_of(info.namespace, info.labels) if info.scoped and snap.hosts is not None else None
        if scope == info.scope:
            return
        info.scope = scope
        for w in info.watches.values():
            if w.wildcard:  # named subscriptions do not depend on the scope
                w.full = True
                w.pending.clear()

    def _mark(self, info: StreamInfo, old: Snapshot, changed: Mapping[str, Collection[str]], moved: Mapping[str, set[str]]) -> None:
        """Add to each watch of a stream the changed names it holds (and keep named digests)."""
        view = self._view(info)
        for t, w in info.watches.items():
            names = changed.get(t, ())
            if w.wildcard:
                if view is None:
                    w.pending.update(names)
                else:
                    members = view.members[t]
                    w.pending.update(n for n in names if n in members or n in w.sent)
                    w.pending.update(moved.get(t, ()))
                continue
            before, after = old.of(t), self._snap(info).of(t)
            mine = [n for n in names if n in w.names] if len(w.names) > len(names) else [n for n in w.names if n in names]
            for n in mine:
                w.digest += _token(after, n) - _token(before, n)
            w.pending.update(mine)

    def _nonce(self) -> str:
        return str(next(self._nonces))

    # -- state of the world -------------------------------------------------------------------

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """One ADS stream (state of the world)."""
        async for response in self._stream(request_iterator, self._on_request, self._sotw_response, _peer(context), "sotw"):
            yield response

    async def _stream(
        self,
        requests: AsyncIterator[Req],
        on_request: Callable[[StreamInfo, Req], None],
        respond: Callable[[StreamInfo, str, _Watch], Resp | None],
        peer: str = "",
        kind: str = "sotw",
    ) -> AsyncIterator[Resp]:
        """The loop both ADS variants share: apply each request, and on every request or snapshot
        change answer each watched type that has something new for this stream."""
        sid = next(self._stream_ids)
        info = self.streams[sid] = StreamInfo(peer=peer, kind=kind)
        queue: asyncio.Queue[Req | None] = asyncio.Queue()
        reader = asyncio.ensure_future(self._read(requests, queue))
        waiter = asyncio.ensure_future(self._wait_change(queue))
        try:
            while True:
                req = await queue.get()
                if req is None and reader.done():
                    return
                if req is not None:
                    on_request(info, req)
                    if req.type_url in info.watches:
                        info.watches[req.type_url].requested_at = time.monotonic()
                for type_url, watch in info.watches.items():
                    response = respond(info, type_url, watch)
                    if response is not None:
                        watch.state = STALE
                        self.metrics.observe_push(type_url, time.monotonic() - max(self._published_at, watch.requested_at))
                        yield response
        finally:
            reader.cancel()
            waiter.cancel()
            self.streams.pop(sid, None)

    async def _read(self, requests: AsyncIterator[Req], queue: asyncio.Queue[Req | None]) -> None:
        try:
            async for req in requests:
                await queue.put(req)
        finally:
            await queue.put(None)

    async def _wait_change(self, queue: asyncio.Queue[Req | None]) -> None:
        seen = self._generation
        while True:
            async with self._changed:
                since = seen
                await self._changed.wait_for(lambda: self._generation != since)  # noqa: B023 - awaited here, never outlives the iteration
                seen = self._generation
            await queue.put(None)

    def _node(self, info: StreamInfo, req: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> None:
        if req.node.id:
            info.node_id = req.node.id
        if not info.scoped and req.HasField("node"):
            self._resolve_scope(info, req.node)

    def _on_request(self, info: StreamInfo, req: discovery_pb2.DiscoveryRequest) -> None:
        self._node(info, req)
        watch = info.watches.setdefault(req.type_url, _Watch())
        if req.response_nonce and req.response_nonce != watch.nonce:
            return  # a reply to an older response: ignore
        if req.response_nonce:
            if req.HasField("error_detail"):
                watch.nacked_version = watch.sent_version
                watch.full = True  # what it holds is not known: the next version goes whole
                self._record_nack(info, watch, req.type_url, req.response_nonce, req.error_detail.message)
            else:
                watch.acked_version = req.version_info
                self._record_ack(info, watch, req.type_url)
        names = set(req.resource_names)
        wildcard = req.type_url in WILDCARD_TYPES and (not names or "*" in names)
        if names != watch.names or wildcard != watch.wildcard:
            if wildcard != watch.wildcard or not watch.sent_version:
                watch.full = True
            watch.pending.update(names - watch.names)  # added names go to a stream that holds the others
            watch.names = names
            watch.wildcard = wildcard
            resources = self._snap(info).of(req.type_url)
            watch.digest = sum(_token(resources, n) for n in names)
            watch.sent_version = ""  # a new subscription gets a response

    def _record_ack(self, info: StreamInfo, watch: _Watch, type_url: str, current: bool = True) -> None:
        info.acks += 1
        self.metrics.acks[type_url] += 1
        if current:
            watch.state = SYNCED
        for hook in self.ack_hooks:
            hook(info, type_url)

    def _record_nack(self, info: StreamInfo, watch: _Watch, type_url: str, nonce: str, message: str, current: bool = True) -> None:
        info.nacks.append(f"{type_url}: {message}")
        self.metrics.nacks[type_url] += 1
        if current:
            watch.state = NACKED
            watch.nack_message, watch.nack_nonce, watch.nack_time = message, nonce, time.time()
        log.warning("NACK from %s for %s version %s: %s", info.node_id, type_url, watch.sent_version, message)

    def proxies(self) -> list[dict[str, object]]:
        """Every connected client and, per type, what was sent, ACKed and NACKed (``/proxies``)."""
        return [info.as_dict() for _, info in sorted(self.streams.items())]

    def _sotw_response(self, info: StreamInfo, type_url: str, watch: _Watch) -> discovery_pb2.DiscoveryResponse | None:
        version = self._version(info, type_url, watch)
        if version == watch.sent_version:
            watch.pending.clear()  # back to what it holds
            return None
        if version == watch.nacked_version:
            return None
        snap = self._snap(info)
        resources = snap.of(type_url)
        if watch.wildcard:
            view = self._view(info)
            chosen = view.listing(type_url, snap) if view is not None else [r.packed for r in resources.values()]
        else:
            names = watch.names if watch.full else watch.pending & watch.names
            chosen = [resources[n].packed for n in sorted(names) if n in resources]
        watch.nonce = self._nonce()
        watch.sent_version = version
        watch.pending.clear()
        watch.full = False
        return discovery_pb2.DiscoveryResponse(version_info=version, resources=chosen, type_url=type_url, nonce=watch.nonce)

    def _version(self, info: StreamInfo, type_url: str, watch: _Watch) -> str:
        """The version of what this watch sees (the whole type or its scope, or its names)."""
        if not watch.wildcard:
            return version_of(watch.digest)
        view = self._view(info)
        return view.version(type_url) if view is not None else self._snap(info).versions.get(type_url, "")

    # -- delta ----------------------------------------------------------------------------------

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        """One ADS stream (incremental)."""
        async for response in self._stream(request_iterator, self._on_delta_request, self._delta_response, _peer(context), "delta"):
            yield response

    def _on_delta_request(self, info: StreamInfo, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._node(info, req)
        watch = info.watches.get(req.type_url)
        if watch is None:
            watch = info.watches[req.type_url] = _Watch()
            watch.wildcard = req.type_url in WILDCARD_TYPES and not req.resource_names_subscribe
            watch.sent = dict(req.initial_resource_versions)
        if req.response_nonce:
            current = req.response_nonce == watch.nonce
            if req.HasField("error_detail"):
                watch.nacked_version = watch.sent_version
                watch.full = True
                self._record_nack(info, watch, req.type_url, req.response_nonce, req.error_detail.message, current=current)
            else:
                if current:
                    watch.acked_version = watch.sent_version
                self._record_ack(info, watch, req.type_url, current=current)
        for name in req.resource_names_subscribe:
            if name == "*":
                watch.wildcard = watch.full = True
            else:
                watch.names.add(name)
                watch.sent.pop(name, None)
                watch.pending.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                watch.wildcard = False
            watch.names.discard(name)
            watch.sent.pop(name, None)

    def _delta_response(self, info: StreamInfo, type_url: str, watch: _Watch) -> discovery_pb2.DeltaDiscoveryResponse | None:
        resources = self._snap(info).of(type_url)
        view = self._view(info) if watch.wildcard else None
        wanted: Collection[str] = (view.members[type_url] if view is not None else resources) if watch.wildcard else watch.names
        candidates: Iterable[str] = {*wanted, *watch.sent} if watch.full else watch.pending
        changed, removed = [], []
        for n in sorted(candidates):
            if n in wanted and n in resources:
                if watch.sent.get(n) != resources[n].version:
                    changed.append(resources[n])
            elif n in watch.sent:
                removed.append(n)
        watch.pending.clear()
        watch.full = False
        if not changed and not removed:
            return None
        for r in changed:
            watch.sent[r.name] = r.version
        for n in removed:
            watch.sent.pop(n, None)
        watch.nonce = self._nonce()
        watch.sent_version = self._version(info, type_url, watch) if watch.wildcard else self._snap(info).versions.get(type_url, "")
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=watch.sent_version,
            resources=[discovery_pb2.Resource(name=r.name, version=r.version, resource=r.packed) for r in changed],
            type_url=type_url,
            removed_resources=removed,
            nonce=watch.nonce,
        )


def _token(resources: Mapping[str, Resource], name: str) -> int:
    r = resources.get(name)
    return r.token if r is not None else token(name, "-")


def _differ(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> set[str]:
    """Names added, removed or changed between two maps of one type."""
    out = {n for n, r in new.items() if n not in old or old[n].version != r.version}
    out.update(n for n in old if n not in new)
    return out


def _peer(context: grpc.aio.ServicerContext) -> str:
    try:
        return str(context.peer())
    except Exception:  # noqa: BLE001 - a test double may have no peer
        return ""


@dataclass(frozen=True)
class ServerTls:
    """TLS on the xDS port (``aeraki-ctl serve --tls-cert F --tls-key F [--client-ca F]``): the
    server's certificate chain and key, and with ``client_ca`` client certificates signed by it are
    required (mTLS)."""

    cert: str
    key: str
    client_ca: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials from the files."""
        with open(self.cert, "rb") as f:
            chain = f.read()
        with open(self.key, "rb") as f:
            key = f.read()
        root = None
        if self.client_ca is not None:
            with open(self.client_ca, "rb") as f:
                root = f.read()
        return grpc.ssl_server_credentials([(key, chain)], root_certificates=root, require_client_auth=root is not None)


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds only the loopback interface."""
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or empty (every interface)


async def start_server(
    server: AdsServer, address: str, services: Sequence[grpc.GenericRpcHandler] = (), tls: ServerTls | None = None
) -> tuple[grpc.aio.Server, int]:
    """Serve ``server`` on ``address`` (``host:port``, port 0 for any); returns the bound port.
    ``services``: more gRPC services on the same port (the CA, ``aeraki_ctl.ca``). With ``tls`` the
    port speaks only TLS; without, plaintext, with a warning when it is not a loopback address."""
    grpc_server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(server, grpc_server)
    grpc_server.add_generic_rpc_handlers(tuple(services))
    if tls is not None:
        port = grpc_server.add_secure_port(address, tls.credentials())
    else:
        if not is_loopback(address):
            log.warning("xDS on %s is plaintext and not on a loopback address: configuration (and certificates) travel unencrypted and "
                        "unauthenticated; use --tls-cert/--tls-key (and --client-ca)", address)  # fmt: skip
        port = grpc_server.add_insecure_port(address)
    await grpc_server.start()
    return grpc_server, port
