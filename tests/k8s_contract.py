"""A Kubernetes API contract server: only what the API specifies for the calls aeraki-ctl makes.

Built from the Kubernetes API conventions (api-concepts: "Efficient detection of changes",
"Watch bookmarks", "Resource versions"), not from any implementation:

- ``GET`` of a collection, cluster-wide (``/api/v1/services``, ``/apis/G/V/metarouters``) or
  namespaced (``/api/v1/namespaces/NS/services``, ``/apis/G/V/namespaces/NS/metarouters``): a
  ``<Kind>List`` with ``metadata.resourceVersion`` (the store's current version: a consistent
  read). Items of built-in kinds carry no ``kind``/``apiVersion`` (as the API serves them); items
  of custom resources do.
- ``?watch=1&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=S]``: a chunked stream
  of ``WatchEvent`` JSON lines (``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": …}``)
  with every change after N, then live changes (N unset or ``0``: synthetic ADDED events for the
  current state first). A BOOKMARK's object has only ``kind``,
  ``apiVersion`` and ``metadata.resourceVersion``, and is sent only to watches that allowed
  bookmarks. When N is older than the oldest version still in the history (after
  :meth:`ContractServer.compact`), the stream carries a single ERROR event whose object is a
  ``Status`` with ``code: 410``, ``reason: Expired`` and then ends, as the API server does.
  ``timeoutSeconds`` ends the stream cleanly after that long.
- One resourceVersion counter for the whole store, increasing with every write (as etcd's
  revision); ``metadata.generation`` increases when ``spec`` changes.
- Chunked lists (api-concepts "Retrieving large results sets in chunks"; ``ListMeta``):
  ``?limit=N`` (N > 0) returns at most N items and, when more remain, ``metadata.continue`` (an
  opaque token) and ``metadata.remainingItemCount`` (the items after this page; optional in the
  API, set here as the API server does without selectors). ``?continue=TOKEN`` (with the same
  ``limit``) returns the next page **of the same snapshot**: every page carries the first page's
  ``metadata.resourceVersion`` and shows the store as it was at that version, whatever was
  written since (etcd's MVCC read at a revision), so a watch from that version sees every later
  write once. A token whose version was compacted away (:meth:`ContractServer.compact`, as etcd
  compacts every few minutes) is ``410 Gone`` with a ``Status`` of reason ``Expired`` carrying, in
  its ``metadata.continue``, a token that continues from the same key in the latest snapshot (an
  inconsistent continuation, which the API offers). A token that is not one of ours, or is used on
  another collection, is ``400 BadRequest``; ``continue`` with a ``resourceVersion`` other than
  ``""``/``"0"`` is ``400`` too. The last page has no ``continue`` (and no
  ``remainingItemCount``). Without ``limit`` (or with ``limit=0``) the list is whole.
- Discovery (api-concepts "Discovery API", meta/v1 ``APIGroup``/``APIGroupList``): ``GET /apis``
  lists the groups, ``GET /apis/G`` (or ``/apis/G/``) is the ``APIGroup`` of G with ``versions``
  (``groupVersion`` and ``version``) in the API server's version priority (GA before beta before
  alpha, higher major/minor first; what the API server sorts a CRD's versions by) and
  ``preferredVersion`` the first of them; ``404`` for a group not served. The Istio group
  ``networking.istio.io`` is multi-version, as Istio's CRDs are (one schema, conversion
  ``None``): an object is stored once and served at every served version with the apiVersion of
  the request (``ContractServer(served={"networking.istio.io": ("v1",)})`` makes a v1-only
  cluster; the default serves ``v1``, ``v1beta1`` and ``v1alpha3``); a version not served is
  ``404`` on every path under it.
- Errors are ``Status`` objects (404 for an unknown path or object, 405 for a method a path does
  not serve).
- Single objects: ``GET .../namespaces/NS/<plural>/NAME`` (404 ``NotFound`` when absent).
- The status subresource of metarouters (api-concepts "Subresources", the CRD ``subresources.status``
  rules): ``GET|PUT|PATCH .../namespaces/NS/metarouters/NAME/status``. ``PUT`` takes a whole object
  and keeps only its ``status``; a ``metadata.resourceVersion`` in it is a precondition: a stale one
  is ``409 Conflict`` (reason ``Conflict``), an absent one is an unconditional update. ``PATCH``
  needs ``Content-Type: application/merge-patch+json`` (RFC 7386; anything else is
  ``415 UnsupportedMediaType``) and also keeps only ``status`` (a ``metadata.resourceVersion`` in
  the patch is a precondition too). A status write never changes ``spec``, ``metadata`` or
  ``metadata.generation``; one that changes the status bumps ``resourceVersion`` and emits a
  MODIFIED watch event; one that changes nothing is a no-op (no new version, no event), as the
  API server's update is.
- ``coordination.k8s.io/v1`` Leases: ``GET .../namespaces/NS/leases/NAME`` (404),
  ``POST .../namespaces/NS/leases`` (201; ``409 AlreadyExists`` when the name is taken),
  ``PUT .../namespaces/NS/leases/NAME`` (404 when absent: a Lease is not created on update;
  ``409 Conflict`` on a stale ``metadata.resourceVersion``; ``spec`` replaced, ``generation``
  unchanged, as for built-in kinds without a generation).
- ``authentication.k8s.io/v1`` TokenReview (API reference "TokenReview v1"): ``POST
  /apis/authentication.k8s.io/v1/tokenreviews`` with ``spec.token`` and ``spec.audiences`` is
  ``201`` with the review echoed and its ``status``, never stored (any other method: ``405``).
  Tokens are minted with :meth:`ContractServer.issue_token` for a service account and a list of
  audiences (default: the API server's, ``https://kubernetes.default.svc.cluster.local``).
  ``spec.audiences`` empty means the API server's audience. A known token with an audience in
  common: ``authenticated: true``, ``user`` (``username: system:serviceaccount:<ns>:<sa>``,
  ``uid``, ``groups: [system:serviceaccounts, system:serviceaccounts:<ns>, system:authenticated]``)
  and ``audiences``, the intersection of the spec's and the token's (in the spec's order). An
  unknown or revoked token (:meth:`ContractServer.revoke_token`), or one with no audience in
  common: ``authenticated: false`` with ``error`` and an empty ``user``; still ``201`` (a review
  that did not authenticate is an answer, not an error). A body that is not a TokenReview:
  ``400``.

Tests write objects with :meth:`apply`/:meth:`delete`, drop every open watch with
:meth:`drop_watches`, send bookmarks with :meth:`bookmark`, and read what was asked in
``requests`` (and every write, with its method and body, in ``writes``). Each response closes
its connection (``Connection: close``). ``conflicts`` (a count) makes that many next
resourceVersion-checked writes fail with ``409 Conflict`` as if another writer got there first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

# (API prefix, plural) -> (kind, apiVersion, built-in)
COLLECTIONS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("/api/v1", "services"): ("Service", "v1", True),
    ("/api/v1", "pods"): ("Pod", "v1", True),
    ("/apis/discovery.k8s.io/v1", "endpointslices"): ("EndpointSlice", "discovery.k8s.io/v1", True),
    ("/apis/metaprotocol.aeraki.io/v1alpha1", "metarouters"): ("MetaRouter", "metaprotocol.aeraki.io/v1alpha1", False),
    ("/apis/metaprotocol.aeraki.io/v1alpha1", "applicationprotocols"): ("ApplicationProtocol", "metaprotocol.aeraki.io/v1alpha1", False),
    ("/apis/networking.istio.io/v1beta1", "serviceentries"): ("ServiceEntry", "networking.istio.io/v1beta1", False),
    ("/apis/networking.istio.io/v1beta1", "destinationrules"): ("DestinationRule", "networking.istio.io/v1beta1", False),
    ("/apis/networking.istio.io/v1beta1", "sidecars"): ("Sidecar", "networking.istio.io/v1beta1", False),
    ("/apis/security.istio.io/v1beta1", "authorizationpolicies"): ("AuthorizationPolicy", "security.istio.io/v1beta1", False),
    ("/apis/security.istio.io/v1beta1", "peerauthentications"): ("PeerAuthentication", "security.istio.io/v1beta1", False),
    ("/apis/dubbo.aeraki.io/v1alpha1", "dubboauthorizationpolicies"): ("DubboAuthorizationPolicy", "dubbo.aeraki.io/v1alpha1", False),
    ("/apis/coordination.k8s.io/v1", "leases"): ("Lease", "coordination.k8s.io/v1", True),
}
STATUS_SUBRESOURCE = {("/apis/metaprotocol.aeraki.io/v1alpha1", "metarouters")}  # kinds with subresources.status
GROUPS = {("/apis/metaprotocol.aeraki.io/v1alpha1", "metarouters"): "metarouters.metaprotocol.aeraki.io", ("/apis/coordination.k8s.io/v1", "leases"): "leases.coordination.k8s.io"}
BY_KIND = {(api, kind): key for key, (kind, api, _) in COLLECTIONS.items()}
# Groups whose custom resources are served at several versions with one schema (Istio's CRDs):
# the versions a ContractServer serves by default.
MULTI_VERSION: dict[str, tuple[str, ...]] = {"networking.istio.io": ("v1", "v1beta1", "v1alpha3"), "security.istio.io": ("v1", "v1beta1")}
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"  # the API server's own (--api-audiences)
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
EXPIRED_CONTINUE = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list: objects created, modified or "
    "deleted since the first chunk was returned may show up in the list."
)


def version_priority(version: str) -> tuple[int, int, int, str]:
    """The API server's order of versions (Kubernetes version priority), as a sort key: ``vN``
    (GA) before ``vNbetaM`` before ``vNalphaM``, higher N then higher M first; anything else last,
    alphabetically."""
    m = re.fullmatch(r"v([1-9][0-9]*)(?:(alpha|beta)([1-9][0-9]*))?", version)
    if m is None:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    return (stage, -int(m.group(1)), -int(m.group(3) or 0), "")


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``meta/v1`` Status object (a failure)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


@dataclass
class _Watch:
    collection: tuple[str, str]
    namespace: str | None
    bookmarks: bool
    api: str = ""  # the apiVersion the watch was opened at (its objects carry it)
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)
    writer: asyncio.StreamWriter | None = None


class ContractServer:
    """The store, its history and the HTTP front; ``await start()`` then ``url``."""

    def __init__(self, served: Mapping[str, Iterable[str]] | None = None) -> None:
        self.revision = 0
        self.compacted = 0  # watches from a version older than this get 410 Gone, and continue tokens too
        self.served: dict[str, tuple[str, ...]] = dict(MULTI_VERSION)  # multi-version group -> versions served
        self.served.update({g: tuple(v) for g, v in (served or {}).items()})
        self.objects: dict[tuple[tuple[str, str], str, str], dict[str, Any]] = {}
        self._base: dict[tuple[tuple[str, str], str, str], dict[str, Any]] = {}  # the objects at revision `compacted`
        self.pages: list[dict[str, Any]] = []  # every list answered: path, query, resourceVersion, item names, continue?
        self.before_list: Callable[[str, dict[str, str]], None] | None = None  # called with (path, query) before a list is answered
        self.history: list[tuple[int, tuple[str, str], str, dict[str, Any]]] = []
        self.watches: list[_Watch] = []
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) of every request
        self.writes: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, body) of every PUT/POST/PATCH
        self.conflicts = 0  # the next N resourceVersion-checked writes fail with 409 Conflict
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._uid = 0
        self.tokens: dict[str, tuple[str, str, tuple[str, ...]]] = {}  # token -> (namespace, service account, audiences)
        self.reviews: list[dict[str, Any]] = []  # the spec of every TokenReview

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Drop every watch and stop listening."""
        self.drop_watches()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # -- service-account tokens (TokenReview) ----------------------------------------------------

    def issue_token(self, namespace: str, service_account: str, audiences: Iterable[str] = (API_AUDIENCE,)) -> str:
        """A new token of ``namespace/service_account`` for ``audiences`` (as a projected token)."""
        self._uid += 1
        token = base64.urlsafe_b64encode(f"{namespace}:{service_account}:{self._uid}".encode()).decode().rstrip("=") + f".{self._uid:08x}"
        self.tokens[token] = (namespace, service_account, tuple(audiences))
        return token

    def revoke_token(self, token: str) -> None:
        """The token stops authenticating (its pod or service account was deleted)."""
        self.tokens.pop(token, None)

    def _token_review(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
        self.reviews.append(copy.deepcopy(spec))
        wanted = [str(a) for a in spec.get("audiences") or []] or [API_AUDIENCE]
        found = self.tokens.get(str(spec.get("token", "")))
        review: dict[str, Any] = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": None}, "spec": spec}
        if found is None:
            review["status"] = {"user": {}, "error": "[invalid bearer token, service account token is not valid]"}
            return review
        ns, sa, audiences = found
        common = [a for a in wanted if a in audiences]
        if not common:
            review["status"] = {"user": {}, "error": f"[invalid bearer token, token audiences {list(audiences)} is invalid for the target audiences {wanted}]"}
            return review
        user = {"username": f"system:serviceaccount:{ns}:{sa}", "uid": f"uid-{ns}-{sa}", "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]}
        review["status"] = {"authenticated": True, "user": user, "audiences": common}
        return review

    # -- the store (what tests call) --------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj`` (by apiVersion, kind, namespace, name); returns it as stored.
        For a kind with a status subresource, ``status`` in ``obj`` is ignored (the stored one is
        kept), as the API server does on the main resource."""
        key = _storage_key(obj["apiVersion"], obj["kind"])
        meta = obj.setdefault("metadata", {})
        ns = meta.setdefault("namespace", "default")
        name = meta["name"]
        old = self.objects.get((key, ns, name))
        stored = copy.deepcopy(obj)
        if key in STATUS_SUBRESOURCE:  # the main resource ignores status: only the subresource writes it
            stored.pop("status", None)
            if old is not None and "status" in old:
                stored["status"] = copy.deepcopy(old["status"])
        self.revision += 1
        m = stored["metadata"]
        m["resourceVersion"] = str(self.revision)
        if old is None:
            self._uid += 1
            m["uid"] = f"00000000-0000-0000-0000-{self._uid:012d}"
            m["generation"] = 1
            m["creationTimestamp"] = "2026-01-01T00:00:00Z"
        else:
            m["uid"] = old["metadata"]["uid"]
            m["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            gen = old["metadata"].get("generation", 1)
            m["generation"] = gen + 1 if stored.get("spec") != old.get("spec") else gen
        self.objects[(key, ns, name)] = stored
        self._record(key, "ADDED" if old is None else "MODIFIED", stored)
        return stored

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Delete an object (its last state, at a new resourceVersion, goes out as DELETED)."""
        key = _storage_key(api_version, kind)
        obj = self.objects.pop((key, namespace, name))
        self.revision += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.revision)
        self._record(key, "DELETED", gone)

    def compact(self) -> None:
        """Forget the history up to now: watches from an older resourceVersion get 410 Gone."""
        self.compacted = self.revision
        self.history = [h for h in self.history if h[0] > self.compacted]
        self._base = dict(self.objects)

    def drop_watches(self) -> None:
        """Cut every open watch connection (no final chunk: as a network failure looks)."""
        for w in list(self.watches):
            if w.writer is not None:
                w.writer.transport.abort()
            w.queue.put_nowait(None)
        self.watches.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current revision to every watch that allows bookmarks."""
        for w in self.watches:
            if w.bookmarks:
                kind = COLLECTIONS[w.collection][0]
                w.queue.put_nowait({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": w.api, "metadata": {"resourceVersion": str(self.revision)}}})

    def watch_count(self, plural: str | None = None) -> int:
        """Open watches (of one collection's plural)."""
        return sum(1 for w in self.watches if plural is None or w.collection[1] == plural)

    def _record(self, key: tuple[str, str], type_: str, obj: dict[str, Any]) -> None:
        self.history.append((self.revision, key, type_, obj))
        ns = obj["metadata"]["namespace"]
        for w in self.watches:
            if w.collection == key and w.namespace in (None, ns):
                w.queue.put_nowait({"type": type_, "object": self._item(key, obj, list_item=False, api=w.api)})

    def _state_at(self, revision: int) -> dict[tuple[tuple[str, str], str, str], dict[str, Any]]:
        """The store as it was at ``revision`` (not older than ``compacted``): the objects at the
        last compaction, then the history up to it."""
        if revision >= self.revision:
            return self.objects
        state = dict(self._base)
        for rv, key, type_, obj in self.history:
            if rv > revision:
                break
            k = (key, obj["metadata"]["namespace"], obj["metadata"]["name"])
            if type_ == "DELETED":
                state.pop(k, None)
            else:
                state[k] = obj
        return state

    @staticmethod
    def _item(key: tuple[str, str], obj: dict[str, Any], list_item: bool, api: str | None = None) -> dict[str, Any]:
        kind, stored_api, builtin = COLLECTIONS[key]
        out = copy.deepcopy(obj)
        if list_item and builtin:
            out.pop("kind", None)
            out.pop("apiVersion", None)
        else:
            out["kind"], out["apiVersion"] = kind, api or stored_api
        return out

    def _routes(self) -> dict[tuple[str, str], tuple[tuple[str, str], str]]:
        """(path prefix, plural) -> (the collection it is stored as, the apiVersion served there)."""
        out: dict[tuple[str, str], tuple[tuple[str, str], str]] = {}
        for key, (_, api, _) in COLLECTIONS.items():
            group = api.rpartition("/")[0]
            if group in self.served:
                for version in self.served[group]:
                    out[(f"/apis/{group}/{version}", key[1])] = (key, f"{group}/{version}")
            else:
                out[key] = (key, api)
        return out

    def _groups(self) -> dict[str, list[str]]:
        """Every API group served (not the core group) -> its versions, in priority order."""
        groups: dict[str, set[str]] = {}
        for _, api, _ in COLLECTIONS.values():
            group, _, version = api.rpartition("/")
            if group and group not in self.served:
                groups.setdefault(group, set()).add(version)
        for group, versions in self.served.items():
            if versions:
                groups[group] = set(versions)
        return {g: sorted(v, key=version_priority) for g, v in sorted(groups.items())}

    def _api_group(self, group: str, versions: list[str]) -> dict[str, Any]:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": listed, "preferredVersion": listed[0]}

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, asyncio.CancelledError):
            writer.close()
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((url.path, query))
        try:
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
            if url.path.rstrip("/") == TOKENREVIEWS:
                await self._review(writer, method, body)
                return
            item = self._item_route(url.path)
            if item is not None:
                await self._object(writer, method, item, headers.get("content-type", "").split(";")[0].strip(), body)
                return
            if method == "POST":
                route = self._route(url.path)
                if route is None or route[1] is None:
                    await self._send(writer, 404 if route is None else 405, status(404, "NotFound", url.path) if route is None else status(405, "MethodNotAllowed", "POST needs a namespace"))
                    return
                await self._create(writer, route[0], route[1], body)
                return
            if method != "GET":
                await self._send(writer, 405, status(405, "MethodNotAllowed", f"{method} is not supported"))
                return
            parts = url.path.strip("/").split("/")
            if parts[0] == "apis" and len(parts) <= 2:  # noqa: PLR2004 - discovery: /apis, /apis/GROUP
                groups = self._groups()
                if len(parts) == 1:
                    await self._send(writer, 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._api_group(g, v) for g, v in groups.items()]})
                elif parts[1] in groups:
                    await self._send(writer, 200, self._api_group(parts[1], groups[parts[1]]))
                else:
                    await self._send(writer, 404, status(404, "NotFound", "the server could not find the requested resource"))
                return
            route = self._route(url.path)
            if route is None:
                await self._send(writer, 404, status(404, "NotFound", f"the server could not find the requested resource ({url.path})"))
                return
            key, ns, api = route
            if parse_bool(query.get("watch", "")):
                await self._watch(writer, key, ns, api, query)
            else:
                await self._list(writer, key, ns, api, url.path, query)
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    # -- single objects, the status subresource, create ---------------------------------------------

    async def _object(self, writer: asyncio.StreamWriter, method: str, item: tuple[tuple[str, str], str, str, bool, str], content_type: str, raw: bytes) -> None:
        key, ns, name, subresource, api = item
        resource = GROUPS.get(key, key[1])
        if subresource and key not in STATUS_SUBRESOURCE:
            await self._send(writer, 404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        current = self.objects.get((key, ns, name))
        allowed = ("GET", "PUT", "PATCH") if subresource else ("GET", "PUT")
        if method not in allowed:
            await self._send(writer, 405, status(405, "MethodNotAllowed", f"{method} is not supported"))
            return
        if current is None:
            await self._send(writer, 404, status(404, "NotFound", f'{resource} "{name}" not found'))
            return
        if method == "GET":
            await self._send(writer, 200, self._item(key, current, list_item=False, api=api))
            return
        if method == "PATCH" and content_type != "application/merge-patch+json":
            await self._send(writer, 415, status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (got {content_type!r})"))
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            await self._send(writer, 400, status(400, "BadRequest", "the body is not a JSON object"))
            return
        self.writes.append((method, f"{_prefix(key)}/namespaces/{ns}/{key[1]}/{name}{'/status' if subresource else ''}", body))
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        if method == "PUT" and meta.get("name", name) != name:
            await self._send(writer, 400, status(400, "BadRequest", "the name of the object does not match the name on the URL"))
            return
        precondition = meta.get("resourceVersion")
        if precondition is not None:
            if self.conflicts > 0 or str(precondition) != current["metadata"]["resourceVersion"]:
                self.conflicts = max(0, self.conflicts - 1)
                message = f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; please apply your changes to the latest version and try again'
                await self._send(writer, 409, status(409, "Conflict", message))
                return
        updated = copy.deepcopy(current)
        if subresource:
            if method == "PUT":
                new_status = body.get("status")
            else:
                new_status = merge_patch(current.get("status"), body.get("status")) if "status" in body else current.get("status")
            if new_status is None:
                updated.pop("status", None)
            else:
                updated["status"] = new_status
        else:  # a whole-object update: spec replaced; metadata's system fields kept
            for field_ in ("spec", "status"):
                if field_ in body:
                    updated[field_] = copy.deepcopy(body[field_])
            for field_ in ("labels", "annotations"):
                if field_ in meta:
                    updated["metadata"][field_] = copy.deepcopy(meta[field_])
            if "generation" in current["metadata"] and updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if updated != current:  # a no-op update writes nothing (no new resourceVersion, no event)
            self.revision += 1
            updated["metadata"]["resourceVersion"] = str(self.revision)
            self.objects[(key, ns, name)] = updated
            self._record(key, "MODIFIED", updated)
        await self._send(writer, 200, self._item(key, updated, list_item=False, api=api))

    async def _create(self, writer: asyncio.StreamWriter, key: tuple[str, str], ns: str, raw: bytes) -> None:
        kind, api, _ = COLLECTIONS[key]
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict) or not body["metadata"].get("name"):
            await self._send(writer, 422, status(422, "Invalid", "metadata.name: Required value"))
            return
        self.writes.append(("POST", f"{_prefix(key)}/namespaces/{ns}/{key[1]}", body))
        name = body["metadata"]["name"]
        if body["metadata"].get("namespace", ns) != ns:
            await self._send(writer, 400, status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request"))
            return
        if (key, ns, name) in self.objects:
            await self._send(writer, 409, status(409, "AlreadyExists", f'{GROUPS.get(key, key[1])} "{name}" already exists'))
            return
        obj = copy.deepcopy(body)
        obj["metadata"].pop("resourceVersion", None)
        obj["metadata"]["namespace"] = ns
        obj["apiVersion"], obj["kind"] = api, kind
        stored = self.apply(obj)
        if key not in STATUS_SUBRESOURCE and key[0] == "/apis/coordination.k8s.io/v1":
            stored["metadata"].pop("generation", None)  # Leases carry no generation
        await self._send(writer, 201, self._item(key, stored, list_item=False))

    async def _review(self, writer: asyncio.StreamWriter, method: str, raw: bytes) -> None:
        if method != "POST":
            await self._send(writer, 405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"))
            return
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("kind", "TokenReview") != "TokenReview":
            await self._send(writer, 400, status(400, "BadRequest", "the body is not a TokenReview"))
            return
        await self._send(writer, 201, self._token_review(body))

    async def _send(self, writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 415: "Unsupported Media Type", 422: "Unprocessable Entity"}.get(code, "Error")
        writer.write(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()

    async def _list(self, writer: asyncio.StreamWriter, key: tuple[str, str], ns: str | None, api: str, path: str, query: dict[str, str]) -> None:
        """A list, whole or one chunk of it (``limit``, ``continue``)."""
        if self.before_list is not None:
            self.before_list(path, query)
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            await self._send(writer, 400, status(400, "BadRequest", f"invalid limit: {query.get('limit')!r}"))
            return
        revision, after = self.revision, None
        token = query.get("continue", "")
        if token:
            if query.get("resourceVersion", "") not in ("", "0"):
                await self._send(writer, 400, status(400, "BadRequest", "specifying resource version is not allowed when using continue"))
                return
            decoded = _decode_continue(token)
            if decoded is None or decoded[0] != path:
                await self._send(writer, 400, status(400, "BadRequest", "continue key is not valid"))
                return
            _, revision, after = decoded
            if revision < self.compacted:  # etcd no longer has that revision: the snapshot is gone
                gone = status(410, "Expired", EXPIRED_CONTINUE)
                gone["metadata"]["continue"] = _encode_continue(path, self.revision, after)
                self.pages.append({"path": path, "query": dict(query), "code": 410})
                await self._send(writer, 410, gone)
                return
        state = self._state_at(revision)
        names = sorted((n, name) for (k, n, name) in state if k == key and ns in (None, n) and (after is None or (n, name) > after))
        page = names[:limit] if limit > 0 else names
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if len(page) < len(names):
            meta["continue"] = _encode_continue(path, revision, page[-1])
            meta["remainingItemCount"] = len(names) - len(page)
        kind = COLLECTIONS[key][0]
        items = [self._item(key, state[(key, n, name)], list_item=True, api=api) for n, name in page]
        self.pages.append({"path": path, "query": dict(query), "code": 200, "resourceVersion": str(revision), "names": [name for _, name in page], "continue": "continue" in meta})
        await self._send(writer, 200, {"kind": f"{kind}List", "apiVersion": api, "metadata": meta, "items": items})

    def _route(self, path: str) -> tuple[tuple[str, str], str | None, str] | None:
        """A collection's path: (the collection, its namespace or None, the apiVersion served there)."""
        parts = path.strip("/").split("/")
        prefix_len = 2 if parts[:1] == ["api"] else 3 if parts[:1] == ["apis"] else 0
        if not prefix_len:
            return None
        prefix, rest = "/" + "/".join(parts[:prefix_len]), parts[prefix_len:]
        ns = None
        if len(rest) == 3 and rest[0] == "namespaces":  # noqa: PLR2004
            ns, rest = rest[1], rest[2:]
        routes = self._routes()
        if len(rest) != 1 or (prefix, rest[0]) not in routes:
            return None
        key, api = routes[(prefix, rest[0])]
        return key, ns, api

    def _item_route(self, path: str) -> tuple[tuple[str, str], str, str, bool, str] | None:
        """``PREFIX/namespaces/NS/PLURAL/NAME[/status]``: (collection, namespace, name, status?, apiVersion)."""
        parts = path.strip("/").split("/")
        prefix_len = 2 if parts[:1] == ["api"] else 3 if parts[:1] == ["apis"] else 0
        if not prefix_len:
            return None
        prefix, rest = "/" + "/".join(parts[:prefix_len]), parts[prefix_len:]
        routes = self._routes()
        if len(rest) not in (4, 5) or rest[0] != "namespaces" or (prefix, rest[2]) not in routes:
            return None
        if len(rest) == 5 and rest[4] != "status":  # noqa: PLR2004
            return None
        key, api = routes[(prefix, rest[2])]
        return key, rest[1], rest[3], len(rest) == 5, api  # noqa: PLR2004

    async def _watch(self, writer: asyncio.StreamWriter, key: tuple[str, str], ns: str | None, api: str, query: dict[str, str]) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        rv_text = query.get("resourceVersion", "")
        since = int(rv_text) if rv_text.isdigit() and rv_text != "0" else self.revision
        if since < self.compacted:
            gone = {"type": "ERROR", "object": status(410, "Expired", f"too old resource version: {since} ({self.compacted})")}
            await _chunk(writer, json.dumps(gone).encode() + b"\n")
            await _chunk(writer, b"")
            return
        w = _Watch(key, ns, parse_bool(query.get("allowWatchBookmarks", "")), api=api, writer=writer)
        if rv_text in ("", "0"):  # "Get State and Start at Most Recent": synthetic ADDED events first
            for (k, n, _), obj in sorted(self.objects.items()):
                if k == key and ns in (None, n):
                    w.queue.put_nowait({"type": "ADDED", "object": self._item(key, obj, list_item=False, api=api)})
        for rv, k, type_, obj in self.history:
            if rv > since and k == key and ns in (None, obj["metadata"]["namespace"]):
                w.queue.put_nowait({"type": type_, "object": self._item(key, obj, list_item=False, api=api)})
        self.watches.append(w)
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds", "").isdigit() else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    event = await asyncio.wait_for(w.queue.get(), wait)
                except TimeoutError:
                    await _chunk(writer, b"")  # the end of a watch that timed out: a clean end of stream
                    return
                if event is None:
                    return
                await _chunk(writer, json.dumps(event).encode() + b"\n")
        finally:
            if w in self.watches:
                self.watches.remove(w)


def parse_bool(text: str) -> bool:
    """A boolean query parameter as the API server reads it (Go's ``strconv.ParseBool``)."""
    return text in ("1", "t", "T", "TRUE", "true", "True")


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


def _prefix(key: tuple[str, str]) -> str:
    return key[0]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _storage_key(api_version: str, kind: str) -> tuple[str, str]:
    """The collection an object of this apiVersion and kind is stored in (any version of a
    multi-version group is the same collection)."""
    group = api_version.rpartition("/")[0]
    if group in MULTI_VERSION:
        for key, (k, api, _) in COLLECTIONS.items():
            if k == kind and api.rpartition("/")[0] == group:
                return key
    return BY_KIND[(api_version, kind)]


def _encode_continue(path: str, revision: int, after: tuple[str, str]) -> str:
    """An opaque continue token: the collection, the snapshot's revision, the last key served."""
    return base64.urlsafe_b64encode(json.dumps({"v": 1, "path": path, "rv": revision, "after": list(after)}).encode()).decode()


def _decode_continue(token: str) -> tuple[str, int, tuple[str, str]] | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = data["after"]
        if data.get("v") != 1 or not isinstance(data["rv"], int) or not (isinstance(after, list) and len(after) == 2):  # noqa: PLR2004
            return None
        return str(data["path"]), data["rv"], (str(after[0]), str(after[1]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
