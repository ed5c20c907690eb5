"""Optional features and the extra that brings each one's library."""

from __future__ import annotations


class MissingExtra(RuntimeError):
    """A feature needs a library that is an optional extra of the package; the message says
    which extra to install."""

    def __init__(self, extra: str, library: str, feature: str) -> None:
        super().__init__(f"{feature} needs {library}: pip install 'metaprotocol[{extra}]'")
        self.extra = extra
