"""Protobuf messages from YAML/JSON trees, every problem told with its path.

``google.protobuf.json_format`` stops at the first problem and names it weakly, so a tree is first
checked against the message's descriptor: *every* unknown field (with a close name suggested),
wrongly typed value, out-of-range number, conflicting oneof member and unresolvable ``@type`` is
reported as ``(path, reason)``, e.g. ``spec.routes[1].route[0].weight`` or
``static_resources.clusters[0].lb_policy``. What is wrong is left out, so the rest is still
checked; what remains is read by ``json_format.ParseDict``.

Two dialects: :data:`ISTIO` (aeraki-ctl's resources: durations in Go syntax only) and
:data:`ENVOY` (the proxy's bootstrap, as Envoy reads YAML: durations also as seconds or
``{seconds, nanos}``, wrapper types also as ``{value: N}``, enum names in any case). Both read
``google.protobuf.Any`` by its ``@type`` (the message must be known to the default descriptor
pool) and a ``udpa.type.v1.TypedStruct`` / ``xds.type.v3.TypedStruct`` as the message its
``type_url`` names, as Envoy does.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from google.protobuf import descriptor_pool, duration_pb2, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Errors = list[tuple[str, str]]

TYPED_STRUCTS = frozenset({"udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"})
_BAD = object()
_INTEGER = re.compile(r"[-+]?[0-9]+")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?")
_PLAIN_KEY = re.compile(r"@?[A-Za-z_][A-Za-z0-9_-]*")
_WRAPPERS = {f"google.protobuf.{n}Value" for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")}
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


@dataclass(frozen=True)
class Dialect:
    """What a tree may say beyond protobuf's JSON mapping."""

    lenient_durations: bool = False
    """Durations also as a number of seconds, ``{seconds, nanos}`` or a bare number string."""
    wrapper_objects: bool = False
    """Wrapper types (``UInt32Value`` ...) also as ``{value: N}``."""
    enum_any_case: bool = False
    """Enum names in any case (``maglev``)."""
    snake_case: bool = False
    """Suggest field names in snake_case (Envoy's YAML) rather than lowerCamelCase (Istio's)."""


ISTIO = Dialect()
ENVOY = Dialect(lenient_durations=True, wrapper_objects=True, enum_any_case=True, snake_case=True)


# -- paths ----------------------------------------------------------------------------------------


def child(path: str, key: object) -> str:
    """``path.key`` (or ``path["a.b/c"]`` for keys that are not plain names)."""
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]" if isinstance(key, str) else f"{path}[{key}]"


def index(path: str, i: int) -> str:
    """``path[i]``."""
    return f"{path}[{i}]"


# -- durations ------------------------------------------------------------------------------------

_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NANOS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_MAX_NANOS = 315_576_000_000 * 10**9


def parse_duration(text: str) -> duration_pb2.Duration:
    """A duration in Go's ``time.ParseDuration`` syntax, as Istio reads it: ``1m30s``, ``250ms``,
    ``1h``, ``1.5s``, ``0``; exact to the nanosecond (fractions below a nanosecond are truncated
    as Go does). Negative durations are refused (no Istio or Envoy field here takes one).

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
    return _nanos_duration(int(total), text)


def _nanos_duration(nanos: int, text: object) -> duration_pb2.Duration:
    if nanos > _MAX_NANOS:
        raise ValueError(f"{text!r} is longer than protobuf's 10,000 years")
    return duration_pb2.Duration(seconds=nanos // 10**9, nanos=nanos % 10**9)


def seconds(d: duration_pb2.Duration) -> float:
    """A Duration message in seconds."""
    return float(d.seconds + d.nanos / 1e9)


def _duration(value: object, path: str, errs: Errors, dialect: Dialect) -> Any:
    try:
        if isinstance(value, str):
            text = value.strip()
            if dialect.lenient_durations and _NUMBER.fullmatch(text):
                d = _nanos_duration(int(Fraction(text) * 10**9), value)
            else:
                d = parse_duration(value)
        elif dialect.lenient_durations and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0 or value != value:  # noqa: PLR0124 - NaN
                raise ValueError(f"{value!r}: a duration must not be negative")
            d = _nanos_duration(int(Fraction(value) * 10**9), value)
        elif dialect.lenient_durations and isinstance(value, Mapping):
            errs_before = len(errs)
            parts = {}
            for key, v in value.items():
                if key not in ("seconds", "nanos"):
                    errs.append((child(path, key), f"unknown field {key!r} (a Duration has seconds, nanos)"))
                elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    errs.append((child(path, key), f"expected a whole number, at least 0, got {_what(v)}"))
                else:
                    parts[key] = v
            if len(errs) > errs_before:
                return _BAD
            d = _nanos_duration(parts.get("seconds", 0) * 10**9 + parts.get("nanos", 0), value)
        else:
            expected = "a duration such as 1.5s, 250ms or 1m30s" + (" (or a number of seconds)" if dialect.lenient_durations else "")
            errs.append((path, f"expected {expected}, got {_what(value)}"))
            return _BAD
    except ValueError as exc:
        errs.append((path, str(exc)))
        return _BAD
    return f"{d.seconds}.{d.nanos:09d}s"


# -- the check ------------------------------------------------------------------------------------


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


def check_message(value: object, desc: Descriptor, path: str, errs: Errors, dialect: Dialect = ISTIO) -> Any:
    """``value`` as json_format reads it into ``desc``, with every problem in ``errs``; what is
    wrong is left out (so the rest is still checked). Returns the cleaned tree."""
    if not isinstance(value, Mapping):
        errs.append((path, f"expected a mapping, got {_what(value)}"))
        return _BAD
    out: dict[str, Any] = {}
    oneofs: dict[str, str] = {}
    names = {f.json_name: f for f in desc.fields} | {f.name: f for f in desc.fields}
    shown = [f.name if dialect.snake_case else f.json_name for f in desc.fields]
    for key, v in value.items():
        p = child(path, key)
        f = names.get(key) if isinstance(key, str) else None
        if f is None:
            close = difflib.get_close_matches(str(key), shown, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" ({desc.name} has {', '.join(shown)})"
            errs.append((p, f"unknown field {key!r}{hint}"))
            continue
        if v is None:  # YAML ``key:`` with nothing: unset
            continue
        shown_name = f.name if dialect.snake_case else f.json_name
        if f.containing_oneof is not None:
            other = oneofs.get(f.containing_oneof.name)
            if other is not None:
                errs.append((p, f"only one of {other} and {shown_name} may be set"))
                continue
            oneofs[f.containing_oneof.name] = shown_name
        checked = _check_field(v, f, p, errs, dialect)
        if checked is not _BAD:
            out[f.json_name] = checked
    return out


def _check_field(value: object, f: FieldDescriptor, path: str, errs: Errors, dialect: Dialect) -> Any:
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
            checked = _check_single(v, value_f, p, errs, dialect)
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
            checked = _check_single(v, f, index(path, i), errs, dialect)
            if checked is not _BAD:
                items.append(checked)
        return items
    return _check_single(value, f, path, errs, dialect)


def _json_value(value: object, path: str, errs: Errors) -> Any:
    """A google.protobuf.Value: JSON types only."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, float)):
        return value if value == value else _bad(errs, path, "expected a number, got NaN")  # noqa: PLR0124
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, child(path, k), errs) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v, index(path, i), errs) for i, v in enumerate(value)]
    return _bad(errs, path, f"expected a JSON value, got {_what(value)}")


def _bad(errs: Errors, path: str, reason: str) -> Any:
    errs.append((path, reason))
    return _BAD


def _check_message_type(value: object, desc: Descriptor, path: str, errs: Errors, dialect: Dialect) -> Any:
    full = desc.full_name
    if full == "google.protobuf.Duration":
        return _duration(value, path, errs, dialect)
    if full in _WRAPPERS:
        if dialect.wrapper_objects and isinstance(value, Mapping):
            extra = [k for k in value if k != "value"]
            if extra:
                return _bad(errs, child(path, extra[0]), f"unknown field {extra[0]!r} (a {desc.name} has value)")
            if "value" not in value:
                return _bad(errs, path, "expected {value: ...}")
            return _check_single(value["value"], desc.fields_by_name["value"], child(path, "value"), errs, dialect)
        return _check_single(value, desc.fields_by_name["value"], path, errs, dialect)
    if full == "google.protobuf.Struct":
        if not isinstance(value, Mapping):
            return _bad(errs, path, f"expected a mapping, got {_what(value)}")
        n = len(errs)
        out = _json_value(value, path, errs)
        return out if len(errs) == n else _BAD
    if full == "google.protobuf.Value":
        n = len(errs)
        out = _json_value(value, path, errs)
        return out if len(errs) == n else _BAD
    if full == "google.protobuf.ListValue":
        if not isinstance(value, list):
            return _bad(errs, path, f"expected a list, got {_what(value)}")
        n = len(errs)
        out = _json_value(value, path, errs)
        return out if len(errs) == n else _BAD
    if full == "google.protobuf.Any":
        return _check_any(value, path, errs, dialect)
    return check_message(value, desc, path, errs, dialect)


_SPECIAL_JSON = {"google.protobuf.Duration", "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any", "google.protobuf.Timestamp", "google.protobuf.FieldMask"} | _WRAPPERS


def find_type(type_url: str) -> Descriptor | None:
    """The message a type URL names, if the default descriptor pool knows it."""
    try:
        return descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None


def _check_any(value: object, path: str, errs: Errors, dialect: Dialect) -> Any:
    if not isinstance(value, Mapping):
        return _bad(errs, path, f"expected a mapping with @type, got {_what(value)}")
    url = value.get("@type")
    tp = child(path, "@type")
    if not isinstance(url, str) or not url:
        return _bad(errs, tp, "required (the type of the config, type.googleapis.com/<message>)")
    desc = find_type(url)
    if desc is None:
        return _bad(errs, tp, f"unknown type {url!r}")
    rest = {k: v for k, v in value.items() if k != "@type"}
    if desc.full_name in TYPED_STRUCTS:  # Envoy reads the message its type_url names from value
        for key in rest:
            if key not in ("type_url", "value"):
                errs.append((child(path, key), f"unknown field {key!r} ({desc.name} has type_url, value)"))
        inner_url = rest.get("type_url")
        if not isinstance(inner_url, str) or not inner_url:
            return _bad(errs, child(path, "type_url"), "required")
        inner = find_type(inner_url)
        if inner is None:
            return _bad(errs, child(path, "type_url"), f"unknown type {inner_url!r}")
        if inner.full_name in TYPED_STRUCTS or inner.full_name == "google.protobuf.Any":
            return _bad(errs, child(path, "type_url"), f"{inner_url!r} cannot be carried in a {desc.name}")
        body = rest.get("value") or {}
        checked = _check_message_type(body, inner, child(path, "value"), errs, dialect)
        if checked is _BAD:
            return _BAD
        return {"@type": inner_url, **checked} if inner.full_name not in _SPECIAL_JSON else {"@type": inner_url, "value": checked}
    if desc.full_name in _SPECIAL_JSON:
        for key in rest:
            if key != "value":
                errs.append((child(path, key), f"unknown field {key!r} (a {desc.name} in an Any has value)"))
        checked = _check_message_type(rest.get("value", {} if desc.full_name == "google.protobuf.Struct" else None), desc, child(path, "value"), errs, dialect)
        return _BAD if checked is _BAD else {"@type": url, "value": checked}
    checked = check_message(rest, desc, path, errs, dialect)
    return _BAD if checked is _BAD else {"@type": url, **checked}


def _check_single(value: object, f: FieldDescriptor, path: str, errs: Errors, dialect: Dialect) -> Any:
    t = f.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return _check_message_type(value, f.message_type, path, errs, dialect)
    if t == FieldDescriptor.TYPE_ENUM:
        enum = f.enum_type
        if isinstance(value, str) and value in enum.values_by_name:
            return value
        if dialect.enum_any_case and isinstance(value, str) and value.upper() in enum.values_by_name:
            return value.upper()
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
        errs.append((path, f"{number} is out of range: must not be negative" if number < 0 == lo else f"{number} is out of range ({lo}..{hi})"))
        return _BAD
    return number


def parse(value: object, message: Message, path: str = "", dialect: Dialect = ISTIO) -> Errors:
    """Read ``value`` into ``message`` (cleared first); every problem as (field path, reason).
    With problems, the message holds what could be read."""
    errs: Errors = []
    message.Clear()
    cleaned = check_message(value, message.DESCRIPTOR, path, errs, dialect)
    if cleaned is _BAD:
        return errs
    try:
        json_format.ParseDict(cleaned, message)
    except json_format.ParseError as exc:  # what the check above let through: still reported
        m = re.search(r" at \"?[A-Za-z0-9_]+\.?([^\"]*?)\"?\.*$", str(exc).splitlines()[0])
        where = child(path, m.group(1)) if m and m.group(1) else path
        errs.append((where.replace("..", "."), str(exc).splitlines()[0]))
        message.Clear()
    return errs
