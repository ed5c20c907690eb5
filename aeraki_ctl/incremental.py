"""Incremental translation: a change to one object retranslates only the hosts that depend on it.

The translation is partitioned by service host (``hosts[0]`` of a ServiceEntry or MetaRouter,
``host`` of a DestinationRule). Per host, two layers, each made by the same functions as the
whole-world :func:`aeraki_ctl.translate.translate` (the reference path):

* **facts**: the host's objects checked as the whole translation checks them (its service ports
  from its ServiceEntries, the DestinationRule served for it, its MetaRouter, whether a rejected
  ServiceEntry or DestinationRule may declare it). They read only the host's own objects and the
  global inputs (ApplicationProtocols, whether some rejected object names no host at all).
* **output**: the host's listeners, route tables and clusters, from its facts and the facts of
  the hosts its routes name (ports, subsets, rejections) and of a rate limit service; each host
  asked about is recorded, so the reverse index (``dependency -> hosts``) says what to redo.

On a call, the objects that changed (identity, then content) mark their hosts' facts; facts that
changed in what others read mark the outputs that depend on them. A change to a global input
(an ApplicationProtocol, an unreadable file, a ServiceEntry or DestinationRule without host)
retranslates everything. Every other host's output is kept, object for object, so the snapshot
keeps its packed resources. ``tests/ctl/test_incremental.py`` checks, for random edit sequences,
that the result equals ``translate`` of the same resources.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from aeraki_ctl import sidecar
from aeraki_ctl.resources import BUILTIN_PROTOCOLS, Problem, Resource, ResourceSet
from aeraki_ctl.translate import (
    Options,
    Translation,
    _application_protocol,
    _destination_rule,
    _Failed,
    _guard,
    _router,
    _Rule,
    _Service,
    _services,
    POLICY_KINDS,
    Policy,
    check_policies,
    check_rejected,
    default_registry,
    service_port,
)
from metaprotocol.config.model import Bootstrap, ClusterConfig, ListenerConfig
from metaprotocol.registry import CodecRegistry
from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from metaprotocol_api.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import MetaRouter

_KEYED = ("ServiceEntry", "DestinationRule", "MetaRouter")
T = TypeVar("T")


@dataclass(frozen=True)
class PortView:
    """What one service port adds to a proxy that imports it (Sidecar scoping): the namespace it is
    declared in, its listener and route table, its own clusters, and every cluster its routes and
    rate limit use (the destinations of its routes come with it, as in Istio)."""

    namespace: str
    port: int
    listener: str
    clusters: tuple[str, ...]
    uses: tuple[str, ...]


@dataclass
class HostOutput:
    """One host's share of the translation."""

    host: str
    listeners: tuple[ListenerConfig, ...] = ()
    clusters: dict[str, ClusterConfig] = field(default_factory=dict)  # its own (outbound|port|subset|host)
    extra: dict[str, ClusterConfig] = field(default_factory=dict)  # added by its MetaRouter (rate limit service)
    ports: tuple[PortView, ...] = ()
    problems: list[Problem] = field(default_factory=list)


@dataclass
class _Facts:
    services: list[_Service]
    rule: _Rule | None
    router: Resource | None
    failed_service: bool
    failed_rule: bool
    problems: list[Problem]

    def seen_by_others(self) -> object:
        """What other hosts' outputs read of this host (a change of it redoes them)."""
        rule = (self.rule.policy, self.rule.subsets) if self.rule is not None else None
        return ([s.port for s in self.services], self.failed_service, self.failed_rule, rule)


def _key(r: Resource) -> str:
    if r.kind == "DestinationRule":
        return str(r.message(DestinationRule).host)
    hosts = r.message(ServiceEntry).hosts if r.kind == "ServiceEntry" else r.message(MetaRouter).hosts
    return str(hosts[0]) if hosts else ""


class IncrementalTranslator:
    """``translate`` with memory: call it with the whole ResourceSet each time; it redoes only what
    changed. ``take_changes`` tells the snapshot builder which hosts' outputs were redone."""

    def __init__(self, options: Options | None = None, registry: CodecRegistry | None = None) -> None:
        self.options = options or Options()
        self.registry = registry if registry is not None else default_registry()
        self.full_passes = 0  # calls that retranslated everything (a global input changed)
        self.retranslated = 0  # host outputs redone, over all calls
        self._touched: set[str] = set()
        self._sidecars_touched = False
        self.outputs: dict[str, HostOutput] = {}
        self.sidecars: tuple[Resource, ...] = ()
        self._objects: dict[str, Resource] = {}
        self._groups: dict[tuple[str, str], dict[str, Resource]] = {}
        self._entries: dict[str, dict[str, Resource]] = {}  # any host listed -> ServiceEntries read without error
        self._aps: dict[str, Resource] = {}
        self._sidecar_objects: dict[str, dict[str, Resource]] = {}
        self._sidecar_checks: dict[str, tuple[list[Problem], list[Resource]]] = {}
        self._hostless: dict[str, set[str]] = {"ServiceEntry": set(), "DestinationRule": set()}
        self._flags: tuple[bool, bool, bool] | None = None  # unreadable file, some_service, some_rule
        self._codecs: dict[str, str] = dict(BUILTIN_PROTOCOLS)
        self._ap_problems: list[Problem] = []
        self._facts: dict[str, _Facts] = {}
        self._deps: dict[tuple[str, str], set[str]] = {}
        self._dep_of: dict[str, set[tuple[str, str]]] = {}
        self._reading: dict[str, tuple[Problem, ...]] = {}  # problems met reading each object (those with any)
        self._host_problems: dict[str, list[Problem]] = {}  # per host with any: its facts' then its output's
        self._policy_objects: dict[str, dict[str, Resource]] = {}  # namespace -> ref -> policy
        self._policies: dict[str, list[Policy]] = {}  # namespace -> its valid policies, translated
        self._policy_problems: dict[str, list[Problem]] = {}

    def owner_of(self, host: str) -> Resource | None:
        """The object a host's listeners answer to: its MetaRouter, else its first ServiceEntry
        (where a problem met rendering its output belongs)."""
        facts = self._facts.get(host)
        if facts is None:
            return None
        if facts.router is not None:
            return facts.router
        return facts.services[0].resource if facts.services else None

    def take_changes(self) -> tuple[set[str], bool]:
        """Hosts whose output was redone or removed since the last call, and whether the served
        Sidecars changed; both are reset."""
        touched, self._touched = self._touched, set()
        sidecars, self._sidecars_touched = self._sidecars_touched, False
        return touched, sidecars

    def give_back(self, touched: set[str], sidecars: bool) -> None:
        """Changes taken and not published (the snapshot could not be made): taken again next time."""
        self._touched |= touched
        self._sidecars_touched |= sidecars

    def __call__(self, resources: ResourceSet) -> Translation:
        """The translation of ``resources`` (equal to ``translate(resources)``), redoing only the
        hosts reached by what changed since the previous call."""
        new: dict[str, Resource] = {}
        changed: list[tuple[str, Resource | None, Resource | None]] = []
        previous, kept = self._objects, 0
        for r in resources.resources:
            ref = r.ref
            if ref in new:  # the same ref twice (two sources): each is its own object
                ref = f"{ref}\x00{len(new)}"
            new[ref] = r
            old = previous.get(ref)
            if old is not None:
                kept += 1
            if old is not r and (old is None or old != r):
                changed.append((ref, old, r))
        if kept != len(previous):
            changed.extend((ref, old, None) for ref, old in previous.items() if ref not in new)
        self._objects = new
        for ref, _, now in changed:
            if now is not None and now.problems:
                self._reading[ref] = now.problems
            else:
                self._reading.pop(ref, None)
        facts_dirty: set[str] = set()
        entries_dirty: set[str] = set()
        sidecar_namespaces: set[str] = set()
        policy_namespaces: set[str] = set()
        reset = False
        for ref, old, now in changed:
            for obj, add in ((old, False), (now, True)):
                if obj is None:
                    continue
                if obj.kind == "ApplicationProtocol":
                    reset = True
                    _put(self._aps, ref, obj, add)
                elif obj.kind == "Sidecar":
                    sidecar_namespaces.add(obj.namespace)
                    _put(self._sidecar_objects.setdefault(obj.namespace, {}), ref, obj, add)
                elif obj.kind in POLICY_KINDS:
                    policy_namespaces.add(obj.namespace)
                    _put(self._policy_objects.setdefault(obj.namespace, {}), ref, obj, add)
                elif obj.kind in _KEYED:
                    key = _key(obj)
                    facts_dirty.add(key)
                    _put(self._groups.setdefault((obj.kind, key), {}), ref, obj, add)
                    if obj.kind == "ServiceEntry" and not obj.rejected:
                        for h in obj.message(ServiceEntry).hosts:
                            entries_dirty.add(h)
                            _put(self._entries.setdefault(h, {}), ref, obj, add)
                    hostless = not obj.message(ServiceEntry).hosts if obj.kind == "ServiceEntry" else not key
                    if obj.kind in self._hostless and hostless:
                        _put_ref(self._hostless[obj.kind], ref, add)
        unreadable = any(p.fatal and p.obj == "-" for p in resources.problems)
        flags = (unreadable, unreadable or bool(self._hostless["ServiceEntry"]), unreadable or bool(self._hostless["DestinationRule"]))
        if reset or flags != self._flags:
            self._flags = flags
            self._reset()
            facts_dirty = {key for _, key in self._groups} | set(self._facts)
        outputs_dirty: set[str] = set()
        for key in facts_dirty:
            old_facts = self._facts.get(key)
            facts = self._compute_facts(key)
            if facts is None:
                self._facts.pop(key, None)
            else:
                self._facts[key] = facts
            outputs_dirty.add(key)
            if old_facts is None or facts is None or old_facts.seen_by_others() != facts.seen_by_others():
                outputs_dirty |= self._deps.get(("host", key), set())
        for h in entries_dirty:
            outputs_dirty |= self._deps.get(("entry", h), set())
        for ns in policy_namespaces:
            if self._check_policies(ns):
                outputs_dirty |= self._deps.get(("policies", ns), set())
        for key in outputs_dirty:
            self._compute_output(key)
        self._touched |= outputs_dirty
        for ns in sidecar_namespaces:
            self._check_sidecars(ns)
        return self._translation(resources, outputs_dirty | facts_dirty)

    # -- the layers -------------------------------------------------------------------------------

    def _reset(self) -> None:
        """A global input changed: everything is redone (the codecs first)."""
        self.full_passes += 1
        self._touched |= set(self.outputs)
        self._host_problems.clear()
        self._facts.clear()
        self._deps.clear()
        self._dep_of.clear()
        self.outputs.clear()
        self._codecs = dict(BUILTIN_PROTOCOLS)
        self._ap_problems = []
        for ap in sorted((r for r in self._aps.values() if not r.rejected), key=lambda r: (r.namespace, r.name)):
            _guard(ap, self._ap_problems, partial(_application_protocol, ap, self._codecs, self._ap_problems), None)

    def _group(self, kind: str, key: str) -> list[Resource]:
        return sorted(self._groups.get((kind, key), {}).values(), key=lambda r: (r.namespace, r.name))

    def _compute_facts(self, key: str) -> _Facts | None:
        ses, drs, mrs = (self._group(kind, key) for kind in _KEYED)
        if not ses and not drs and not mrs:
            return None
        assert self._flags is not None
        problems: list[Problem] = []
        seen: dict[tuple[str, int], Resource] = {}
        services: list[_Service] = []
        failed_service = False
        for se in ses:
            made = None if se.rejected else _guard(se, problems, partial(_services, se, self._codecs, seen, self.registry, problems), None)
            if made is None and se.message(ServiceEntry).hosts:
                failed_service = True
            services.extend(made or [])
        services.sort(key=lambda s: s.port)
        hosts = {key} if services else set()
        rules: dict[str, _Rule] = {}
        failed_rule = False
        for dr in drs:
            if dr.rejected or not _guard(dr, problems, partial(_destination_rule, dr, rules, hosts, problems), False):
                failed_rule = True
        failed = _Failed({key} if failed_service else set(), set(), self._flags[1], self._flags[2])
        routers: dict[str, Resource] = {}
        for mr in mrs:
            if not mr.rejected:
                _guard(mr, problems, partial(_router, mr, routers, hosts, failed, problems), None)
        return _Facts(services, rules.get(key), routers.get(key), failed_service, failed_rule, problems)

    def _compute_output(self, key: str) -> None:
        for dep in self._dep_of.pop(key, set()):
            self._deps.get(dep, set()).discard(key)
        facts = self._facts.get(key)
        if facts is None:
            self.outputs.pop(key, None)
            return
        self.retranslated += 1
        deps: set[tuple[str, str]] = set()
        world = _World(self, deps)
        out = HostOutput(key)
        problems: list[Problem] = []
        hosts = {key} if facts.services else set()
        for kind in _KEYED:
            for r in self._group(kind, key):
                if r.rejected:
                    check_rejected(r, self._codecs, hosts, facts.services, world, self.registry, problems)
        listeners, ports = [], []
        for svc in facts.services:
            own: dict[str, ClusterConfig] = {}
            extra: dict[str, ClusterConfig] = {}
            lst = service_port(svc, facts.rule, facts.router, world, self.options, own, extra, problems)
            listeners.append(lst)
            out.clusters.update(own)
            for name, cfg in extra.items():
                out.extra.setdefault(name, cfg)
            ports.append(PortView(svc.resource.namespace, svc.port, lst.name, tuple(own), tuple(sorted(_uses(lst) | set(extra)))))
        out.listeners, out.ports = tuple(listeners), tuple(ports)
        out.problems = list(dict.fromkeys(problems))
        self.outputs[key] = out
        self._dep_of[key] = deps
        for dep in deps:
            self._deps.setdefault(dep, set()).add(key)

    def _check_policies(self, namespace: str) -> bool:
        """The authorization policies of one namespace checked again; whether what they translate
        to changed (the listeners that read them are then redone)."""
        objects = ResourceSet(list(self._policy_objects.get(namespace, {}).values()))
        problems: list[Problem] = []
        made = check_policies(objects, self.options, problems, namespace).get(namespace, [])
        before = self._policies.get(namespace, [])
        _put_list(self._policy_problems, namespace, problems)
        _put_list(self._policies, namespace, made)
        return made != before

    def _check_sidecars(self, namespace: str) -> None:
        objects = list(self._sidecar_objects.get(namespace, {}).values())
        before = self._sidecar_checks.get(namespace, ([], []))[1]
        problems: list[Problem] = []
        valid = sidecar.check(objects, problems) if objects else []
        if objects:
            self._sidecar_checks[namespace] = (problems, valid)
        else:
            self._sidecar_checks.pop(namespace, None)
        if [r.ref for r in before] != [r.ref for r in valid] or any(a is not b for a, b in zip(before, valid, strict=True)):
            self._sidecars_touched = True
            self.sidecars = tuple(sorted((r for _, v in self._sidecar_checks.values() for r in v), key=lambda r: r.ref))

    # -- the result ---------------------------------------------------------------------------------

    def _translation(self, resources: ResourceSet, redone: set[str]) -> Translation:
        problems = list(resources.problems)
        for found in self._reading.values():
            problems.extend(found)
        problems.extend(self._ap_problems)
        for key in redone:
            facts, out = self._facts.get(key), self.outputs.get(key)
            mine = (facts.problems if facts is not None else []) + (out.problems if out is not None else [])
            if mine:
                self._host_problems[key] = mine
            else:
                self._host_problems.pop(key, None)
        for key in sorted(self._host_problems):
            problems.extend(self._host_problems[key])
        outputs = dict(self.outputs)
        for ns in sorted(self._sidecar_checks):
            problems.extend(self._sidecar_checks[ns][0])
        for ns in sorted(self._policy_problems):
            problems.extend(self._policy_problems[ns])
        return _Lazy(functools.partial(assemble, outputs), list(dict.fromkeys(problems)), self.sidecars)


class _World:
    """The translation's questions about other hosts, answered from their facts and recorded."""

    def __init__(self, owner: IncrementalTranslator, deps: set[tuple[str, str]]) -> None:
        self.owner, self.deps = owner, deps
        flags = owner._flags or (False, False, False)
        self._failed = _RecordingFailed(self, flags[1], flags[2])

    def facts(self, host: str) -> _Facts | None:
        self.deps.add(("host", host))
        return self.owner._facts.get(host)

    def ports(self, host: str) -> list[int]:
        facts = self.facts(host)
        return [s.port for s in facts.services] if facts is not None else []

    def rule(self, host: str) -> _Rule | None:
        facts = self.facts(host)
        return facts.rule if facts is not None else None

    def failed(self) -> _Failed:
        return self._failed

    def policies(self, namespace: str) -> Sequence[Policy]:
        self.deps.add(("policies", namespace))
        return self.owner._policies.get(namespace, [])

    def service_entry(self, host: str) -> Resource | None:
        self.deps.add(("entry", host))
        entries = self.owner._entries.get(host, {})
        return min(entries.values(), key=lambda r: (r.namespace, r.name)) if entries else None


class _RecordingFailed(_Failed):
    def __init__(self, world: _World, some_service: bool, some_rule: bool) -> None:
        super().__init__(set(), set(), some_service, some_rule)
        self.world = world

    def service(self, host: str) -> bool:
        facts = self.world.facts(host)
        return self.some_service or (facts is not None and facts.failed_service)

    def rule(self, host: str) -> bool:
        facts = self.world.facts(host)
        return self.some_rule or (facts is not None and facts.failed_rule)


class _Lazy(Translation):
    """A Translation whose Bootstrap is assembled when first read (the controller reads the host
    outputs directly; tests and tools read the Bootstrap)."""

    def __init__(self, make: Callable[[], Bootstrap], problems: list[Problem], sidecars: tuple[Resource, ...]) -> None:
        self._make: Callable[[], Bootstrap] | None = make
        self._bootstrap: Bootstrap | None = None
        self.problems = problems
        self.sidecars = sidecars

    @property
    def bootstrap(self) -> Bootstrap:
        if self._bootstrap is None and self._make is not None:
            self._bootstrap, self._make = self._make(), None
        assert self._bootstrap is not None
        return self._bootstrap

    @bootstrap.setter
    def bootstrap(self, value: Bootstrap) -> None:
        self._bootstrap, self._make = value, None


def assemble(outputs: Mapping[str, HostOutput]) -> Bootstrap:
    """The Bootstrap of host outputs, as ``translate`` orders it: listeners by host and port,
    clusters by name (a service's own cluster wins over the same name added by a MetaRouter, and
    among those the first host's)."""
    hosts = sorted(outputs)
    listeners = tuple(lst for h in hosts for lst in outputs[h].listeners)
    clusters: dict[str, ClusterConfig] = {}
    for h in hosts:
        clusters.update(outputs[h].clusters)
    for h in hosts:
        for name, cfg in outputs[h].extra.items():
            clusters.setdefault(name, cfg)
    return Bootstrap(listeners, tuple(clusters[k] for k in sorted(clusters)), None, "aeraki-ctl")


def _uses(lst: ListenerConfig) -> set[str]:
    """The clusters a listener's routes and rate limit send to."""
    out: set[str] = set()
    for route in lst.route_config.routes if lst.route_config is not None else ():
        if route.action.cluster:
            out.add(route.action.cluster)
        out.update(w.name for w in route.action.weighted_clusters)
        out.update(m.cluster for m in route.mirrors)
    if lst.global_rate_limit is not None:
        out.add(lst.global_rate_limit.service_cluster)
    return out


def _put(group: dict[str, Resource], ref: str, r: Resource, add: bool) -> None:
    if add:
        group[ref] = r
    else:
        group.pop(ref, None)


def _put_list(by: dict[str, list[T]], key: str, items: list[T]) -> None:
    if items:
        by[key] = items
    else:
        by.pop(key, None)


def _put_ref(refs: set[str], ref: str, add: bool) -> None:
    if add:
        refs.add(ref)
    else:
        refs.discard(ref)

