"""Routing: a pure function of (route table, metadata, random draw). No IO, no clock."""

from __future__ import annotations

from metaprotocol.router.matchers import compile_matcher
from metaprotocol.router.table import CompiledRoute, RouteTable

__all__ = ["CompiledRoute", "RouteTable", "compile_matcher"]
