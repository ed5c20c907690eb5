"""The tagged JSON form of the golden vectors (../shared/testdata/README.md §1), both ways."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from metaprotocol_codecs.dubbo.hessian2_types import HessianList, HessianMap, JavaObject, Long, MapKey, ms_from_date


def to_tagged(value: Any, seen: dict[int, int] | None = None) -> Any:
    """Our decoded value in the vectors' tagged form (refs numbered in pre-order)."""
    seen = {} if seen is None else seen
    if isinstance(value, MapKey):
        value = value.value
    if value is None:
        return {"t": "null"}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, Long):
        return {"t": "long", "v": str(int(value))}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, float):
        return {"t": "double", "bits": struct.pack(">d", value).hex()}
    if isinstance(value, str):
        return {"t": "string", "v": value}
    if isinstance(value, bytes):
        return {"t": "binary", "hex": value.hex()}
    if isinstance(value, dt.datetime):
        return {"t": "date", "ms": ms_from_date(value)}
    if id(value) in seen:
        return {"t": "ref", "index": seen[id(value)]}
    seen[id(value)] = len(seen)
    if isinstance(value, HessianList):
        return {"t": "list", "type": value.type, "items": [to_tagged(v, seen) for v in value]}
    if isinstance(value, HessianMap):
        return {"t": "map", "type": value.type, "entries": [[to_tagged(k, seen), to_tagged(v, seen)] for k, v in value.items()]}
    if isinstance(value, JavaObject):
        return {"t": "object", "class": value.class_name, "fields": {k: to_tagged(v, seen) for k, v in value.fields.items()}}
    raise TypeError(type(value))


def normalize(tagged: Any) -> Any:
    """Expected tagged values with doubles reduced to their authoritative bits."""
    if isinstance(tagged, list):
        return [normalize(t) for t in tagged]
    if not isinstance(tagged, dict):
        return tagged
    if tagged.get("t") == "double":
        return {"t": "double", "bits": tagged["bits"]}
    return {k: normalize(v) for k, v in tagged.items()}
