"""The proxy's ADS client: subscribe, convert, apply atomically, ACK or NACK, reconnect.

Listeners and clusters are subscribed as wildcards; the routes and endpoints they name follow.
A configuration is applied only when it is complete (every listener has its route table, every
cluster its endpoints). An update that cannot be converted or validated is NACKed with the reason
and the last good configuration keeps serving; so does a lost control plane, until it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from metaprotocol.config.errors import ConfigError
from metaprotocol.config.model import Bootstrap, ListenerConfig, RouteConfig
from metaprotocol.xds import convert

if TYPE_CHECKING:
    from metaprotocol.io.proxy import Proxy

log = logging.getLogger(__name__)
INVALID_ARGUMENT = 3


def _unpacked(response: discovery_pb2.DiscoveryResponse, message_type: Any) -> Iterator[Any]:  # noqa: ANN401 - generated protobuf classes are untyped
    """The response's resources, each unpacked into a fresh ``message_type``."""
    for packed in response.resources:
        message = message_type()
        packed.Unpack(message)
        yield message


class AdsClient:
    """Keeps a Proxy in step with an ADS server."""

    def __init__(self, proxy: Proxy, address: str, node_id: str, cluster: str = "metaprotocol") -> None:
        self.proxy = proxy
        self.address = address
        self.node = base_pb2.Node(id=node_id, cluster=cluster)
        self.listeners: dict[str, ListenerConfig] = {}
        self.routes: dict[str, RouteConfig] = {}
        self.clusters: dict[str, cluster_pb2.Cluster] = {}
        self.endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
        self.versions: dict[str, str] = {}
        self.applied = 0
        self.nacks: list[str] = []
        self.connected = asyncio.Event()
        self._subscribed: dict[str, list[str]] = {}

    async def run(self) -> None:
        """Stream forever, reconnecting with back-off (0.2 s doubling to 5 s)."""
        delay = 0.2
        while True:
            try:
                await self._stream()
                delay = 0.2
            except (grpc.aio.AioRpcError, ConnectionError, OSError) as exc:
                reason = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else exc
                log.warning("ADS stream to %s lost (%s); serving the last good configuration", self.address, reason)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    async def _stream(self) -> None:
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await queue.get()

        async with grpc.aio.insecure_channel(self.address) as channel:
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
                await self._on_response(queue, response)

    def _subscribe(self, queue: asyncio.Queue[discovery_pb2.DiscoveryRequest], type_url: str, names: list[str], version: str = "", nonce: str = "", error: str | None = None) -> None:
        if type_url in (convert.ROUTE_TYPE, convert.ENDPOINT_TYPE) and not names and type_url not in self._subscribed:
            return
        req = discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url, resource_names=names, version_info=version or self.versions.get(type_url, ""), response_nonce=nonce)
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        self._subscribed[type_url] = names
        queue.put_nowait(req)

    async def _on_response(self, queue: asyncio.Queue[discovery_pb2.DiscoveryRequest], r: discovery_pb2.DiscoveryResponse) -> None:
        t = r.type_url
        names = self._subscribed.get(t, [])
        try:
            staged = self._convert(r)
            candidate = self._assemble(staged)
            if candidate is not None:
                await self.proxy.apply(candidate)
                self.applied += 1
        except (convert.ConversionError, ConfigError, ValueError) as exc:
            message = f"{t.rsplit('.', 1)[-1]} version {r.version_info}: {exc}"
            log.error("rejecting update: %s", message)
            self.nacks.append(message)
            self._subscribe(queue, t, names, self.versions.get(t, ""), r.nonce, message)
            return
        self._commit(staged)
        self.versions[t] = r.version_info
        self._subscribe(queue, t, names, r.version_info, r.nonce)
        if t == convert.LISTENER_TYPE:
            wanted = sorted({lst.rds_name for lst in self.listeners.values() if lst.rds_name})
            if wanted != self._subscribed.get(convert.ROUTE_TYPE):
                self._subscribe(queue, convert.ROUTE_TYPE, wanted)
        elif t == convert.CLUSTER_TYPE:
            wanted = sorted(self.clusters)
            if wanted != self._subscribed.get(convert.ENDPOINT_TYPE):
                self._subscribe(queue, convert.ENDPOINT_TYPE, wanted)

    def _convert(self, r: discovery_pb2.DiscoveryResponse) -> dict[str, object]:
        """The state this response would lead to (nothing is changed yet)."""
        t = r.type_url
        if t == convert.LISTENER_TYPE:
            return {"listeners": {lst.name: convert.listener_from_xds(lst) for lst in _unpacked(r, listener_pb2.Listener)}}
        if t == convert.ROUTE_TYPE:  # routes and endpoints are named, not wildcard: updates merge
            return {"routes": {**self.routes, **{rc.name: convert.route_config_from_xds(rc) for rc in _unpacked(r, route_pb2.RouteConfiguration)}}}
        if t == convert.CLUSTER_TYPE:
            clusters = {}
            for c in _unpacked(r, cluster_pb2.Cluster):
                convert.cluster_from_xds(c, None)  # validates
                clusters[c.name] = c
            return {"clusters": clusters}
        if t == convert.ENDPOINT_TYPE:
            return {"endpoints": {**self.endpoints, **{cla.cluster_name: cla for cla in _unpacked(r, endpoint_pb2.ClusterLoadAssignment)}}}
        raise convert.ConversionError(f"unexpected type {t}")

    def _commit(self, staged: dict[str, object]) -> None:
        for key, value in staged.items():
            setattr(self, key, value)

    def _assemble(self, staged: dict[str, object]) -> Bootstrap | None:
        """The whole configuration with ``staged`` applied, or None while it is incomplete."""
        listeners: dict[str, ListenerConfig] = staged.get("listeners", self.listeners)  # type: ignore[assignment]
        routes: dict[str, RouteConfig] = staged.get("routes", self.routes)  # type: ignore[assignment]
        clusters: dict[str, cluster_pb2.Cluster] = staged.get("clusters", self.clusters)  # type: ignore[assignment]
        endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = staged.get("endpoints", self.endpoints)  # type: ignore[assignment]
        if any(lst.rds_name not in routes for lst in listeners.values()) or any(name not in endpoints for name in clusters):
            return None
        return Bootstrap(
            tuple(replace(lst, route_config=routes[lst.rds_name]) for lst in listeners.values() if lst.rds_name),
            tuple(convert.cluster_from_xds(c, endpoints[name]) for name, c in sorted(clusters.items())),
            self.proxy.bootstrap.admin,
            f"xds://{self.address}",
        )
