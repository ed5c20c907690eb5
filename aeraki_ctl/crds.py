"""The CustomResourceDefinitions of ``metaprotocol.aeraki.io/v1alpha1``, generated from the protos.

``python -m aeraki_ctl.crds [OUT_DIR]`` (``scripts/gencrds``) writes ``deploy/crds/*.yaml``: one
``apiextensions.k8s.io/v1`` CRD per kind, whose ``openAPIV3Schema`` is a *structural* schema walked
from the message's descriptor (the same descriptors aeraki-ctl reads the specs into), JSON
(camelCase) names, with the status subresource and printer columns. ``tests/test_deploy.py`` fails
when the files are not what this module makes.

Mapping: strings, booleans and doubles are themselves; 32-bit integers are integers with their
range; 64-bit integers ``format: int64``; enums strings with their names; ``Duration`` a string in
Go syntax (``1m30s``, checked by the webhook and the controller, not by the schema); wrapper types
their wrapped type; ``map<string, X>`` an object of ``additionalProperties``; messages objects of
``properties``. Oneofs are not expressed in the schema (the webhook reports two members set).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from aeraki_ctl.resources import METAPROTOCOL_GROUP
from metaprotocol_api.metaprotocol_aeraki_io.v1alpha1.metaprotocol_pb2 import ApplicationProtocol, MetaRouter

VERSION = "v1alpha1"
_INT32 = {FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
          FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1)}  # fmt: skip
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
_WRAPPERS = {"DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value", "BoolValue", "StringValue", "BytesValue"}
_ACCEPTED = '.status.conditions[?(@.type=="Accepted")]'

KINDS: dict[str, dict[str, Any]] = {
    "MetaRouter": {
        "message": MetaRouter.DESCRIPTOR,
        "plural": "metarouters",
        "columns": [
            {"name": "Host", "type": "string", "jsonPath": ".spec.hosts[0]", "description": "The service the routes apply to."},
            {"name": "Accepted", "type": "string", "jsonPath": f"{_ACCEPTED}.status", "description": "Whether aeraki-ctl serves this version."},
            {"name": "Reason", "type": "string", "jsonPath": f"{_ACCEPTED}.reason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    },
    "ApplicationProtocol": {
        "message": ApplicationProtocol.DESCRIPTOR,
        "plural": "applicationprotocols",
        "columns": [
            {"name": "Protocol", "type": "string", "jsonPath": ".spec.protocol", "description": "The protocol token of port names (tcp-metaprotocol-<protocol>-...)."},
            {"name": "Codec", "type": "string", "jsonPath": ".spec.codec"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    },
}


def schema_of(desc: Descriptor, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The structural schema of a message."""
    if desc.full_name == "google.protobuf.Duration":
        return {"type": "string", "description": "A duration in Go syntax: 90s, 1m30s, 250ms, 1h."}
    if desc.full_name in ("google.protobuf.Struct",):
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if desc.file.package == "google.protobuf" and desc.name in _WRAPPERS:
        return {**_field_schema(desc.fields_by_name["value"], seen), "nullable": True}
    if desc.full_name in seen:  # recursive: stop describing, keep what is written
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    props = {f.json_name: _field_schema(f, (*seen, desc.full_name)) for f in desc.fields}
    return {"type": "object", "properties": props} if props else {"type": "object"}


def _field_schema(f: FieldDescriptor, seen: tuple[str, ...]) -> dict[str, Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _single(f.message_type.fields_by_name["value"], seen)}
    if f.is_repeated:
        return {"type": "array", "items": _single(f, seen)}
    return _single(f, seen)


def _single(f: FieldDescriptor, seen: tuple[str, ...]) -> dict[str, Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return schema_of(f.message_type, seen)
    if t == FieldDescriptor.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in f.enum_type.values]}
    if t == FieldDescriptor.TYPE_STRING:
        return {"type": "string"}
    if t == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "format": "byte"}
    if t == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return {"type": "number"}
    if t in _INT32:
        lo, hi = _INT32[t]
        return {"type": "integer", "format": "int32" if lo < 0 else "int64", "minimum": lo, "maximum": hi}
    if t in _INT64:
        return {"type": "integer", "format": "int64", **({"minimum": 0} if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64) else {})}
    raise ValueError(f"{f.full_name}: no schema for field type {t}")


def status_schema() -> dict[str, Any]:
    """``status``: written by aeraki-ctl through the status subresource (``conditions`` as
    ``metav1.Condition``, type ``Accepted``); other fields it may add are kept."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        },
    }


def crd(kind: str) -> dict[str, Any]:
    """The CRD of ``kind`` (``MetaRouter`` or ``ApplicationProtocol``)."""
    info = KINDS[kind]
    plural = info["plural"]
    spec = schema_of(info["message"])
    spec["description"] = f"The {kind} spec (the {info['message'].full_name} message; see docs/control-plane.md)."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{METAPROTOCOL_GROUP}", "labels": {"app.kubernetes.io/part-of": "aeraki-metaprotocol"}},
        "spec": {
            "group": METAPROTOCOL_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(), "categories": ["aeraki"]},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": info["columns"],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = "# Generated from the protos by scripts/gencrds (python -m aeraki_ctl.crds): do not edit.\n"


def render(kind: str) -> str:
    """The CRD of ``kind`` as the YAML file deploy/crds holds."""
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=200)


def files() -> dict[str, str]:
    """File name -> content, for every CRD."""
    return {f"{KINDS[kind]['plural']}.yaml": render(kind) for kind in KINDS}


def main(argv: list[str] | None = None) -> int:
    """Write the CRDs into OUT_DIR (default deploy/crds)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "deploy/crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files().items():
        (out / name).write_text(text)
        print(out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
