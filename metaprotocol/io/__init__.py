"""The thin asyncio layer: listeners, upstream connects, timers, admin HTTP, signals."""

from __future__ import annotations
