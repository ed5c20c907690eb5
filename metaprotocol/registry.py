"""Codec discovery through the ``metaprotocol.codecs`` entry-point group.

Built-in codecs are found exactly like third-party ones; the core never imports a codec module.
There is no global registry: the proxy is handed one, and tests can inject factories directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Final

from metaprotocol.spi import CodecFactory, MetaProtocolError

ENTRY_POINT_GROUP: Final = "metaprotocol.codecs"


class RegistryError(MetaProtocolError):
    """A codec name is unknown, or its entry point does not load a CodecFactory."""


class CodecRegistry:
    """Maps codec names (and their aliases) to factory classes, loading entry points lazily."""

    def __init__(
        self,
        factories: Mapping[str, type[CodecFactory]] | None = None,
        entry_points_: Mapping[str, EntryPoint] | None = None,
    ) -> None:
        self._loaded: dict[str, type[CodecFactory]] = dict(factories or {})
        self._entry_points: dict[str, EntryPoint] = dict(entry_points_ or {})
        self._aliases: dict[str, str] = {}
        for name, factory in self._loaded.items():
            self._add_aliases(name, factory)

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> CodecRegistry:
        """Every codec installed in the environment under ``group``."""
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=group):
            found.setdefault(ep.name, ep)
        return cls(entry_points_=found)

    def _add_aliases(self, name: str, factory: type[CodecFactory]) -> None:
        for alias in (*factory.aliases, f"aeraki.meta_protocol.codec.{name}"):
            self._aliases.setdefault(alias, name)

    def names(self) -> list[str]:
        """Canonical names of every known codec, sorted."""
        return sorted(set(self._loaded) | set(self._entry_points))

    def describe(self, name: str) -> EntryPoint | None:
        """The entry point behind ``name`` (for ``metaprotocol codecs``), if it came from one."""
        return self._entry_points.get(name)

    def get(self, name: str) -> type[CodecFactory]:
        """The factory class for ``name`` or one of its aliases.

        Raises:
            RegistryError: unknown name, or the entry point does not load a CodecFactory.
        """
        canonical = self._resolve(name)
        factory = self._loaded.get(canonical)
        if factory is not None:
            return factory
        ep = self._entry_points[canonical]
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must not take the proxy down with a traceback
            raise RegistryError(f"codec {name!r}: cannot load {ep.value}: {exc}") from exc
        if not (isinstance(loaded, type) and issubclass(loaded, CodecFactory)):
            raise RegistryError(f"codec {name!r}: {ep.value} is not a CodecFactory subclass")
        if loaded.name != canonical:
            raise RegistryError(
                f"codec {name!r}: entry point name and {ep.value}.name={loaded.name!r} differ"
            )
        self._loaded[canonical] = loaded
        self._add_aliases(canonical, loaded)
        return loaded

    def _resolve(self, name: str) -> str:
        if name in self._loaded or name in self._entry_points:
            return name
        if name in self._aliases:
            return self._aliases[name]
        prefix = "aeraki.meta_protocol.codec."
        if name.startswith(prefix) and name[len(prefix) :] in self._entry_points:
            return name[len(prefix) :]
        # Aliases declared by factories that have not been loaded yet.
        for canonical in list(self._entry_points):
            if canonical not in self._loaded and name in self.get(canonical).aliases:
                return canonical
        known = ", ".join(self.names()) or "none"
        raise RegistryError(f"unknown codec {name!r} (installed: {known})")
