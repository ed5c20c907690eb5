"""Aeraki- and Istio-shaped resources read from YAML files (the embedded default source).

Kinds: ``MetaRouter`` and ``ApplicationProtocol`` (``metaprotocol.aeraki.io/v1alpha1``),
``ServiceEntry`` and ``DestinationRule`` (``networking.istio.io``). Each spec is read into its
protobuf message (``metaprotocol_api``: Aeraki's and Istio's own packages, names and field
numbers) with ``google.protobuf.json_format``, after a check against the message's descriptor that
reports *every* unknown field and wrongly typed value with its path
(``spec.routes[1].route[0].weight``) and the line it is on. Durations are read in Istio's Go
syntax (``1m30s``, ``250ms``, ``1h``) by :func:`parse_duration`, exactly.

This is the only module that touches the raw YAML: everything after it works on typed messages.
An object with an error is still listed (``Resource.rejected``) so that the translation reports it
and the controller can keep serving its last valid version; it is never served itself.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import duration_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from metaprotocol_api.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from metaprotocol_api.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import ApplicationProtocol, MetaRouter

# libyaml's loader when PyYAML has it (about ten times faster on large directories).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
METAPROTOCOL_GROUP = "metaprotocol.aeraki.io"
ISTIO_GROUP = "networking.istio.io"
KINDS = {"MetaRouter": METAPROTOCOL_GROUP, "ApplicationProtocol": METAPROTOCOL_GROUP, "ServiceEntry": ISTIO_GROUP, "DestinationRule": ISTIO_GROUP}
MESSAGES: dict[str, type[Message]] = {"MetaRouter": MetaRouter, "ApplicationProtocol": ApplicationProtocol, "ServiceEntry": ServiceEntry, "DestinationRule": DestinationRule}
BUILTIN_PROTOCOLS = {"dubbo": "aeraki.meta_protocol.codec.dubbo", "thrift": "aeraki.meta_protocol.codec.thrift"}
_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}

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

    @property
    def ref(self) -> str:
        """``Kind namespace/name`` for messages."""
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


# -- durations --------------------------------------------------------------------------------------

_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NANOS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_duration(text: str) -> duration_pb2.Duration:
    """A duration in Go's ``time.ParseDuration`` syntax, as Istio reads it: ``1m30s``, ``250ms``,
    ``1h``, ``1.5s``, ``0``; exact to the nanosecond (fractions below a nanosecond are truncated
    as Go does). Negative durations are refused (no Istio field takes one).

    Raises:
        ValueError: not a duration.
    """
    s = text.strip()
    if s in ("0", "+0"):
        return duration_pb2.Duration()
    body = s[1:] if s.startswith("+") else s
    if body.startswith("-"):
        raise ValueError(f"{text!r}: a duration must not be negative")
    pos = 0
    total = Fraction(0)
    while pos < len(body):
        m = _GO_DURATION.match(body, pos)
        if m is None or m.group(1) in ("", "."):
            raise ValueError(f"{text!r} is not a duration (write it as 90s, 1m30s, 250ms, 1h)")
        total += Fraction(m.group(1)) * _UNIT_NANOS[m.group(2)]
        pos = m.end()
    if not body:
        raise ValueError(f"{text!r} is not a duration (write it as 90s, 1m30s, 250ms, 1h)")
    nanos = int(total)
    if nanos > 315_576_000_000 * 10**9:
        raise ValueError(f"{text!r} is longer than protobuf's 10,000 years")
    return duration_pb2.Duration(seconds=nanos // 10**9, nanos=nanos % 10**9)


def seconds(d: duration_pb2.Duration) -> float:
    """A Duration message in seconds."""
    return float(d.seconds + d.nanos / 1e9)


# -- paths and lines ------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def child(path: str, key: object) -> str:
    """``path.key`` (or ``path["a.b/c"]`` for keys that are not plain names)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]"


def index(path: str, i: int) -> str:
    """``path[i]``."""
    return f"{path}[{i}]"


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


# -- schema check ---------------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_WRAPPERS = {f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")}
_BAD = object()
_INTEGER = re.compile(r"[-+]?[0-9]+")

Errors = list[tuple[str, str]]


def _what(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _check_message(value: object, desc: Descriptor, path: str, errs: Errors) -> Any:
    """``value`` as json_format reads it into ``desc``, with every problem in ``errs``; what is
    wrong is left out (so the rest is still checked)."""
    if not isinstance(value, Mapping):
        errs.append((path, f"expected a mapping, got {_what(value)}"))
        return _BAD
    out: dict[str, Any] = {}
    oneofs: dict[str, str] = {}
    names = {f.json_name: f for f in desc.fields} | {f.name: f for f in desc.fields}
    for key, v in value.items():
        p = child(path, key)
        f = names.get(key) if isinstance(key, str) else None
        if f is None:
            close = difflib.get_close_matches(str(key), [f.json_name for f in desc.fields], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" ({desc.name} has {', '.join(f.json_name for f in desc.fields)})"
            errs.append((p, f"unknown field {key!r}{hint}"))
            continue
        if v is None:  # YAML ``key:`` with nothing: unset
            continue
        if f.containing_oneof is not None:
            other = oneofs.get(f.containing_oneof.name)
            if other is not None:
                errs.append((p, f"only one of {other} and {f.json_name} may be set"))
                continue
            oneofs[f.containing_oneof.name] = f.json_name
        checked = _check_field(v, f, p, errs)
        if checked is not _BAD:
            out[f.json_name] = checked
    return out


def _check_field(value: object, f: FieldDescriptor, path: str, errs: Errors) -> Any:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        if not isinstance(value, Mapping):
            errs.append((path, f"expected a mapping, got {_what(value)}"))
            return _BAD
        key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        out: dict[str, Any] = {}
        for k, v in value.items():
            p = child(path, k)
            if key_f.type == FieldDescriptor.TYPE_STRING and not isinstance(k, str):
                errs.append((p, f"a key must be a string, got {_what(k)}"))
                continue
            if v is None:
                errs.append((p, "expected a value, got null"))
                continue
            checked = _check_single(v, value_f, p, errs)
            if checked is not _BAD:
                out[str(k)] = checked
        return out
    if f.is_repeated:
        if not isinstance(value, list):
            errs.append((path, f"expected a list, got {_what(value)}"))
            return _BAD
        items = []
        for i, v in enumerate(value):
            if v is None:
                errs.append((index(path, i), "expected a value, got null"))
                continue
            checked = _check_single(v, f, index(path, i), errs)
            if checked is not _BAD:
                items.append(checked)
        return items
    return _check_single(value, f, path, errs)


def _check_single(value: object, f: FieldDescriptor, path: str, errs: Errors) -> Any:
    t = f.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        full = f.message_type.full_name
        if full == "google.protobuf.Duration":
            if not isinstance(value, str):
                errs.append((path, f"expected a duration such as 90s or 1m30s, got {_what(value)}"))
                return _BAD
            try:
                d = parse_duration(value)
            except ValueError as exc:
                errs.append((path, str(exc)))
                return _BAD
            return f"{d.seconds}.{d.nanos:09d}s"
        if full in _WRAPPERS:
            return _check_single(value, f.message_type.fields_by_name["value"], path, errs)
        return _check_message(value, f.message_type, path, errs)
    if t == FieldDescriptor.TYPE_ENUM:
        enum = f.enum_type
        if isinstance(value, str) and value in enum.values_by_name:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value in enum.values_by_number:
            return value
        errs.append((path, f"{_what(value)} is not one of {', '.join(v.name for v in enum.values)}"))
        return _BAD
    if t == FieldDescriptor.TYPE_STRING or t == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, str):
            return value
        errs.append((path, f"expected a string, got {_what(value)}"))
        return _BAD
    if t == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        errs.append((path, f"expected true or false, got {_what(value)}"))
        return _BAD
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # noqa: PLR0124 - NaN
            return value
        errs.append((path, f"expected a number, got {_what(value)}"))
        return _BAD
    lo, hi = _INT_RANGES[t]
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None:
        errs.append((path, f"expected an integer, got {_what(value)}"))
        return _BAD
    if not lo <= number <= hi:
        errs.append((path, f"{number} is out of range ({lo}..{hi})"))
        return _BAD
    return number


def parse_spec(kind: str, spec: object, path: str = "spec") -> tuple[Message, Errors]:
    """``spec`` read into the kind's message, and every problem as (field path, reason)."""
    errs: Errors = []
    msg = MESSAGES[kind]()
    cleaned = _check_message(spec, msg.DESCRIPTOR, path, errs)
    if cleaned is _BAD:
        return msg, errs
    try:
        json_format.ParseDict(cleaned, msg)
    except json_format.ParseError as exc:  # what the check above let through: still reported
        m = re.search(r" at \"?[A-Za-z0-9_]+\.?([^\"]*?)\"?\.*$", str(exc).splitlines()[0])
        where = child(path, m.group(1)) if m and m.group(1) else path
        errs.append((where.replace("..", "."), str(exc).splitlines()[0]))
        msg = MESSAGES[kind]()
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
    resource = Resource(kind, name, namespace, message, source, line, tuple(problems), dict(lines))
    seen[ref] = resource
    out.resources.append(resource)


def resource_from_spec(kind: str, name: str, namespace: str, spec: Mapping[str, Any], source: str) -> Resource:
    """An object made by a program (the ZooKeeper source) read like one from a file."""
    ref = f"{kind} {namespace}/{name}"
    message, errs = parse_spec(kind, spec)
    return Resource(kind, name, namespace, message, source, None, tuple(Problem(source, ref, reason, path=p) for p, reason in errs))
