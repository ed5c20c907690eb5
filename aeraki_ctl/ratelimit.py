"""A global rate limit service: Envoy's ``envoy.service.ratelimit.v3.RateLimitService`` with
counters in Redis, configured like ``envoyproxy/ratelimit``.

    domain: dubbo
    descriptors:
    - key: method
      value: sayHello                       # optional: without a value, every value has its own count
      rate_limit: {unit: second, requests_per_unit: 5}
    - key: user
      rate_limit: {unit: minute, requests_per_unit: 100}
      descriptors:                           # nested: matches the next entry of the descriptor
      - key: method
        rate_limit: {unit: second, requests_per_unit: 1}

A request descriptor (a list of key/value entries) is matched entry by entry down the tree; the
deepest matching node with a rate_limit applies. Counters are fixed windows: the key names the
domain, the entries and the window start; INCRBY and EXPIRE run in one pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

log = logging.getLogger(__name__)
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass
class Node:
    """One level of the descriptor tree."""

    key: str
    value: str | None
    limit: tuple[int, int] | None  # (requests per unit, unit seconds)
    children: list[Node] = field(default_factory=list)


def _nodes(items: Sequence[Mapping[str, Any]], path: str) -> list[Node]:
    out = []
    for i, d in enumerate(items or []):
        where = f"{path}[{i}]"
        if "key" not in d:
            raise ValueError(f"{where}: key is required")
        limit = None
        if d.get("rate_limit"):
            rl = d["rate_limit"]
            unit = str(rl.get("unit", "")).lower()
            if unit not in UNITS:
                raise ValueError(f"{where}.rate_limit.unit: one of {', '.join(UNITS)}")
            limit = (int(rl["requests_per_unit"]), UNITS[unit])
        out.append(Node(str(d["key"]), None if d.get("value") is None else str(d["value"]), limit, _nodes(d.get("descriptors") or [], f"{where}.descriptors")))
    return out


def load_config(text: str) -> dict[str, list[Node]]:
    """Domains and their descriptor trees from one or more YAML documents."""
    out: dict[str, list[Node]] = {}
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if "domain" not in doc:
            raise ValueError("domain is required")
        out[str(doc["domain"])] = _nodes(doc.get("descriptors") or [], "descriptors")
    return out


def find_limit(nodes: list[Node], entries: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], list[str]] | None:
    """The rate limit for a descriptor, and the counter key parts; None when nothing applies."""
    found = None
    parts: list[str] = []
    level = nodes
    for key, value in entries:
        exact = next((n for n in level if n.key == key and n.value == value), None)
        node = exact or next((n for n in level if n.key == key and n.value is None), None)
        if node is None:
            return found
        parts.append(f"{key}_{value}")
        if node.limit is not None:
            found = (node.limit, list(parts))
        level = node.children
    return found


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """ShouldRateLimit over fixed-window counters in Redis."""

    def __init__(self, config: dict[str, list[Node]], redis: Any, clock: Any = time.time) -> None:
        self.config = config
        self.redis = redis
        self.clock = clock

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: grpc.aio.ServicerContext) -> rls_pb2.RateLimitResponse:  # noqa: N802
        """OK unless a descriptor's counter is over its limit."""
        nodes = self.config.get(request.domain, [])
        hits = request.hits_addend or 1
        now = int(self.clock())
        response = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        plan: list[tuple[str, int, int] | None] = []
        for d in request.descriptors:
            found = find_limit(nodes, [(e.key, e.value) for e in d.entries])
            if found is None:
                plan.append(None)
                continue
            (per_unit, seconds), parts = found
            window = now - now % seconds
            plan.append((f"ratelimit:{request.domain}:{'|'.join(parts)}:{window}", per_unit, seconds))
        keys = [p for p in plan if p is not None]
        counts: list[int] = []
        if keys:
            pipe = self.redis.pipeline(transaction=False)
            for key, _, seconds in keys:
                pipe.incrby(key, hits)
                pipe.expire(key, seconds)
            results = await pipe.execute()
            counts = results[0::2]
        it = iter(counts)
        for p in plan:
            status = response.statuses.add(code=rls_pb2.RateLimitResponse.OK)
            if p is None:
                continue
            count = next(it)
            status.current_limit.requests_per_unit = p[1]
            status.limit_remaining = max(0, p[1] - count)
            if count > p[1]:
                status.code = rls_pb2.RateLimitResponse.OVER_LIMIT
                response.overall_code = rls_pb2.RateLimitResponse.OVER_LIMIT
        return response


async def serve(config_path: str | Path, redis_address: str, address: str) -> tuple[grpc.aio.Server, int]:
    """Start the service; returns the gRPC server and its port."""
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:
        from aeraki_ctl.extras import MissingExtra

        raise MissingExtra("ratelimit", "redis", "the rate limit service") from exc

    host, _, port = redis_address.rpartition(":")
    config = load_config(Path(config_path).read_text())
    service = RateLimitService(config, aioredis.Redis(host=host, port=int(port)))
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
    bound = server.add_insecure_port(address)
    await server.start()
    log.info("rate limit service on port %d (domains: %s)", bound, ", ".join(config))
    return server, bound
