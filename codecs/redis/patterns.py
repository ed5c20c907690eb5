"""Regex building blocks shared by the request and reply run framers (requests.py, resp.py).

A run framer matches one protocol element with a pattern that can match a position in one way
only, and a run as that pattern repeated; either the pattern proves lengths itself (the exact
bulk below) or the caller checks the captured lengths.
"""

from __future__ import annotations

import re
from typing import Final

EXACT_MAX: Final = 128
"""Longest bulk string whose length the patterns spell out (one alternative per length)."""

EXACT_BULK: Final[bytes] = b"\\$(?:" + b"|".join(b"%d\r\n[\\s\\S]{%d}" % (n, n) for n in range(EXACT_MAX + 1)) + b")\r\n"
"""``$<n>\\r\\n`` followed by exactly n bytes and CRLF, for n up to EXACT_MAX."""

_RUNS: dict[tuple[bytes, int], re.Pattern[bytes]] = {}


def repeated(one: bytes, bound: int = 0) -> re.Pattern[bytes]:
    """``one`` repeated 1 to ``bound`` times (unbounded when 0), its groups not captured;
    compiled once per pattern and bound."""
    pattern = _RUNS.get((one, bound))
    if pattern is None:
        body = re.sub(rb"\((?!\?)", b"(?:", one)
        times = b"{1,%d}" % bound if bound else b"+"
        pattern = _RUNS[(one, bound)] = re.compile(b"(?:%s)%s" % (body, times))
    return pattern
