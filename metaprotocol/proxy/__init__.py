"""The sans-IO proxy core: sessions, correlation, pools, deadlines, policies, stats."""

from __future__ import annotations
