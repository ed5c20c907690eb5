"""Where the independent golden vectors live (``METAPROTOCOL_VECTORS`` overrides)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def vectors_dir() -> Path:
    return Path(os.environ.get("METAPROTOCOL_VECTORS", ROOT.parent / "shared" / "testdata"))


def load(relative: str) -> list[dict[str, Any]]:
    path = vectors_dir() / relative
    if not path.exists():
        raise FileNotFoundError(f"golden vectors not found at {path}; set METAPROTOCOL_VECTORS")
    data = json.loads(path.read_text())
    vectors: list[dict[str, Any]] = data["vectors"]
    assert len(vectors) == data.get("count", len(vectors))
    return vectors
