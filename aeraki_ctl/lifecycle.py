"""Per-object lifecycle: a bad object never moves live traffic.

The controller keeps the last valid version of every object (``Kind namespace/name``). On each
sync the objects read from the sources are translated; an object with an error is rejected alone:
its last valid version is translated in its place (so its routes keep serving exactly as before),
or, if it was never valid, it is left out (it neither adds a route nor removes one). Objects held by
a file that cannot be parsed keep their last valid versions. Removing an object from a readable
file is a real change and is applied. Pure: no IO, no clock, so it is property-tested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aeraki_ctl.resources import Problem, Resource, ResourceSet
from aeraki_ctl.translate import Translation

ACCEPTED = "accepted"
REJECTED = "rejected"  # never valid: not served at all
SERVING_LAST_VALID = "serving-last-valid"  # the current version is rejected; the last valid one serves


@dataclass
class ObjectStatus:
    """What happened to one object at the last sync."""

    ref: str
    source: str
    state: str
    problems: list[str] = field(default_factory=list)
    valid_versions: int = 0  # how many distinct valid versions were accepted so far
    envoy: EnvoyStatus | None = None  # what stock Envoy nodes get of it (once one connected; its listeners' owner only)

    def as_dict(self) -> dict[str, object]:
        """JSON shape served by the admin API's /status."""
        out: dict[str, object] = {"source": self.source, "state": self.state, "problems": list(self.problems), "valid_versions": self.valid_versions}
        if self.envoy is not None:
            out["envoy"] = {"state": self.envoy.state, "problems": list(self.envoy.problems)}
        return out


@dataclass(frozen=True)
class EnvoyStatus:
    """The rendering for stock Envoy of the listeners an object owns (``aeraki_ctl.envoy``):
    ``translated`` (as on our proxy), ``approximated`` (served, with differences), or, when Envoy's
    filter cannot express it, ``serving-last-translatable`` / ``not-served`` (for Envoy nodes
    alone; the object stays accepted for our proxies)."""

    state: str
    problems: tuple[str, ...] = ()


@dataclass
class SyncResult:
    """The translation that is served, and the status of every object."""

    translation: Translation
    status: dict[str, ObjectStatus]
    unread: list[Problem] = field(default_factory=list)  # problems of what could not be read as an object

    @property
    def rejected(self) -> list[str]:
        """Objects whose current version is not served."""
        return [ref for ref, s in self.status.items() if s.state != ACCEPTED]


class Ledger:
    """Last valid versions of the objects, and the rules that decide what is served."""

    def __init__(self) -> None:
        self.last_valid: dict[str, Resource] = {}
        self.versions: dict[str, int] = {}
        self.origin: dict[str, str] = {}  # where each object was last read from
        self._status: dict[str, ObjectStatus] = {}  # the last sync's (an unchanged accepted object keeps its entry)

    def sync(self, loaded: ResourceSet, translate: Callable[[ResourceSet], Translation]) -> SyncResult:
        """Decide what to serve from ``loaded`` and remember the valid versions."""
        current = {r.ref: r for r in loaded.resources}
        refs = set(current)
        broken = _broken_sources(loaded, refs)
        status: dict[str, ObjectStatus] = {}
        served: dict[str, Resource] = dict(current)
        # Objects of an unreadable file keep their last valid versions (a half-written file).
        for ref, source in self.origin.items():
            if ref not in current and source in broken and ref in self.last_valid:
                served[ref] = self.last_valid[ref]
                status[ref] = ObjectStatus(ref, source, SERVING_LAST_VALID, [f"{source} cannot be read: {broken[source]}"])
        substituted: set[str] = set()
        extra = [p for p in loaded.problems if p.obj not in refs]  # file-level and unattributed
        for _ in range(2 * len(served) + 1):  # each object is substituted once, dropped once at most
            result = translate(ResourceSet(resources=list(served.values()), problems=[]))  # in the sources' order
            errors = _errors_by_object(result.problems)
            failing = [ref for ref in served if errors.get(ref)]
            if not failing:
                break
            for ref in failing:
                reasons = [str(p) for p in errors[ref]]
                last = self.last_valid.get(ref)
                if ref not in substituted and last is not None and served[ref] is not last:
                    served[ref] = last
                    substituted.add(ref)
                    status[ref] = ObjectStatus(ref, current[ref].source if ref in current else last.source, SERVING_LAST_VALID, reasons)
                else:  # never valid, or its last valid version no longer translates either
                    del served[ref]
                    prior = status.get(ref)
                    source = current[ref].source if ref in current else last.source if last is not None else "-"
                    status[ref] = ObjectStatus(ref, source, REJECTED, (prior.problems if prior else []) + reasons)
        by_object: dict[str, list[str]] = {}
        for p in result.problems:
            by_object.setdefault(p.obj, []).append(str(p))
        kept: set[str] = set()  # statuses of the last sync that stand as they are
        for ref, resource in current.items():
            if ref in status:
                self.origin.setdefault(ref, resource.source)
                continue
            problems = by_object.get(ref, [])
            last = self.last_valid.get(ref)
            before = self._status.get(ref)
            if before is not None and last is resource and before.state == ACCEPTED and before.problems == problems:
                status[ref] = before  # the same object, accepted again with the same problems
                kept.add(ref)
                continue
            status[ref] = ObjectStatus(ref, resource.source, ACCEPTED, problems)
            if last is None or (last is not resource and last.spec != resource.spec):
                self.versions[ref] = self.versions.get(ref, 0) + 1
            self.last_valid[ref] = resource
            self.origin[ref] = resource.source
        for ref in self.last_valid.keys() - current.keys():  # deleted from a readable source: forgotten
            if ref not in served:
                del self.last_valid[ref]
                self.versions.pop(ref, None)
                self.origin.pop(ref, None)
        for ref, s in status.items():
            if ref not in kept:
                s.valid_versions = self.versions.get(s.ref, 0)
        self._status = status
        return SyncResult(result, status, extra)


def _broken_sources(loaded: ResourceSet, refs: set[str]) -> dict[str, str]:
    """Files with an error that belongs to no object read from them (unparseable YAML, a
    document that is not an object): their objects may just not have been read."""
    broken: dict[str, str] = {}
    for p in loaded.problems:
        if p.fatal and p.obj not in refs:
            broken.setdefault(p.source, p.reason)
    return broken


def _errors_by_object(problems: list[Problem]) -> dict[str, list[Problem]]:
    out: dict[str, list[Problem]] = {}
    for p in problems:
        if p.fatal:
            out.setdefault(p.obj, []).append(p)
    return out
