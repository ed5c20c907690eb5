"""Histogram.observe's compiled bucket scan against bisect_left, the rule it replaced."""

from __future__ import annotations

import bisect
import math

from hypothesis import example, given
from hypothesis import strategies as st

from metaprotocol.proxy.stats import LATENCY_BUCKETS, Histogram


@given(st.one_of(st.floats(), st.sampled_from(LATENCY_BUCKETS)), st.integers(1, 16))
@example(math.nan, 1)
@example(0.0, 1)
@example(-1.0, 1)
def test_observe_counts_in_bisect_lefts_bucket(seconds: float, times: int) -> None:
    h = Histogram()
    h.observe(seconds, times)
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    expected[bisect.bisect_left(LATENCY_BUCKETS, seconds)] = times
    assert h.counts == expected
