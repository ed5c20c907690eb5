"""Request deadlines without a timer per request.

A timer handle per request (``call_later``) costs more than the rest of a pipelined request's
path. Timeouts are per route, so there are few distinct values, and requests with the same timeout
expire in arrival order: one FIFO per timeout value, swept periodically, pops finished entries and
expires overdue ones from the front. Adding is an append; finishing costs nothing here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol


class Expirable(Protocol):
    """Something with a deadline that may already be finished."""

    deadline: float
    done: bool


class DeadlineQueues:
    """FIFOs of in-flight items, one per timeout value."""

    def __init__(self) -> None:
        self._queues: dict[float, deque[Expirable]] = {}
        self.size = 0

    def add(self, item: Expirable, now: float, timeout: float) -> None:
        """Track ``item`` (``timeout`` <= 0 means no deadline)."""
        if timeout <= 0:
            return
        item.deadline = now + timeout
        q = self._queues.get(timeout)
        if q is None:
            q = self._queues[timeout] = deque()
        q.append(item)
        self.size += 1

    def sweep(self, now: float, expire: Callable[[Expirable], None]) -> None:
        """Drop finished items from the fronts and call ``expire`` on each overdue one."""
        for q in list(self._queues.values()):  # ``expire`` may add (a retry): never mid-iteration
            popleft = q.popleft
            dropped = 0
            while q:
                head = q[0]
                if head.done:
                    popleft()
                    dropped += 1
                elif head.deadline <= now:
                    popleft()
                    self.size -= 1
                    expire(head)
                else:
                    break
            self.size -= dropped

    def next_deadline(self) -> float | None:
        """The earliest deadline still pending at a queue front, if any."""
        fronts = [q[0].deadline for q in self._queues.values() if q]
        return min(fronts) if fronts else None
