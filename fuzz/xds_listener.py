"""Fuzz target xds_listener (definition in fuzz/_targets.py); runnable and importable."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz import _harness, _targets  # noqa: E402

TARGET = _targets.target("xds_listener")
TestOneInput = TARGET.test_one_input

if __name__ == "__main__":
    _harness.main(TARGET)
