"""Kubernetes as a source: the CRDs, Services, EndpointSlices and Pods, watched with
``kubernetes_asyncio`` (the official client's asyncio edition; the ``kubernetes`` extra).

Per kind (and per namespace when namespaces are given) one task runs list-then-watch: a LIST
gives the state and its ``metadata.resourceVersion``; a WATCH from that version
(``allowWatchBookmarks=true``) applies ADDED/MODIFIED/DELETED to an in-memory cache and moves the
version forward on every event and BOOKMARK. A watch that ends cleanly (its ``timeoutSeconds``) is
re-opened from the last version; a dropped connection or an API error is retried from the last
version after a back-off (doubling, with jitter); an ERROR event with code 410 (the version is too
old, the history was compacted) means a relist. Every change that can alter what is served calls
the controller's ``changed`` hook.

What the cache becomes (``resources()``), each object with the source ``k8s://<ns>/<Kind>/<name>``:

- MetaRouter, ApplicationProtocol (``metaprotocol.aeraki.io/v1alpha1``), ServiceEntry and
  DestinationRule (``networking.istio.io/v1beta1``; v1 objects are the same objects served at
  v1beta1 by the API server) read by the typed parser the directory source uses;
- a Service with a port named in Aeraki's convention (``tcp-metaprotocol-<protocol>[-...]``)
  becomes a ServiceEntry-shaped resource ``<svc>.svc`` with host ``<svc>.<ns>.svc.cluster.local``
  and its metaprotocol ports; its endpoints are the ready endpoints of its EndpointSlices (label
  ``kubernetes.io/service-name``), each address with the slice's port numbers and the labels of
  the Pod its ``targetRef`` names (Pods are watched for their labels only), so DestinationRule
  subsets by ``version`` select them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aeraki_ctl.extras import MissingExtra
from aeraki_ctl.resources import Problem, Resource, resource_from_spec

log = logging.getLogger(__name__)

PORT_PREFIX = "tcp-metaprotocol-"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CLUSTER_DOMAIN = "svc.cluster.local"


@dataclass(frozen=True)
class Kind:
    """A watched collection: its kind, group/version, plural, and whether it becomes a Resource
    as it is (the CRDs) or feeds the Service translation."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    crd: bool


KINDS = (
    Kind("MetaRouter", "metaprotocol.aeraki.io", "v1alpha1", "metarouters", True),
    Kind("ApplicationProtocol", "metaprotocol.aeraki.io", "v1alpha1", "applicationprotocols", True),
    Kind("ServiceEntry", "networking.istio.io", "v1beta1", "serviceentries", True),
    Kind("DestinationRule", "networking.istio.io", "v1beta1", "destinationrules", True),
    Kind("Service", "", "v1", "services", False),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", False),
    Kind("Pod", "", "v1", "pods", False),
)


class Gone(Exception):  # noqa: N818 - the HTTP status's name
    """410 Gone: the resourceVersion is too old; list again."""


class ApiError(Exception):
    """The API server answered with an error."""


def _import() -> Any:
    try:
        import kubernetes_asyncio
    except ImportError as exc:
        raise MissingExtra("kubernetes", "kubernetes_asyncio", "watching Kubernetes (--kubernetes)") from exc
    return kubernetes_asyncio


class KubernetesSource:
    """Watches the API server and keeps a cache; ``resources()`` is what it serves now.

    ``api_client`` is a ``kubernetes_asyncio.client.ApiClient``; without one, ``connect()`` loads
    ``kubeconfig`` (a file) or, without that, the in-cluster configuration (the service account).
    """

    def __init__(
        self,
        api_client: Any = None,
        *,
        kubeconfig: str | None = None,
        namespaces: Iterable[str] = (),
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        watch_timeout: int = 300,
    ) -> None:
        self._k8s = _import()
        self.api_client = api_client
        self.kubeconfig = kubeconfig
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.watch_timeout = watch_timeout
        self.name = "kubernetes"
        self.cache: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name) -> object
        self.lists = 0  # LISTs made (the first ones and each relist)
        self.relists = 0  # relists after 410 Gone
        self.reconnects = 0  # watches re-opened after a failure
        self._changed: Callable[[], None] = lambda: None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: set[tuple[str, str | None]] = set()
        self.versions: dict[tuple[str, str | None], str | None] = {}  # (kind, ns) -> resourceVersion to resume from; None: list
        self._synced = asyncio.Event()

    async def connect(self) -> None:
        """Load the client configuration (kubeconfig or in-cluster) unless a client was given."""
        if self.api_client is not None:
            return
        k8s = self._k8s
        if self.kubeconfig:
            self.api_client = await k8s.config.new_client_from_config(config_file=self.kubeconfig)
        else:
            configuration = k8s.client.Configuration()
            k8s.config.load_incluster_config(client_configuration=configuration)
            self.api_client = k8s.client.ApiClient(configuration)

    async def start(self, changed: Callable[[], None]) -> None:
        """Start one list-then-watch task per kind (and namespace); ``changed`` is called on
        every change that can alter ``resources()``."""
        await self.connect()
        self._changed = changed
        scopes: tuple[str | None, ...] = self.namespaces or (None,)
        for kind in KINDS:
            for ns in scopes:
                self._pending.add((kind.kind, ns))
                self._tasks.append(asyncio.ensure_future(self._run(kind, ns)))

    async def wait_synced(self, timeout: float) -> bool:
        """Whether every kind was listed once within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop watching and close the client."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.api_client is not None:
            await self.api_client.close()

    # -- list and watch ---------------------------------------------------------------------------

    async def _run(self, kind: Kind, ns: str | None) -> None:
        scope = (kind.kind, ns)
        delay = self.backoff
        while True:
            try:
                if self.versions.get(scope) is None:
                    self.versions[scope] = await self._list(kind, ns)
                    delay = self.backoff
                if await self._watch(kind, ns, scope):
                    delay = self.backoff
            except Gone:
                log.info("%s%s: resourceVersion %s is too old (410 Gone); listing again", kind.plural, _in(ns), self.versions.get(scope))
                self.relists += 1
                self.versions[scope] = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API server away or an error: retry
                self.reconnects += 1
                wait = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography
                log.warning("%s%s: %s: %s; retrying in %.1fs", kind.plural, _in(ns), type(exc).__name__, exc, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff)

    def _call(self, kind: Kind, ns: str | None, **params: Any) -> Any:
        k8s = self._k8s.client
        params["_preload_content"] = False
        if kind.crd:
            api = k8s.CustomObjectsApi(self.api_client)
            if ns is None:
                return api.list_cluster_custom_object(kind.group, kind.version, kind.plural, **params)
            return api.list_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, **params)
        if kind.kind == "EndpointSlice":
            d = k8s.DiscoveryV1Api(self.api_client)
            return d.list_endpoint_slice_for_all_namespaces(**params) if ns is None else d.list_namespaced_endpoint_slice(ns, **params)
        core = k8s.CoreV1Api(self.api_client)
        if kind.kind == "Service":
            return core.list_service_for_all_namespaces(**params) if ns is None else core.list_namespaced_service(ns, **params)
        return core.list_pod_for_all_namespaces(**params) if ns is None else core.list_namespaced_pod(ns, **params)

    async def _list(self, kind: Kind, ns: str | None) -> str:
        response = await self._call(kind, ns)
        async with response:
            body = await response.read()
            if response.status == 404:  # noqa: PLR2004 - the kind is not served (Istio's CRDs not installed): nothing of it, retried
                self._listed(kind, ns)
            if response.status != 200:  # noqa: PLR2004
                raise ApiError(f"LIST {kind.plural}: HTTP {response.status}: {body[:200]!r}")
        data = json.loads(body)
        self.lists += 1
        fresh = {}
        for item in data.get("items") or []:
            key = _key(kind, item)
            if key is not None:
                fresh[key] = self._keep(kind, item)
        stale = [k for k in self.cache if k[0] == kind.kind and (ns is None or k[1] == ns)]
        changed = any(k not in fresh for k in stale) or any(self.cache.get(k) != v for k, v in fresh.items())
        for k in stale:
            del self.cache[k]
        self.cache.update(fresh)
        self._listed(kind, ns)
        if changed:
            self._changed()
        return str(data.get("metadata", {}).get("resourceVersion", ""))

    def _listed(self, kind: Kind, ns: str | None) -> None:
        self._pending.discard((kind.kind, ns))
        if not self._pending:
            self._synced.set()

    async def _watch(self, kind: Kind, ns: str | None, scope: tuple[str, str | None]) -> bool:
        """Watch from the scope's version until the stream ends, moving the version forward with
        every event (so a dropped stream resumes where it was); whether any event came."""
        rv = self.versions[scope]
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.watch_timeout + 30)
        response = await self._call(kind, ns, watch=True, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout, _request_timeout=timeout)
        progressed = False
        async with response:
            if response.status != 200:  # noqa: PLR2004
                body = await response.read()
                if response.status == 410:  # noqa: PLR2004
                    raise Gone()
                raise ApiError(f"WATCH {kind.plural}: HTTP {response.status}: {body[:200]!r}")
            while True:
                line = await response.content.readline()
                if not line:
                    return progressed
                if not line.strip():
                    continue
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:  # noqa: PLR2004
                        raise Gone()
                    raise ApiError(f"WATCH {kind.plural}: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                self.versions[scope] = rv
                progressed = True
                if type_ == "BOOKMARK":
                    continue
                key = _key(kind, obj)
                if key is None:
                    continue
                if type_ == "DELETED":
                    if self.cache.pop(key, None) is not None:
                        self._changed()
                elif type_ in ("ADDED", "MODIFIED"):
                    kept = self._keep(kind, obj)
                    if self.cache.get(key) != kept:
                        self.cache[key] = kept
                        self._changed()

    @staticmethod
    def _keep(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
        """What the cache holds of an object: all of it, except a Pod's labels only (Pods change
        status often; only their labels matter here)."""
        if kind.kind == "Pod":
            return {"metadata": {"labels": dict(obj.get("metadata", {}).get("labels") or {})}}
        return obj

    # -- what is served ---------------------------------------------------------------------------

    def resources(self) -> tuple[list[Resource], list[Problem]]:
        """The cache as resources (and problems that belong to no object: none so far). Reads a
        copy of the cache (one atomic ``dict`` copy), so it may be called from another thread."""
        cache = dict(self.cache)
        out: list[Resource] = []
        crds = {k.kind for k in KINDS if k.crd}
        for (kind, ns, name), obj in sorted(cache.items()):
            if kind in crds:
                out.append(crd_resource(kind, ns, name, obj))

        def pod_labels(ns: str, name: str) -> dict[str, str]:
            pod = cache.get(("Pod", ns, name))
            return dict(pod["metadata"]["labels"]) if pod else {}

        slices: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for (kind, ns, _), obj in sorted(cache.items()):
            if kind == "EndpointSlice":
                service = (obj.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
                if service:
                    slices.setdefault((ns, str(service)), []).append(obj)
        for (kind, ns, name), obj in sorted(cache.items()):
            if kind == "Service":
                r = service_resource(obj, ns, name, slices.get((ns, name), []), pod_labels)
                if r is not None:
                    out.append(r)
        return out, []


def _in(ns: str | None) -> str:
    return f" in {ns}" if ns else ""


def _key(kind: Kind, obj: Mapping[str, Any]) -> tuple[str, str, str] | None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    return kind.kind, str(meta.get("namespace") or "default"), name


def source_of(ns: str, kind: str, name: str) -> str:
    """``k8s://<ns>/<Kind>/<name>``: where an object came from, in problems and status."""
    return f"k8s://{ns}/{kind}/{name}"


def crd_resource(kind: str, ns: str, name: str, obj: Mapping[str, Any]) -> Resource:
    """A custom resource read by the same typed parser as a file's."""
    source = source_of(ns, kind, name)
    spec = obj.get("spec")
    r = resource_from_spec(kind, name, ns, spec if isinstance(spec, Mapping) else {}, source)
    if not isinstance(spec, Mapping):
        r = replace(r, problems=(*r.problems, Problem(source, r.ref, "spec is required (an object)", path="spec")))
    return r


def service_resource(
    svc: Mapping[str, Any], ns: str, name: str, slices: Iterable[Mapping[str, Any]], pod_labels: Callable[[str, str], dict[str, str]]
) -> Resource | None:
    """A Service with ports named ``tcp-metaprotocol-<protocol>[-...]`` as a ServiceEntry-shaped
    resource; None when it has no such port."""
    ports = [p for p in (svc.get("spec") or {}).get("ports") or [] if str(p.get("name", "")).startswith(PORT_PREFIX)]
    if not ports:
        return None
    names = {str(p["name"]) for p in ports}
    endpoints = []
    for s in slices:
        slice_ports = {str(p.get("name")): int(p["port"]) for p in s.get("ports") or [] if p.get("name") in names and p.get("port")}
        if not slice_ports:
            continue
        for e in s.get("endpoints") or []:
            if (e.get("conditions") or {}).get("ready") is False:  # unset means ready (the API's rule)
                continue
            ref = e.get("targetRef") or {}
            labels = pod_labels(str(ref.get("namespace") or ns), str(ref["name"])) if ref.get("kind") == "Pod" and ref.get("name") else {}
            for address in e.get("addresses") or []:
                endpoints.append({"address": address, "ports": dict(slice_ports), "labels": labels})
    spec = {
        "hosts": [f"{name}.{ns}.{CLUSTER_DOMAIN}"],
        "ports": [{"number": int(p["port"]), "name": str(p["name"]), "protocol": "TCP"} for p in ports],
        "resolution": "STATIC",
        "endpoints": sorted(endpoints, key=lambda e: (e["address"], sorted(e["ports"].items()))),
    }
    return resource_from_spec("ServiceEntry", f"{name}.svc", ns, spec, source_of(ns, "Service", name))
