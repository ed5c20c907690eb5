"""Process-wide load bounds, in the spirit of Envoy's overload manager.

One ``Overload`` is shared by every listener of a proxy. The request path pays one comparison
per request (``pending >= admit_below``): the heap monitor in the IO layer lowers ``admit_below``
to 0 while the process is over its memory threshold, so a single number carries both the
pending-request bound and the heap action.
"""

from __future__ import annotations

from metaprotocol.config.model import OverloadConfig


class Overload:
    """Counters and limits for the whole process (all listeners)."""

    __slots__ = (
        "admit_below",
        "config",
        "connections",
        "fd_limit",
        "heap_bytes",
        "max_connections",
        "over_heap",
        "rejected_connections",
        "rejected_requests",
        "pending",
    )

    def __init__(self, config: OverloadConfig, fd_limit: int = 0) -> None:
        """``fd_limit``: the process's file descriptor limit, which sets the default connection
        bound (90 % of it, leaving room for upstream connections and files)."""
        self.config = config
        self.fd_limit = fd_limit
        self.max_connections = self._connection_limit()
        self.pending = 0  # two-way requests in flight in the whole process
        self.connections = 0  # open downstream connections in the whole process
        self.over_heap = False
        self.heap_bytes = 0
        self.admit_below = self._pending_limit()
        self.rejected_requests: dict[str, int] = {"pending": 0, "heap": 0}
        self.rejected_connections: dict[str, int] = {"process": 0, "listener": 0, "heap": 0}

    def _connection_limit(self) -> int:
        explicit = self.config.max_active_downstream_connections
        if explicit is not None:
            return explicit
        return int(self.fd_limit * 0.9) if self.fd_limit > 0 else 0

    def _pending_limit(self) -> int:
        limit = self.config.max_pending_requests
        return limit if limit > 0 else 2**62

    def reconfigure(self, config: OverloadConfig) -> None:
        """Take new limits (a live update); counters carry on."""
        self.config = config
        self.max_connections = self._connection_limit()
        if not self.over_heap:
            self.admit_below = self._pending_limit()

    def observe_heap(self, heap_bytes: int) -> None:
        """The IO layer's periodic reading of the process's memory: shed load past the threshold,
        and stop shedding once it is back under 95 % of it (hysteresis, so the state does not
        flap on every reading)."""
        self.heap_bytes = heap_bytes
        limit = self.config.max_heap_size_bytes
        if limit <= 0:
            over = False
        elif self.over_heap:
            over = heap_bytes > limit * 0.95
        else:
            over = heap_bytes > limit
        if over != self.over_heap:
            self.over_heap = over
            self.admit_below = 0 if over else self._pending_limit()

    def reject_reason(self) -> str:
        """Why a request is refused now (called only on the refusal path)."""
        return "heap" if self.over_heap else "pending"

    def accept_connection(self, listener_active: int, listener_limit: int) -> str | None:
        """None when one more downstream connection may open, else the limit that refuses it."""
        if self.over_heap:
            return "heap"
        limit = self.max_connections
        if limit > 0 and self.connections >= limit:
            return "process"
        if listener_limit > 0 and listener_active >= listener_limit:
            return "listener"
        return None
