"""Service registries the controller reads besides its directory of YAML."""

from __future__ import annotations
