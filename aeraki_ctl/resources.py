"""Aeraki- and Istio-shaped resources read from YAML files (the embedded default source).

Kinds: ``MetaRouter`` and ``ApplicationProtocol`` (``metaprotocol.aeraki.io/v1alpha1``),
``ServiceEntry``, ``DestinationRule`` and ``Sidecar`` (``networking.istio.io``),
``AuthorizationPolicy`` and ``PeerAuthentication`` (``security.istio.io``) and ``DubboAuthorizationPolicy``
(``dubbo.aeraki.io``). Each spec is read into its
protobuf message (``metaprotocol_api``: Aeraki's and Istio's own packages, names and field
numbers) with ``google.protobuf.json_format``, after a check against the message's descriptor that
reports *every* unknown field and wrongly typed value with its path
(``spec.routes[1].route[0].weight``) and the line it is on. Durations are read in Istio's Go
syntax (``1m30s``, ``250ms``, ``1h``) by :func:`parse_duration`, exactly. The check is
:mod:`metaprotocol.xds.typed`, shared with the proxy's bootstrap reader.

This is the only module that touches the raw YAML: everything after it works on typed messages.
An object with an error is still listed (``Resource.rejected``) so that the translation reports it
and the controller can keep serving its last valid version; it is never served itself.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf.message import Message

from metaprotocol.xds import typed
from metaprotocol.xds.typed import Errors, child, index
from metaprotocol.xds.typed import parse_duration as parse_duration  # re-exported
from metaprotocol.xds.typed import seconds as seconds  # re-exported
from metaprotocol_api.dubbo_aeraki_io.v1alpha1.dubbo_authorization_policy_pb2 import DubboAuthorizationPolicy
from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from metaprotocol_api.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from metaprotocol_api.istio.networking.v1alpha3.sidecar_pb2 import Sidecar
from metaprotocol_api.istio.security.v1beta1.authorization_policy_pb2 import AuthorizationPolicy
from metaprotocol_api.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import ApplicationProtocol, MetaRouter

# libyaml's loader when PyYAML has it (about ten times faster on large directories).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
METAPROTOCOL_GROUP = "metaprotocol.aeraki.io"
ISTIO_GROUP = "networking.istio.io"
SECURITY_GROUP = "security.istio.io"
DUBBO_GROUP = "dubbo.aeraki.io"
KINDS = {"MetaRouter": METAPROTOCOL_GROUP, "ApplicationProtocol": METAPROTOCOL_GROUP, "ServiceEntry": ISTIO_GROUP, "DestinationRule": ISTIO_GROUP, "Sidecar": ISTIO_GROUP,
         "AuthorizationPolicy": SECURITY_GROUP, "PeerAuthentication": SECURITY_GROUP, "DubboAuthorizationPolicy": DUBBO_GROUP}  # fmt: skip
MESSAGES: dict[str, type[Message]] = {"MetaRouter": MetaRouter, "ApplicationProtocol": ApplicationProtocol, "ServiceEntry": ServiceEntry, "DestinationRule": DestinationRule,
                                      "Sidecar": Sidecar, "AuthorizationPolicy": AuthorizationPolicy, "PeerAuthentication": PeerAuthentication,
                                      "DubboAuthorizationPolicy": DubboAuthorizationPolicy}  # fmt: skip
BUILTIN_PROTOCOLS = {"dubbo": "aeraki.meta_protocol.codec.dubbo", "thrift": "aeraki.meta_protocol.codec.thrift"}
_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}
READ_ANNOTATIONS = frozenset({"istio.io/dry-run"})  # an AuthorizationPolicy evaluated and counted, not enforced

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Problem:
    """Something wrong (``fatal``: the object is rejected) or ignored (a warning) in an object.

    ``obj`` is the object's ref (``Kind namespace/name``), or ``-`` for what belongs to no object
    (a file that is not YAML, a document without a name); ``line`` is 1-based where known and
    ``path`` the field path inside the object (``spec.routes[0].route[1].weight``).
    """

    source: str
    obj: str
    reason: str
    fatal: bool = True
    line: int | None = None
    path: str = ""

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        parts = [where]
        if self.obj and self.obj != "-":
            parts.append(self.obj)
        if self.path:
            parts.append(self.path)
        return ": ".join([*parts, self.reason])


@dataclass
class Resource:
    """One object: kind, namespace/name, its typed spec (a protobuf message of the kind's type), and
    where it came from. ``problems`` are those met while reading it; with any error it is
    ``rejected`` (reported by the translation, never served)."""

    kind: str
    name: str
    namespace: str
    spec: Any
    source: str
    line: int | None = None
    problems: tuple[Problem, ...] = ()
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    """The line of each field path the YAML had (for problems found later)."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The annotations aeraki-ctl reads (:data:`READ_ANNOTATIONS`; the others are not kept, so
    that an unrelated annotation's change is no change)."""

    @functools.cached_property
    def ref(self) -> str:
        """``Kind namespace/name`` for messages (kind, name and namespace never change)."""
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def rejected(self) -> bool:
        """Whether reading the object met an error."""
        return any(p.fatal for p in self.problems)

    def problem(self, reason: str, path: str = "", fatal: bool = True) -> Problem:
        """A problem of this object at ``path`` (its line looked up)."""
        return Problem(self.source, self.ref, reason, fatal, _line_of(self.lines, path, self.line), path)

    def message(self, cls: type[M]) -> M:
        """The spec as ``cls`` (the kind's message type)."""
        if not isinstance(self.spec, cls):
            raise TypeError(f"{self.ref}: spec is {type(self.spec).__name__}, not {cls.__name__}")
        return self.spec


@dataclass
class ResourceSet:
    """Everything read from a source, and the problems met on the way that belong to no object
    (those of an object are on it: ``Resource.problems``)."""

    resources: list[Resource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def of(self, kind: str) -> list[Resource]:
        """Resources of a kind, in a stable order (namespace, name)."""
        return sorted((r for r in self.resources if r.kind == kind), key=lambda r: (r.namespace, r.name))


# -- paths and lines ------------------------------------------------------------------------------

def _node_lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is None:
                continue
            p = child(path, key)
            out[p] = k.start_mark.line + 1
            _node_lines(v, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, index(path, i), out)


def _line_of(lines: Mapping[str, int], path: str, default: int | None) -> int | None:
    """The line of ``path``, or of its nearest parent the YAML had."""
    p = path
    while p:
        if p in lines:
            return lines[p]
        cut = max(p.rfind("."), p.rfind("["))
        p = p[:cut] if cut > 0 else ""
    return default


def parse_spec(kind: str, spec: object, path: str = "spec") -> tuple[Message, Errors]:
    """``spec`` read into the kind's message, and every problem as (field path, reason)."""
    msg = MESSAGES[kind]()
    errs = typed.parse(spec, msg, path, typed.ISTIO)
    return msg, errs


# -- loading --------------------------------------------------------------------------------------


def load_directory(path: str | Path) -> ResourceSet:
    """Every ``*.yaml``/``*.yml`` file under ``path`` (sorted), multi-document files included."""
    root = Path(path)
    out = ResourceSet()
    if not root.is_dir():
        out.problems.append(Problem(str(root), "-", "not a directory"))
        return out
    for file in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.problems.append(Problem(str(file), "-", f"cannot be read: {exc}"))
            continue
        load_text(text, str(file), out)
    return out


def load_text(text: str, source: str, out: ResourceSet) -> None:
    """Parse the objects of one YAML text into ``out``. Documents before a YAML syntax error are
    kept; the error is reported with its line."""
    loader = _LOADER(text)
    seen = {r.ref: r for r in out.resources}
    try:
        i = 0
        while True:
            try:
                if not loader.check_node():
                    break
                node = loader.get_node()
                doc = loader.construct_document(node)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
                line = mark.line + 1 if mark is not None else None
                parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
                reason = " ".join(str(p) for p in parts if p) or " ".join(str(exc).split())
                out.problems.append(Problem(source, "-", f"not valid YAML: {reason}", line=line))
                return
            except (ValueError, TypeError, RecursionError) as exc:  # odd YAML PyYAML cannot construct
                out.problems.append(Problem(source, "-", f"not valid YAML: {type(exc).__name__}: {exc}"))
                return
            if doc is not None and node is not None:
                _add_document(doc, node, source, i, out, seen)
            i += 1
    finally:
        loader.dispose()


def _add_document(doc: object, node: yaml.Node, source: str, i: int, out: ResourceSet, seen: dict[str, Resource]) -> None:
    lines: dict[str, int] = {}
    _node_lines(node, "", lines)
    line = node.start_mark.line + 1
    if isinstance(doc, Mapping) and doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            out.problems.append(Problem(source, "-", f"document {i}: a List needs items (a list of objects)", line=line))
            return
        for j, item in enumerate(items):
            prefix = f"items[{j}]"
            item_lines = {k[len(prefix) :].lstrip("."): v for k, v in lines.items() if k == prefix or k.startswith((prefix + ".", prefix + "["))}
            _add(item, source, f"document {i} item {j}", item_lines.get("", line), item_lines, out, seen)
        return
    _add(doc, source, f"document {i}", line, lines, out, seen)


def _add(doc: object, source: str, where: str, line: int, lines: Mapping[str, int], out: ResourceSet, seen: dict[str, Resource]) -> None:
    if not isinstance(doc, Mapping):
        out.problems.append(Problem(source, "-", f"{where} is not an object (a mapping with apiVersion, kind, metadata, spec)", line=line))
        return
    kind = doc.get("kind")
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name, namespace = meta.get("name"), meta.get("namespace", "default")
    if not isinstance(kind, str) or not kind:
        out.problems.append(Problem(source, "-", f"{where}: kind is required (a string)", line=_line_of(lines, "kind", line)))
        return
    if kind not in KINDS:
        out.problems.append(Problem(source, f"{kind} {namespace}/{name}" if isinstance(name, str) else "-", f"unsupported kind {kind!r} (ignored)", fatal=False, line=line))
        return
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name:
        out.problems.append(Problem(source, "-", f"{where}: metadata.name is required (a string)", line=_line_of(lines, "metadata.name", line), path="metadata.name"))
        return
    if not isinstance(namespace, str) or not namespace:
        out.problems.append(Problem(source, "-", f"{where} ({kind} {name}): metadata.namespace must be a string", line=_line_of(lines, "metadata.namespace", line), path="metadata.namespace"))
        return
    ref = f"{kind} {namespace}/{name}"
    if ref in seen:
        first = seen[ref]
        where_first = f"{first.source}:{first.line}" if first.line else first.source
        out.problems.append(Problem(source, ref, f"defined twice (first at {where_first}); this one is ignored", line=line))
        return
    problems: list[Problem] = []
    api = doc.get("apiVersion")
    if not isinstance(api, str) or not api.startswith(KINDS[kind] + "/"):
        problems.append(Problem(source, ref, f"apiVersion {api!r} is not {KINDS[kind]}/...", line=_line_of(lines, "apiVersion", line), path="apiVersion"))
    for key in doc:
        if key not in _TOP_LEVEL:
            problems.append(Problem(source, ref, f"unknown top-level field {key!r} is ignored", fatal=False, line=_line_of(lines, child("", key), line), path=str(key)))
    spec = doc.get("spec")
    if spec is None:
        problems.append(Problem(source, ref, "spec is required", line=line, path="spec"))
        spec = {}
    message, errs = parse_spec(kind, spec)
    problems.extend(Problem(source, ref, reason, line=_line_of(lines, p, line), path=p) for p, reason in errs)
    resource = Resource(kind, name, namespace, message, source, line, tuple(problems), dict(lines), read_annotations(meta))
    seen[ref] = resource
    out.resources.append(resource)


def add_object(doc: object, source: str, out: ResourceSet) -> None:
    """One object given as a mapping (an admission request's, a program's) read into ``out`` like
    a document of a file: its problems carry field paths, not lines."""
    _add(doc, source, "object", 0, {}, out, {r.ref: r for r in out.resources})


def resource_from_spec(kind: str, name: str, namespace: str, spec: Mapping[str, Any], source: str, metadata: Mapping[str, Any] | None = None) -> Resource:
    """An object made by a program (the ZooKeeper source, a Kubernetes object's spec and
    ``metadata``) read like one from a file."""
    ref = f"{kind} {namespace}/{name}"
    message, errs = parse_spec(kind, spec)
    problems = tuple(Problem(source, ref, reason, path=p) for p, reason in errs)
    return Resource(kind, name, namespace, message, source, None, problems, annotations=read_annotations(metadata or {}))


def read_annotations(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The annotations of :data:`READ_ANNOTATIONS` an object's metadata has (values as strings)."""
    annotations = metadata.get("annotations")
    if not isinstance(annotations, Mapping):
        return {}
    return {k: str(v) for k, v in annotations.items() if k in READ_ANNOTATIONS}
