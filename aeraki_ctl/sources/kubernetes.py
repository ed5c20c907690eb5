"""Kubernetes as a source: the CRDs, Services, EndpointSlices and Pods, watched with
``kubernetes_asyncio`` (the official client's asyncio edition; the ``kubernetes`` extra).

Per kind (and per namespace when namespaces are given) one task runs list-then-watch: a LIST
gives the state and its ``metadata.resourceVersion``, in pages of ``list_page_size`` items
(``limit``, then ``continue`` until the server has no more; every page is the same snapshot, and a
continue token that expired, ``410``, means one whole list without ``limit``, as client-go's pager
does); a WATCH from that version
(``allowWatchBookmarks=true``) applies ADDED/MODIFIED/DELETED to an in-memory cache and moves the
version forward on every event and BOOKMARK. A watch that ends cleanly (its ``timeoutSeconds``) is
re-opened from the last version; a dropped connection or an API error is retried from the last
version after a back-off (doubling, with jitter); an ERROR event with code 410 (the version is too
old, the history was compacted) means a relist. Every change that can alter what is served calls
the controller's ``changed`` hook.

What the cache becomes (``resources()``), each object with the source ``k8s://<ns>/<Kind>/<name>``:

- MetaRouter, ApplicationProtocol (``metaprotocol.aeraki.io/v1alpha1``), ServiceEntry,
  DestinationRule and Sidecar (``networking.istio.io``, at the version the API server prefers among ``v1``,
  ``v1beta1`` and ``v1alpha3``, found in its discovery document ``/apis/networking.istio.io``:
  Istio serves one schema at all of them) read by the typed parser the directory source uses;
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


ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # networking.istio.io versions read (one schema), most preferred first
SECURITY_VERSIONS = ("v1", "v1beta1")  # security.istio.io versions read (one schema), most preferred first
DEFAULT_PAGE_SIZE = 500  # items per LIST page (client-go's reflector uses 500 too)


@dataclass(frozen=True)
class Kind:
    """A watched collection: its kind, group/version, plural, and whether it becomes a Resource
    as it is (the CRDs) or feeds the Service translation. ``versions``, when set, are the
    versions understood (most preferred first): the one watched is found by discovery."""

    kind: str
    group: str  # "" for the core group
    version: str
    plural: str
    crd: bool
    versions: tuple[str, ...] = ()


KINDS = (
    Kind("MetaRouter", "metaprotocol.aeraki.io", "v1alpha1", "metarouters", True),
    Kind("ApplicationProtocol", "metaprotocol.aeraki.io", "v1alpha1", "applicationprotocols", True),
    Kind("ServiceEntry", "networking.istio.io", "", "serviceentries", True, ISTIO_VERSIONS),
    Kind("DestinationRule", "networking.istio.io", "", "destinationrules", True, ISTIO_VERSIONS),
    Kind("Sidecar", "networking.istio.io", "", "sidecars", True, ISTIO_VERSIONS),
    Kind("AuthorizationPolicy", "security.istio.io", "", "authorizationpolicies", True, SECURITY_VERSIONS),
    Kind("PeerAuthentication", "security.istio.io", "", "peerauthentications", True, SECURITY_VERSIONS),
    Kind("DubboAuthorizationPolicy", "dubbo.aeraki.io", "v1alpha1", "dubboauthorizationpolicies", True),
    Kind("Service", "", "v1", "services", False),
    Kind("EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", False),
    Kind("Pod", "", "v1", "pods", False),
)


class Gone(Exception):  # noqa: N818 - the HTTP status's name
    """410 Gone: the resourceVersion is too old; list again."""


class ApiError(Exception):
    """The API server answered with an error."""


class NotServed(ApiError):
    """404: the API server does not serve this kind (its CRD, or that version of it, is absent).
    ``watch``: the 404 answered a watch (the kind was served when it was listed)."""

    def __init__(self, message: str, *, watch: bool = False) -> None:
        super().__init__(message)
        self.watch = watch


def choose_version(group: Mapping[str, Any], understood: tuple[str, ...]) -> str | None:
    """The version to watch from an ``APIGroup`` discovery document: its ``preferredVersion``
    when we understand it, else the first of ``understood`` (our preference order) it serves;
    None when it serves none of them."""
    served = [str(v.get("version")) for v in group.get("versions") or [] if isinstance(v, Mapping)]
    preferred = (group.get("preferredVersion") or {}).get("version")
    if preferred in understood and preferred in served:
        return str(preferred)
    return next((v for v in understood if v in served), None)


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
        list_page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self._k8s = _import()
        self.api_client = api_client
        self.kubeconfig = kubeconfig
        self.namespaces = tuple(dict.fromkeys(namespaces))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.watch_timeout = watch_timeout
        self.list_page_size = max(0, list_page_size)  # 0: no pagination
        self.name = "kubernetes"
        self.cache: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name) -> object
        self.lists = 0  # whole lists made (the first ones and each relist), however many pages each took
        self.pages = 0  # LIST requests answered 200 (one per page)
        self.list_restarts = 0  # paginated lists whose continue token expired (410), made again whole
        self.group_versions: dict[str, str] = {}  # discovered group -> the version watched
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
            watched = kind
            try:
                if kind.versions:
                    watched = replace(kind, version=await self._discover(kind))
                if self.versions.get(scope) is None:
                    self.versions[scope] = await self._list(watched, ns)
                    delay = self.backoff
                if await self._watch(watched, ns, scope):
                    delay = self.backoff
            except Gone:
                log.info("%s%s: resourceVersion %s is too old (410 Gone); listing again", kind.plural, _in(ns), self.versions.get(scope))
                self.relists += 1
                self.versions[scope] = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API server away or an error: retry
                if isinstance(exc, NotServed):
                    self._not_served(kind, ns, watched.version, exc.watch)
                self.reconnects += 1
                wait = delay * random.uniform(0.5, 1.5)  # noqa: S311 - jitter, not cryptography
                log.warning("%s%s: %s: %s; retrying in %.1fs", kind.plural, _in(ns), type(exc).__name__, exc, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.max_backoff)

    def _not_served(self, kind: Kind, ns: str | None, version: str, watch: bool) -> None:
        """The API server does not serve ``kind`` (at ``version``): its discovered version is
        forgotten (found again next time: Istio upgraded, or installed) and its next step is a
        list again. When the 404 answered a watch, that is all: the version may have gone while
        the kind stays (an upgrade that drops ``v1beta1``), so the cache stays until that list
        says otherwise. Otherwise none of its objects exist: the kind counts as listed and empty
        (it must not hold the first sync back)."""
        if kind.versions and self.group_versions.get(kind.group) == version:
            del self.group_versions[kind.group]
        self.versions[(kind.kind, ns)] = None
        if watch:
            return
        stale = [k for k in self.cache if k[0] == kind.kind and (ns is None or k[1] == ns)]
        for k in stale:
            del self.cache[k]
        self._listed(kind, ns)
        if stale:
            self._changed()

    async def _discover(self, kind: Kind) -> str:
        """The version of ``kind``'s group to watch: the one found before, or the API server's
        preferred among those understood (``GET /apis/<group>``, the ``APIGroup`` document)."""
        known = self.group_versions.get(kind.group)
        if known is not None:
            return known
        response = await self.api_client.call_api(
            f"/apis/{kind.group}/", "GET", header_params={"Accept": "application/json"}, auth_settings=["BearerToken"], _preload_content=False
        )
        async with response:
            body = await response.read()
            if response.status == 404:  # noqa: PLR2004 - the group is not served: Istio's CRDs not installed
                raise NotServed(f"discovery: the API group {kind.group} is not served")
            if response.status != 200:  # noqa: PLR2004
                raise ApiError(f"discovery of {kind.group}: HTTP {response.status}: {body[:200]!r}")
        group = json.loads(body)
        version = choose_version(group, kind.versions)
        served = [v.get("version") for v in group.get("versions") or []]
        if version is None:
            raise NotServed(f"the API group {kind.group} serves {served}, none of {list(kind.versions)}")
        if self.group_versions.get(kind.group) != version:
            log.info("%s: watching %s/%s (served: %s; preferred: %s)", kind.plural, kind.group, version, ", ".join(map(str, served)), (group.get("preferredVersion") or {}).get("version"))
        self.group_versions[kind.group] = version
        return version

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

    async def _page(self, kind: Kind, ns: str | None, **params: Any) -> dict[str, Any]:
        """One LIST request: the List document."""
        response = await self._call(kind, ns, **params)
        async with response:
            body = await response.read()
            if response.status == 404:  # noqa: PLR2004 - the kind is not served (Istio's CRDs not installed): nothing of it, retried
                raise NotServed(f"LIST {kind.group}/{kind.version} {kind.plural}: HTTP 404: {body[:200]!r}")
            if response.status == 410 and params.get("_continue"):  # noqa: PLR2004 - the continue token expired
                raise Gone()
            if response.status != 200:  # noqa: PLR2004
                raise ApiError(f"LIST {kind.plural}: HTTP {response.status}: {body[:200]!r}")
        self.pages += 1
        data: dict[str, Any] = json.loads(body)
        return data

    async def _list_all(self, kind: Kind, ns: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every item and the list's resourceVersion, in pages of ``list_page_size`` (``limit``,
        then ``continue`` until none is returned; the pages are one snapshot, so the version of
        the last page is the version of all). A continue token that expired (``410``, reason
        ``Expired``: the snapshot was compacted away) restarts the list whole, without ``limit``
        (client-go's pager falls back the same way: paging again could expire again)."""
        limit, token = self.list_page_size, None
        items: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {}
            if limit:
                params["limit"] = limit
            if token:
                params["_continue"] = token
            try:
                data = await self._page(kind, ns, **params)
            except Gone:
                log.info("%s%s: the list's continue token expired (410) after %d items; listing again, whole", kind.plural, _in(ns), len(items))
                self.list_restarts += 1
                limit, token, items = 0, None, []
                continue
            items.extend(data.get("items") or [])
            meta = data.get("metadata") or {}
            token = meta.get("continue") or None
            if not token or not limit:
                return items, str(meta.get("resourceVersion", ""))

    async def _list(self, kind: Kind, ns: str | None) -> str:
        items, version = await self._list_all(kind, ns)
        self.lists += 1
        fresh = {}
        for item in items:
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
        return version

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
                if response.status == 404:  # noqa: PLR2004 - no longer served (a CRD or one of its versions removed)
                    raise NotServed(f"WATCH {kind.group}/{kind.version} {kind.plural}: HTTP 404: {body[:200]!r}", watch=True)
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
    meta = obj.get("metadata")
    r = resource_from_spec(kind, name, ns, spec if isinstance(spec, Mapping) else {}, source, meta if isinstance(meta, Mapping) else None)
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
