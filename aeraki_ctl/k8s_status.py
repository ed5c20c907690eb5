"""Status written back to Kubernetes, and the leader election that decides who writes it.

``LeaderElector`` holds a ``coordination.k8s.io/v1`` Lease (``aeraki-ctl`` in the namespace of the
pod, by default): every ``retry_period`` (``lease_duration / 3``) it reads the Lease; a replica
that holds it renews ``renewTime``; one that does not takes it over only when it is free (no
``holderIdentity``) or expired (``renewTime + leaseDurationSeconds`` is in the past); every write
carries the ``resourceVersion`` it read, so two replicas racing for it get one ``409 Conflict`` and
read again. A leader that could not renew for a whole ``lease_duration`` stops calling itself the
leader (another replica may hold the Lease by then). ``release()`` (on shutdown) clears
``holderIdentity`` so that another replica takes over at its next try rather than after expiry.

``StatusWriter`` gives each MetaRouter that came from Kubernetes ``status.conditions`` with one
condition of type ``Accepted`` from the object lifecycle (``lifecycle.py``): ``True``/``Accepted``,
``False``/``ServingLastValid`` (the last valid version serves), ``False``/``Invalid`` (never valid:
not served); the message is the problems joined (at most ``MESSAGE_LIMIT`` characters);
``observedGeneration`` is the ``metadata.generation`` of the object that sync read;
``lastTransitionTime`` changes only when the condition's status flips. It writes through the
status subresource (``PUT .../metarouters/NAME/status`` with the ``resourceVersion`` it read),
only when the condition differs from what the object holds, and only while the elector says this
replica leads. A ``409 Conflict`` is retried after reading the object again.

Once a stock Envoy node has connected (docs/data-planes.md), a second condition, ``EnvoyAccepted``,
says what Envoy nodes get of the MetaRouter: ``True``/``Translated`` (as on our proxy),
``True``/``Approximated`` (served with differences, listed), ``False``/``ServingLastTranslatable``
or ``False``/``NotServed`` (Envoy's filter cannot express it; our proxies serve it regardless).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aeraki_ctl.lifecycle import ACCEPTED, SERVING_LAST_VALID, ObjectStatus

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "metaprotocol.aeraki.io", "v1alpha1", "metarouters"
LEASE_NAME = "aeraki-ctl"
DEFAULT_LEASE_NAMESPACE = "aeraki"
CONDITION = "Accepted"
ENVOY_CONDITION = "EnvoyAccepted"
_ENVOY_REASONS = {"translated": ("True", "Translated"), "approximated": ("True", "Approximated"),
                  "serving-last-translatable": ("False", "ServingLastTranslatable"), "not-served": ("False", "NotServed")}  # fmt: skip
MESSAGE_LIMIT = 1024
CONFLICT_RETRIES = 5
HTTP_OK, HTTP_CREATED, HTTP_NOT_FOUND, HTTP_CONFLICT = 200, 201, 404, 409


def default_identity() -> str:
    """The pod's name (``POD_NAME``, from the downward API) or the host name, and the process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def default_lease_namespace() -> str:
    """The pod's namespace (``POD_NAMESPACE``), else ``aeraki``."""
    return os.environ.get("POD_NAMESPACE") or DEFAULT_LEASE_NAMESPACE


def micro_time(t: float) -> str:
    """A ``meta/v1`` MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc3339(t: float) -> str:
    """A ``meta/v1`` Time (RFC 3339, seconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 time; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ApiError(Exception):
    """The API server answered with an unexpected status."""


async def _call(request: Any) -> tuple[int, dict[str, Any]]:
    """Await a ``kubernetes_asyncio`` call made with ``_preload_content=False``: (HTTP status, JSON body)."""
    response = await request
    async with response:
        body = await response.read()
        code = int(response.status)
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {"message": body[:200].decode("utf-8", "replace")}
    return code, data if isinstance(data, dict) else {}


class LeaderElector:
    """Leader election on a Lease; ``is_leader`` is what this replica believes now."""

    def __init__(
        self,
        api_client: Any,
        namespace: str | None = None,
        *,
        name: str = LEASE_NAME,
        identity: str | None = None,
        lease_duration: int = 15,
        retry_period: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace or default_lease_namespace()
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = int(lease_duration)
        self.retry_period = retry_period if retry_period is not None else self.lease_duration / 3
        self.clock = clock
        self.is_leader = False
        self.holder: str | None = None  # who holds the Lease, as last read
        self.transitions = 0  # times this replica became the leader
        self.last_error = ""
        self._renewed = 0.0  # when this replica last wrote the Lease as its holder
        self._listeners: list[Callable[[bool], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(is_leader)`` whenever leadership is gained or lost."""
        self._listeners.append(listener)

    def status(self) -> dict[str, object]:
        """For the admin API's ``/status`` (and the ``aeraki_ctl_leader`` gauge)."""
        return {"leader": self.is_leader, "identity": self.identity, "holder": self.holder, "lease": f"{self.namespace}/{self.name}", "transitions": self.transitions}

    def _api(self) -> Any:
        from kubernetes_asyncio import client

        return client.CoordinationV1Api(self.api_client)

    def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            self.transitions += 1
        log.info("%s %s the leader (Lease %s/%s)", self.identity, "is now" if leader else "is no longer", self.namespace, self.name)
        for listener in self._listeners:
            try:
                listener(leader)
            except Exception:  # noqa: BLE001 - a listener must not stop the election
                log.exception("leadership listener failed")

    def _spec(self, now: float, lease: Mapping[str, Any] | None) -> dict[str, Any]:
        old = dict((lease or {}).get("spec") or {})
        ours = old.get("holderIdentity") == self.identity
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": old.get("acquireTime") if ours and old.get("acquireTime") else micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if ours or lease is None else 1),
        }
        return spec

    async def try_once(self) -> bool:
        """One round: read the Lease; create, renew or take it over as the rules allow. Whether
        this replica holds it afterwards."""
        api = self._api()
        now = self.clock()
        code, lease = await _call(api.read_namespaced_lease(self.name, self.namespace, _preload_content=False))
        if code == HTTP_NOT_FOUND:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(now, None)}
            code, created = await _call(api.create_namespaced_lease(self.namespace, body, _preload_content=False))
            if code in (HTTP_OK, HTTP_CREATED):
                return self._held(now, created)
            if code == HTTP_CONFLICT:  # another replica created it first
                return self._lost(None)
            raise ApiError(f"create Lease {self.namespace}/{self.name}: HTTP {code}: {created.get('message')}")
        if code != HTTP_OK:
            raise ApiError(f"read Lease {self.namespace}/{self.name}: HTTP {code}: {lease.get('message')}")
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        self.holder = holder
        if holder is not None and holder != self.identity:
            renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or 0.0
            duration = int(spec.get("leaseDurationSeconds") or self.lease_duration)
            if renewed + duration > now:  # held by another replica and not expired: follow
                return self._lost(holder)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": lease.get("metadata", {}).get("resourceVersion")}, "spec": self._spec(now, lease)}
        code, updated = await _call(api.replace_namespaced_lease(self.name, self.namespace, body, _preload_content=False))
        if code == HTTP_OK:
            return self._held(now, updated)
        if code in (HTTP_CONFLICT, HTTP_NOT_FOUND):  # someone wrote it since we read it: read again next round
            return self._lost(self.holder) if holder != self.identity else self._keep_until_expiry(now)
        raise ApiError(f"update Lease {self.namespace}/{self.name}: HTTP {code}: {updated.get('message')}")

    def _held(self, now: float, lease: Mapping[str, Any]) -> bool:
        self._renewed = now
        self.holder = (lease.get("spec") or {}).get("holderIdentity") or self.identity
        self._set(True)
        return True

    def _lost(self, holder: str | None) -> bool:
        self.holder = holder
        self._set(False)
        return False

    def _keep_until_expiry(self, now: float) -> bool:
        if self.is_leader and now - self._renewed >= self.lease_duration:
            self._set(False)
        return self.is_leader

    async def run(self) -> None:
        """Try every ``retry_period`` until cancelled (then release the Lease if held)."""
        try:
            while True:
                try:
                    await self.try_once()
                    self.last_error = ""
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the API server away: keep trying; a leader that cannot renew steps down
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("leader election: %s", self.last_error)
                    self._keep_until_expiry(self.clock())
                await asyncio.sleep(self.retry_period)
        finally:
            if self.is_leader:
                await asyncio.shield(self._release_quietly())

    def start(self) -> None:
        """Run the election in a task."""
        self._task = asyncio.ensure_future(self.run())

    async def stop(self, release: bool = True) -> None:
        """Stop trying; with ``release`` (the default) a held Lease is released."""
        task, self._task = self._task, None
        if task is not None:
            if not release:
                self._set(False)  # step down without telling the API server (a crashed replica)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif release:
            await self._release_quietly()

    async def _release_quietly(self) -> None:
        try:
            await self.release()
        except Exception as exc:  # noqa: BLE001 - shutting down: the Lease expires anyway
            log.warning("could not release the Lease %s/%s: %s", self.namespace, self.name, exc)

    async def release(self) -> bool:
        """Clear ``holderIdentity`` if this replica holds the Lease; whether it did."""
        if not self.is_leader:
            return False
        self._set(False)
        api = self._api()
        code, lease = await _call(api.read_namespaced_lease(self.name, self.namespace, _preload_content=False))
        if code != HTTP_OK or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return False
        spec = dict(lease.get("spec") or {})
        spec.pop("holderIdentity", None)
        spec["renewTime"] = micro_time(self.clock())
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": lease.get("metadata", {}).get("resourceVersion")}, "spec": spec}
        code, _ = await _call(api.replace_namespaced_lease(self.name, self.namespace, body, _preload_content=False))
        self.holder = None if code == HTTP_OK else self.holder
        return code == HTTP_OK


@dataclass(frozen=True)
class Observed:
    """One MetaRouter's lifecycle state as a sync saw it, with the generation it read."""

    namespace: str
    name: str
    generation: int | None
    status: ObjectStatus


def condition_of(s: ObjectStatus, generation: int | None) -> dict[str, Any]:
    """The ``Accepted`` condition for a lifecycle state (without ``lastTransitionTime``)."""
    if s.state == ACCEPTED:
        status, reason = "True", "Accepted"
    elif s.state == SERVING_LAST_VALID:
        status, reason = "False", "ServingLastValid"
    else:
        status, reason = "False", "Invalid"
    message = _limit("; ".join(s.problems) or ("accepted" if s.state == ACCEPTED else reason))
    out: dict[str, Any] = {"type": CONDITION, "status": status, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def conditions_of(s: ObjectStatus, generation: int | None) -> list[dict[str, Any]]:
    """``Accepted``, and ``EnvoyAccepted`` once Envoy nodes are served (without ``lastTransitionTime``)."""
    out = [condition_of(s, generation)]
    if s.envoy is not None:
        status, reason = _ENVOY_REASONS[s.envoy.state]
        message = _limit("; ".join(s.envoy.problems) or "translated for Envoy's own filters")
        envoy: dict[str, Any] = {"type": ENVOY_CONDITION, "status": status, "reason": reason, "message": message}
        if generation is not None:
            envoy["observedGeneration"] = generation
        out.append(envoy)
    return out


def _limit(message: str) -> str:
    return message[: MESSAGE_LIMIT - 3] + "..." if len(message) > MESSAGE_LIMIT else message


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any]) -> bool:
    return a is not None and all(a.get(k) == b.get(k) for k in ("type", "status", "reason", "message", "observedGeneration"))


def _all_same(obj: Mapping[str, Any], wanted: list[dict[str, Any]]) -> bool:
    """The object holds every wanted condition, and no ``EnvoyAccepted`` that is not wanted."""
    stale = not any(w["type"] == ENVOY_CONDITION for w in wanted) and _current(obj, ENVOY_CONDITION) is not None
    return not stale and all(_same(_current(obj, w["type"]), w) for w in wanted)


def _current(obj: Mapping[str, Any], kind: str = CONDITION) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == kind:
            return c
    return None


def parse_source(source: str) -> tuple[str, str, str] | None:
    """``k8s://<ns>/<Kind>/<name>`` -> (ns, Kind, name)."""
    if not source.startswith("k8s://"):
        return None
    parts = source[len("k8s://") :].split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None  # noqa: PLR2004


class StatusWriter:
    """Writes each Kubernetes MetaRouter's ``Accepted`` condition while ``leader()`` says so.

    ``observe(objects)`` is called right after each sync (on the loop, before it yields), so the
    generations it reads from ``cache`` (the Kubernetes source's ``(kind, ns, name) -> object``)
    are those of the objects that sync evaluated; the writing happens in ``run()``'s task.
    """

    def __init__(
        self,
        api_client: Any,
        cache: Mapping[tuple[str, str, str], Mapping[str, Any]],
        leader: Callable[[], bool],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api_client = api_client
        self.cache = cache
        self.leader = leader
        self.clock = clock
        self.observed: dict[tuple[str, str], Observed] = {}
        self.writes = 0  # status writes that succeeded
        self.conflicts = 0  # 409s retried
        self.failures = 0  # writes given up (logged)
        self._wanted = asyncio.Event()
        self._mine: dict[tuple[str, str], tuple[str, list[dict[str, Any]]]] = {}  # (ns, name) -> (resourceVersion written over, conditions written)

    def observe(self, objects: Mapping[str, ObjectStatus]) -> None:
        """Record the lifecycle state of every MetaRouter from Kubernetes, and wake the writer."""
        observed = {}
        for s in objects.values():
            where = parse_source(s.source)
            if where is None or where[1] != "MetaRouter":
                continue
            ns, _, name = where
            obj = self.cache.get(("MetaRouter", ns, name)) or {}
            generation = (obj.get("metadata") or {}).get("generation")
            observed[(ns, name)] = Observed(ns, name, int(generation) if isinstance(generation, int) else None, s)
        self.observed = observed
        self._mine = {k: v for k, v in self._mine.items() if k in observed}
        self._wanted.set()

    def wake(self) -> None:
        """Reconcile again (on gaining leadership)."""
        self._wanted.set()

    async def run(self) -> None:
        """Reconcile whenever woken, until cancelled."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep the writer alive; the next sync tries again
                self.failures += 1
                log.exception("writing MetaRouter status failed")

    def _pending(self, key: tuple[str, str], o: Observed) -> list[dict[str, Any]] | None:
        """The conditions to write for ``key``, or None when the object already says them."""
        want = conditions_of(o.status, o.generation)
        obj = self.cache.get(("MetaRouter", *key))
        if obj is None:
            return None
        mine = self._mine.get(key)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if mine is not None and mine[0] == rv and len(mine[1]) == len(want) and all(_same(a, b) for a, b in zip(mine[1], want, strict=True)):
            return None  # our write's MODIFIED event has not arrived yet: the cache is older than it
        return None if _all_same(obj, want) else want

    async def reconcile(self) -> int:
        """Write every condition that differs (when leading); how many were written."""
        written = 0
        for key, o in list(self.observed.items()):
            if not self.leader():
                return written
            if self._pending(key, o) is None:
                continue
            if await self._write(key, o):
                written += 1
        return written

    async def _write(self, key: tuple[str, str], o: Observed) -> bool:
        from kubernetes_asyncio import client

        api = client.CustomObjectsApi(self.api_client)
        ns, name = key
        obj: Mapping[str, Any] | None = self.cache.get(("MetaRouter", ns, name))
        for _ in range(CONFLICT_RETRIES):
            if obj is None or not self.leader():
                return False
            wanted = conditions_of(o.status, o.generation)
            if _all_same(obj, wanted):
                return False
            for want in wanted:
                current = _current(obj, want["type"])
                if current is not None and current.get("status") == want["status"] and current.get("lastTransitionTime"):
                    want["lastTransitionTime"] = current["lastTransitionTime"]
                else:
                    want["lastTransitionTime"] = rfc3339(self.clock())
            kinds = {CONDITION, ENVOY_CONDITION}  # ours, replaced whole (an EnvoyAccepted no longer wanted goes)
            status = dict(obj.get("status") or {})
            status["conditions"] = [c for c in status.get("conditions") or [] if not (isinstance(c, dict) and c.get("type") in kinds)] + wanted
            want = wanted[0]
            meta = obj.get("metadata") or {}
            rv = meta.get("resourceVersion")
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MetaRouter", "metadata": {"name": name, "namespace": ns, "resourceVersion": rv}, "status": status}
            code, answer = await _call(api.replace_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, name, body, _preload_content=False))
            if code == HTTP_OK:
                self.writes += 1
                self._mine[key] = (str(rv), wanted)
                log.info("MetaRouter %s/%s: %s=%s (%s), generation %s", ns, name, CONDITION, want["status"], want["reason"], want.get("observedGeneration"))
                return True
            if code == HTTP_NOT_FOUND:  # deleted meanwhile
                return False
            if code != HTTP_CONFLICT:
                self.failures += 1
                log.warning("MetaRouter %s/%s: status write failed: HTTP %s: %s", ns, name, code, answer.get("message"))
                return False
            self.conflicts += 1  # someone wrote it since it was read: read it again and retry
            code, fresh = await _call(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _preload_content=False))
            if code == HTTP_NOT_FOUND:
                return False
            if code != HTTP_OK:
                self.failures += 1
                log.warning("MetaRouter %s/%s: cannot read it again: HTTP %s", ns, name, code)
                return False
            if (fresh.get("metadata") or {}).get("generation") != meta.get("generation"):
                return False  # a new spec: the next sync decides its status
            obj = fresh
        self.failures += 1
        log.warning("MetaRouter %s/%s: status write still conflicting after %d tries", ns, name, CONFLICT_RETRIES)
        return False
