"""Attachments of Dubbo messages as metadata: read when decoded, or for requests on first use.

Consumers put per-call values in a request's attachments (a W3C ``traceparent``, a tenant), so
their bytes differ from call to call and no cache keyed by them hits; yet a route table usually
reads only the head's attributes (interface, method). Decoding a request therefore only checks
that its attachments are a map ``read_flat_map`` reads (``fastscan.plain_flat_map``: a walk over
its structure, no string made) and hands the core a ``RequestMetadata``: the head's attributes
at once, the attachments read on the first lookup of any other key (a route, hash policy, rate
limit, RBAC policy, access-log field or mutation on an attachment). Whatever the check cannot
vouch for is read at decode as before, so a body that fails to read is still refused there and
every key stays readable: laziness changes the cost, never the answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from metaprotocol_codecs.dubbo.fastscan import FlatMapCache, read_flat_map

Parsed = tuple[dict[str, Any], dict[str, str]]
"""An attachments map as read, and its metadata (string keys lower-cased, scalars as text)."""

EMPTY: Final[Parsed] = ({}, {})


def scalar(value: Any) -> str | None:
    """An attachment value as metadata text; None for values that are not scalars."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def attachment_metadata(attachments: dict[Any, Any], md: dict[str, str]) -> None:
    """Add the scalar attachments with string keys to ``md`` (keys lower-cased, as the SPI asks)."""
    for k, v in attachments.items():
        if isinstance(k, str):
            text = scalar(v)
            if text is not None:
                md[k if k.isascii() and k.islower() else k.lower()] = text  # lower-case ASCII: as is, no copy


_ATTACHMENTS = FlatMapCache()


def attachments_at(raw: bytes, at: int, end: int) -> Parsed | None:
    """The flat attachments map ending the body, and its metadata; cached by its bytes. None
    when the map is not flat (references, objects, nested values: the full reader's job)."""
    if at >= end:
        return EMPTY
    key = raw[at:end]
    hit = _ATTACHMENTS.get(key)
    if hit is not None:
        return hit
    attachments = read_flat_map(raw, at, end)
    if attachments is None:
        return None
    md: dict[str, str] = {}
    attachment_metadata(attachments, md)
    value = (attachments, md)
    _ATTACHMENTS.put(key, value)
    return value


class Recent:
    """The head and attachments a connection sent last, with their bytes: a consumer repeats
    them call after call, and equal bytes (a prefix compare, no copy) read equally.

    ``attachments`` is None while the last attachments are unread: ``lazy`` is then the
    metadata made for them, which the next call with the same head and attachments shares.
    """

    __slots__ = ("attachments", "attachments_bytes", "head", "head_bytes", "lazy", "metadata", "metadata_from")

    def __init__(self) -> None:
        self.head_bytes: bytes | None = None
        self.head: tuple[dict[str, str], int, int] = ({}, 0, 0)
        self.attachments_bytes = b""  # no attachments at all: what attachments_at says too
        self.attachments: Parsed | None = EMPTY
        self.lazy: RequestMetadata | None = None
        # The last metadata made, and the (head, attachments) metadata it was merged from: the
        # same pair gives the same dict again (metadata is read-only once decoded).
        self.metadata: dict[str, str] = {}
        self.metadata_from: tuple[dict[str, str], dict[str, str]] | None = None


class RequestMetadata(Mapping[str, str]):
    """A request's metadata: the head's attributes now, the attachments when first needed.

    ``region`` is the attachments map's bytes, already checked by ``plain_flat_map`` (so reading
    it cannot fail). The result equals the eager ``attachments | head`` dict in content and
    order: the head's attributes win over attachments of the same name. Reading the attachments
    also records them as the connection's ``Recent`` ones, so a consumer that repeats them and a
    table that routes on them take the no-copy path on its next call, as when read eagerly.
    """

    __slots__ = ("_merged", "_parsed", "head", "recent", "region")

    def __init__(self, head: dict[str, str], region: bytes, recent: Recent | None) -> None:
        self.head = head
        self.region = region
        self.recent = recent
        self._parsed: Parsed | None = None
        self._merged: dict[str, str] | None = None

    def parsed(self) -> Parsed:
        """The attachments and their metadata, read on the first call."""
        parsed = self._parsed
        if parsed is None:
            got = attachments_at(self.region, 0, len(self.region))
            if got is None:  # plain_flat_map vouched for a flat map: only a scanner bug lands here
                raise AssertionError("attachments checked as flat but not read as flat")
            parsed = self._parsed = got
            recent = self.recent
            if recent is not None:
                recent.attachments_bytes, recent.attachments, recent.lazy = self.region, got, None
        return parsed

    def merged(self) -> dict[str, str]:
        """The whole metadata as one dict (for iteration, length, equality, printing)."""
        merged = self._merged
        if merged is None:
            merged = self._merged = self.parsed()[1] | self.head
        return merged

    def get(self, key: str, default: Any = None) -> Any:
        """The value for ``key``; the attachments are read only for a key the head lacks."""
        value = self.head.get(key)
        if value is not None:
            return value
        return self.parsed()[1].get(key, default)

    def __getitem__(self, key: str) -> str:
        value = self.head.get(key)
        if value is not None:
            return value
        return self.parsed()[1][key]

    def __contains__(self, key: object) -> bool:
        return key in self.head or key in self.parsed()[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.merged())

    def __len__(self) -> int:
        return len(self.merged())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestMetadata):
            return self.merged() == other.merged()
        if isinstance(other, dict):
            return self.merged() == other
        if isinstance(other, Mapping):
            return self.merged() == dict(other.items())
        return False

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __repr__(self) -> str:
        return repr(self.merged())
