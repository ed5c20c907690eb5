"""Configuration errors that point at the offending place."""

from __future__ import annotations

from metaprotocol.spi import MetaProtocolError


class ConfigError(MetaProtocolError):
    """A configuration is invalid; nothing is applied.

    Attributes:
        source: the file (or other origin) of the configuration.
        path: where inside it, e.g. ``static_resources.listeners[0].address``.
        reason: what is wrong.
    """

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {path or '<root>'}: {reason}")
        self.source = source
        self.path = path
        self.reason = reason
