"""The packages type-check under ``mypy --strict`` (setup.cfg [mypy]).

mypy cannot follow setuptools' editable-install import hook, and two packages live in folders whose
names differ from their import names (``codecs/`` is ``metaprotocol_codecs``), so the test lays the
packages out under their import names with symlinks, as an installed tree would be.
"""

from __future__ import annotations

import tomllib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict(tmp_path: Path) -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        roots = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    for name, folder in roots.items():
        (tmp_path / name.strip()).symlink_to(ROOT / folder.strip(), target_is_directory=True)
    checked = [arg for name in roots if name.strip() != "metaprotocol_api" for arg in ("-p", name.strip())]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), "--cache-dir", str(ROOT / ".mypy_cache"), *checked],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "MYPYPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
