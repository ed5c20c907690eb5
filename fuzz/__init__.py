"""Atheris fuzz harnesses: ``python fuzz/<target>.py [libFuzzer flags]``; see scripts/fuzz."""
