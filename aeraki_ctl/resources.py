"""Aeraki- and Istio-shaped resources read from YAML files (the embedded default source).

Kinds: ``MetaRouter`` and ``ApplicationProtocol`` (``metaprotocol.aeraki.io/v1alpha1``),
``ServiceEntry`` and ``DestinationRule`` (``networking.istio.io``). Every problem is reported with
the file, the object and the reason, and the object is skipped; the rest still applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# libyaml's loader when PyYAML has it (about ten times faster on large directories).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
METAPROTOCOL_GROUP = "metaprotocol.aeraki.io"
ISTIO_GROUP = "networking.istio.io"
KINDS = {"MetaRouter": METAPROTOCOL_GROUP, "ApplicationProtocol": METAPROTOCOL_GROUP, "ServiceEntry": ISTIO_GROUP, "DestinationRule": ISTIO_GROUP}
BUILTIN_PROTOCOLS = {"dubbo": "aeraki.meta_protocol.codec.dubbo", "thrift": "aeraki.meta_protocol.codec.thrift"}


@dataclass(frozen=True)
class Problem:
    """Why an object was skipped (or a field of it ignored)."""

    source: str
    obj: str
    reason: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.source}: {self.obj}: {self.reason}"


@dataclass
class Resource:
    """One object: kind, namespace/name, its spec, and where it came from."""

    kind: str
    name: str
    namespace: str
    spec: Mapping[str, Any]
    source: str

    @property
    def ref(self) -> str:
        """``Kind namespace/name`` for messages."""
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass
class ResourceSet:
    """Everything read from a source, and the problems met on the way."""

    resources: list[Resource] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def of(self, kind: str) -> list[Resource]:
        """Resources of a kind, in a stable order (namespace, name)."""
        return sorted((r for r in self.resources if r.kind == kind), key=lambda r: (r.namespace, r.name))


def load_directory(path: str | Path) -> ResourceSet:
    """Every ``*.yaml``/``*.yml`` file under ``path`` (sorted), multi-document files included."""
    root = Path(path)
    out = ResourceSet()
    if not root.is_dir():
        out.problems.append(Problem(str(root), "-", "not a directory"))
        return out
    for file in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()):
        load_text(file.read_text(encoding="utf-8"), str(file), out)
    return out


def load_text(text: str, source: str, out: ResourceSet) -> None:
    """Parse the objects of one YAML text into ``out``."""
    try:
        docs: Iterable[Any] = list(yaml.load_all(text, Loader=_LOADER))  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        out.problems.append(Problem(source, "-", f"not valid YAML: {exc}"))
        return
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        items = doc.get("items") if isinstance(doc, Mapping) and doc.get("kind") == "List" else [doc]
        for j, item in enumerate(items or []):
            _add(item, source, f"document {i}" + (f" item {j}" if len(items or []) > 1 else ""), out)


def _add(doc: Any, source: str, where: str, out: ResourceSet) -> None:
    if not isinstance(doc, Mapping):
        out.problems.append(Problem(source, where, "not a mapping"))
        return
    kind = doc.get("kind")
    api = str(doc.get("apiVersion", ""))
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", "")) if isinstance(meta, Mapping) else ""
    namespace = str(meta.get("namespace", "default")) if isinstance(meta, Mapping) else "default"
    ref = f"{kind} {namespace}/{name}" if name else where
    if kind not in KINDS:
        out.problems.append(Problem(source, ref, f"unsupported kind {kind!r} (ignored)", fatal=False))
        return
    if not api.startswith(KINDS[kind] + "/"):
        out.problems.append(Problem(source, ref, f"apiVersion {api!r} is not {KINDS[kind]}/..."))
        return
    if not name:
        out.problems.append(Problem(source, where, "metadata.name is required"))
        return
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        out.problems.append(Problem(source, ref, "spec must be a mapping"))
        return
    out.resources.append(Resource(str(kind), name, namespace, spec, source))
