"""The proxy relaxes the cyclic collector once it serves (see metaprotocol.cli.relax_gc)."""

from __future__ import annotations

import gc

from metaprotocol.cli import GC_YOUNG_THRESHOLD, relax_gc


def test_relax_gc_raises_the_young_threshold_and_freezes_startup_objects() -> None:
    before = gc.get_threshold()
    try:
        relax_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
        # Cycles are still collected, only less often.
        a: list[object] = []
        a.append(a)
        del a
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
