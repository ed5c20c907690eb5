"""A log rate limit per cause, so that one misbehaving client cannot flood the log.

The first ``burst`` events of a cause in each ``interval`` are logged as they come; the rest are
only counted, and one summary line per cause says how many were suppressed when the interval
ends. The clock and the timer are injected so that the logic is tested without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

DEFAULT_BURST: Final = 10
DEFAULT_INTERVAL: Final = 10.0


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class RateLimitedLog:
    """Logs at most ``burst`` lines per cause per ``interval`` seconds, then a summary line."""

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        schedule: Callable[[float, Callable[[], None]], object],
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.schedule = schedule
        self.burst = burst
        self.interval = interval
        self._windows: dict[str, _Window] = {}

    def emit(self, cause: str, message: str, exc: BaseException | None = None, level: int = logging.WARNING) -> bool:
        """Log ``message`` for ``cause`` unless its burst is spent; returns whether it was logged."""
        now = self.clock()
        window = self._windows.get(cause)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._summarise(cause, window)
            window = self._windows[cause] = _Window(now)
        if window.logged >= self.burst:
            if window.suppressed == 0:  # the first suppressed line arms the summary
                self.schedule(window.start + self.interval - now, lambda: self._close(cause, window))
            window.suppressed += 1
            return False
        window.logged += 1
        self.logger.log(level, "%s: %s", cause, message, exc_info=exc)
        return True

    def _close(self, cause: str, window: _Window) -> None:
        """The interval of ``window`` is over: say what it suppressed and start afresh."""
        if self._windows.get(cause) is window:
            del self._windows[cause]
        self._summarise(cause, window)

    def _summarise(self, cause: str, window: _Window) -> None:
        if window.suppressed:
            self.logger.warning(
                "%s: %d more suppressed in the last %gs (log rate limit: %d per %gs)",
                cause, window.suppressed, self.interval, self.burst, self.interval,
            )  # fmt: skip
            window.suppressed = 0
