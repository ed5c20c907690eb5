"""Python values for Hessian 2.0 data that plain Python types cannot carry faithfully.

int vs long, typed lists and maps, Java objects with their class name, dates and chunked strings
all round-trip: re-encoding a decoded value produces what a Java peer would send.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

UTC = _dt.timezone.utc
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)


class Long(int):
    """A Java ``long`` (a plain ``int`` is written as a Java ``int`` when it fits 32 bits)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Long({int(self)})"


class HessianList(list[Any]):
    """A list with its Java type name (``None`` when untyped, e.g. ``java.util.ArrayList``)."""

    def __init__(self, items: Any = (), type: str | None = None) -> None:  # noqa: A002
        super().__init__(items)
        self.type = type

    def __repr__(self) -> str:
        return f"HessianList({list.__repr__(self)}, type={self.type!r})"

    __hash__ = object.__hash__  # type: ignore[assignment] # identity: lists may be map keys and back-reference targets

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HessianList):
            return self.type == other.type and list.__eq__(self, other)
        return list.__eq__(self, other) if isinstance(other, list) else NotImplemented


class HessianMap(dict[Any, Any]):
    """A map with its Java type name (``None`` for an untyped ``H`` map)."""

    def __init__(self, items: Any = (), type: str | None = None) -> None:  # noqa: A002
        super().__init__(items)
        self.type = type

    def __repr__(self) -> str:
        return f"HessianMap({dict.__repr__(self)}, type={self.type!r})"

    __hash__ = object.__hash__  # type: ignore[assignment] # identity, as for HessianList

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HessianMap):
            return self.type == other.type and dict.__eq__(self, other)
        return dict.__eq__(self, other) if isinstance(other, dict) else NotImplemented


class JavaObject:
    """An object instance: its class name and its fields in class-definition order."""

    __slots__ = ("class_name", "fields")

    def __init__(self, class_name: str, fields: dict[str, Any] | None = None) -> None:
        self.class_name = class_name
        self.fields: dict[str, Any] = fields if fields is not None else {}

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JavaObject):
            return NotImplemented
        if self is other:
            return True
        return self.class_name == other.class_name and _fields_equal(self.fields, other.fields)

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={'<self>' if v is self else repr(v)}" for k, v in self.fields.items())
        return f"JavaObject({self.class_name!r}, {inner})"


def _fields_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if list(a) != list(b):
        return False
    return all((x is y) or x == y for x, y in zip(a.values(), b.values(), strict=True))


class MapKey:
    """Wraps an unhashable map key (a plain list or dict) so the map can still hold it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MapKey) and self.value == other.value

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"MapKey({self.value!r})"


def date_from_ms(ms: int) -> _dt.datetime:
    """A UTC datetime for Java's milliseconds since the epoch."""
    return EPOCH + _dt.timedelta(milliseconds=ms)


def ms_from_date(value: _dt.datetime) -> int:
    """Milliseconds since the epoch (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
