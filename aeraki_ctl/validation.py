"""Validating one object in the context of the others it can see (``aeraki-ctl validate``, the
admission webhook).

The checks are the translation's (:func:`aeraki_ctl.translate.translate`) and the typed parsing's
(:mod:`aeraki_ctl.resources`): the same code decides what ``aeraki-ctl validate`` and the
controller reject. An admission request carries one object and nothing else, so what it refers to
and is not in the context (its host's ServiceEntry, a destination's host or subset, an
ApplicationProtocol named by a port, a rate limit service) is stood in for by a *placeholder* that
accepts any reference: what can be judged from the object alone is judged (typed parse errors with
their field paths, durations, regexes, weights and their sum, required fields, token buckets),
what needs the others is not (``require_references=False``). A referenced object that *is* in the
context is used as it is, so that a MetaRouter's mutations are checked against the capabilities
of its service's codec when its ServiceEntry is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aeraki_ctl.resources import BUILTIN_PROTOCOLS, Problem, Resource, ResourceSet, add_object
from aeraki_ctl.translate import PORT_PREFIX, translate
from metaprotocol.registry import CodecRegistry
from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule, Subset
from metaprotocol_api.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry, ServicePort
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import ApplicationProtocol, MetaRouter

PLACEHOLDER_SOURCE = "(placeholder)"
_PLACEHOLDER_PROTOCOL = "placeholder"  # one dash-token: Aeraki reads the third token of the port name
_PLACEHOLDER_CODEC = "aeraki.meta_protocol.codec.placeholder"
_DEFAULT_PORT = 1
_MOOT = ("the MetaRouter is not applied to ",)  # a consequence, not a problem, when nothing is served


@dataclass
class Verdict:
    """What validating one object found: its ref (``Kind ns/name``, or ``-`` when it has none) and
    every problem, errors and warnings, each with its field path."""

    ref: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        """Problems that reject the object."""
        return [p for p in self.problems if p.fatal]

    @property
    def warnings(self) -> list[Problem]:
        """Problems that do not (fields read but not applied, kinds ignored)."""
        return [p for p in self.problems if not p.fatal]

    @property
    def allowed(self) -> bool:
        """Whether the object has no error."""
        return not self.errors


def validate_resources(resources: ResourceSet, registry: CodecRegistry | None = None) -> list[Problem]:
    """Every problem of a whole set, each object in the context of all the others (``aeraki-ctl
    validate``)."""
    return translate(resources, registry=registry).problems


def validate_object(
    doc: Mapping[str, object],
    context: ResourceSet | None = None,
    *,
    require_references: bool = False,
    source: str = "admission",
    registry: CodecRegistry | None = None,
) -> Verdict:
    """The problems of ``doc`` (an object as a mapping: apiVersion, kind, metadata, spec) in the
    context of ``context`` (the other objects it can see; none by default). An object of the same
    kind and name in the context is replaced by ``doc`` (an update). With ``require_references``
    what ``doc`` refers to must be in the context, as ``aeraki-ctl validate`` requires; without,
    placeholders stand in for what is missing."""
    mine = ResourceSet()
    add_object(doc, source, mine)
    if not mine.resources:  # not an object, not a kind of ours, no name: what the reading said
        return Verdict("-", list(mine.problems))
    obj = mine.resources[0]
    others = [r for r in (context.resources if context is not None else []) if r.ref != obj.ref]
    world = ResourceSet([*others, obj], [])
    if not require_references:
        world.resources.extend(_placeholders(obj, others))
    problems = [p for p in translate(world, registry=registry).problems if p.obj == obj.ref]
    if not require_references:
        problems = [p for p in problems if not (not p.fatal and p.reason.startswith(_MOOT))]
    return Verdict(obj.ref, [*mine.problems, *problems])


# -- placeholders ---------------------------------------------------------------------------------


def _placeholders(obj: Resource, others: list[Resource]) -> list[Resource]:
    """Stand-ins for what ``obj`` refers to and ``others`` lack."""
    known_hosts = {h for r in others if r.kind == "ServiceEntry" for h in r.message(ServiceEntry).hosts[:1]}
    ruled = {r.message(DestinationRule).host for r in others if r.kind == "DestinationRule"}
    protocols = set(BUILTIN_PROTOCOLS) | {r.message(ApplicationProtocol).protocol for r in others if r.kind == "ApplicationProtocol"}
    ports: dict[str, set[int]] = {}  # host -> port numbers it must have
    subsets: dict[str, set[str]] = {}
    needed_protocols: set[str] = set()
    if obj.kind == "MetaRouter":
        spec = obj.message(MetaRouter)
        main = spec.hosts[0] if spec.hosts else ""
        if main:
            ports.setdefault(main, set())
        for route in spec.routes:
            dests = [d.destination for d in route.route] + ([route.mirror] if route.HasField("mirror") else [])
            for d in dests:
                if not d.host:
                    continue
                ports.setdefault(d.host, set())
                if d.HasField("port") and 1 <= d.port.number <= 65535:  # noqa: PLR2004
                    ports[d.host].add(d.port.number)
                if d.subset:
                    subsets.setdefault(d.host, set()).add(d.subset)
        if spec.HasField("global_rate_limit"):
            parts = spec.global_rate_limit.rate_limit_service.split("|")
            if len(parts) == 4 and parts[1].isdigit() and parts[3] and 1 <= int(parts[1]) <= 65535:  # noqa: PLR2004
                ports.setdefault(parts[3], set()).add(int(parts[1]))
    elif obj.kind == "ServiceEntry":
        for p in obj.message(ServiceEntry).ports:
            tokens = p.name.split("-")
            if p.name.startswith(PORT_PREFIX) and len(tokens) > 2 and tokens[2] and tokens[2] not in protocols:  # noqa: PLR2004
                needed_protocols.add(tokens[2])
    elif obj.kind == "DestinationRule":
        host = obj.message(DestinationRule).host
        if host:
            ports.setdefault(host, set())
    out: list[Resource] = []
    if ports.keys() - known_hosts:
        needed_protocols.add(_PLACEHOLDER_PROTOCOL)
    for protocol in sorted(needed_protocols):
        out.append(_resource("ApplicationProtocol", f"placeholder-{protocol}", ApplicationProtocol(protocol=protocol, codec=_PLACEHOLDER_CODEC)))
    for i, host in enumerate(sorted(ports.keys() - known_hosts)):
        # every placeholder host has the default port too, so a destination without port.number
        # resolves to it (the service's own port) wherever the real service would have one
        numbers = sorted(ports[host] | {_DEFAULT_PORT})
        se = ServiceEntry(hosts=[host], ports=[_port(n) for n in numbers])
        out.append(_resource("ServiceEntry", f"placeholder-se-{i}", se))
    for i, host in enumerate(sorted(subsets.keys() - ruled)):
        dr = DestinationRule(host=host, subsets=[Subset(name=s) for s in sorted(subsets[host])])
        out.append(_resource("DestinationRule", f"placeholder-dr-{i}", dr))
    return out


def _port(number: int) -> ServicePort:
    return ServicePort(number=number, name=f"{PORT_PREFIX}{_PLACEHOLDER_PROTOCOL}-{number}", protocol="TCP")


def _resource(kind: str, name: str, spec: object) -> Resource:
    return Resource(kind, name, "(placeholder)", spec, PLACEHOLDER_SOURCE)
