"""The xDS side of the control plane: snapshots and the Aggregated Discovery Service."""

from __future__ import annotations
