"""Benchmarks are run with ``scripts/bench`` (pytest-benchmark); they are not part of the test suite."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
