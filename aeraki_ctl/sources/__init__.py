"""Sources of resources besides the directory: a ZooKeeper registry, Kubernetes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aeraki_ctl.resources import Problem, Resource


class Source(Protocol):
    """An extra source the controller combines with the directory (``Controller(sources=...)``).

    ``start`` begins following the source and calls ``changed`` (on the event loop's thread) on
    every change that can alter ``resources()``; the controller then syncs (debounced).
    ``wait_synced`` tells whether the first complete read finished in time (the first sync waits
    for it so that an empty view is never published on start). ``resources`` is the current view;
    it is called on the loop's thread and must not block. ``close`` stops following.
    """

    async def start(self, changed: Callable[[], None]) -> None: ...

    async def wait_synced(self, timeout: float) -> bool: ...

    def resources(self) -> tuple[list[Resource], list[Problem]]: ...

    async def close(self) -> None: ...
