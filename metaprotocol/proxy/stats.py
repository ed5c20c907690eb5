"""Counters and histograms, rendered in the Prometheus text format by the admin endpoint.

Hot-path objects keep plain int attributes and small dicts; rendering walks them at scrape time,
so counting costs an attribute increment, never a lock or a label lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from metaprotocol.proxy.overload import Overload

LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds in seconds. Typed as a tuple of any length on purpose: mypyc keeps a fixed-size
tuple of floats unboxed, and iterating it would box it into a new tuple at every call."""


class Histogram:
    """A cumulative-on-render latency histogram in seconds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float, times: int = 1) -> None:
        """Record a duration (``times`` requests that took it: a forwarded pipeline).

        The bucket is ``bisect_left(LATENCY_BUCKETS, seconds)`` found by a compiled linear scan
        from the fast end: a few float compares, where the bisect module call cost more than
        the rest of the observation (latencies sit in the first buckets)."""
        index = 0
        for bound in LATENCY_BUCKETS:
            if not bound < seconds:  # bisect's own test (so a NaN lands where bisect puts it)
                break
            index += 1
        self.counts[index] += times
        self.sum += seconds * times

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)


class ListenerStats:
    """Per-listener counters (Aeraki's ``meta_protocol.<stat_prefix>.*`` set, Prometheus-named)."""

    def __init__(self, name: str, stat_prefix: str, protocol: str) -> None:
        self.name = name
        self.stat_prefix = stat_prefix
        self.protocol = protocol
        self.requests = 0
        self.requests_oneway = 0
        self.heartbeats = 0
        self.local_answers = 0
        self.responses = 0
        self.request_decoding_errors = 0
        self.active_requests = 0
        self.cx_total = 0
        self.cx_active = 0
        self.cx_destroy_with_active_rq = 0
        self.fanout_requests = 0
        self.late_responses = 0
        self.rate_limit_ok = 0
        self.rate_limited = 0
        self.rbac_allowed = 0
        self.rbac_denied = 0
        self.rbac_shadow_allowed = 0
        self.rbac_shadow_denied = 0
        self.retries = 0
        self.retries_not_idempotent = 0
        self.faults_injected = 0
        self.mirrored = 0
        self.idle_timeouts = 0
        self.mutations_dropped = 0
        self.cx_overflow = 0
        self.codec_internal_errors = 0
        self.errors: Counter[str] = Counter()
        self.route_requests: Counter[str] = Counter()
        self.latency = Histogram()


class ClusterStats:
    """Per-cluster upstream counters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = 0
        self.responses = 0
        self.cx_total = 0
        self.cx_active = 0
        self.cx_connect_fail = 0
        self.cx_destroy_with_active_rq = 0
        self.response_decoding_errors = 0
        self.unsolicited = 0
        self.retries = 0
        self.retry_successes = 0
        self.retry_overflows = 0
        self.timeout_closes = 0
        self.health_check_failures = 0
        self.health_check_successes = 0
        self.errors: Counter[str] = Counter()


def _render_overload(out: list[str], ov: Overload) -> None:
    """Process-wide bounds: what is in use, the limits, and what they refused."""
    gauges = (
        ("metaprotocol_overload_pending_requests", "Requests in flight in the whole process.", ov.pending),
        ("metaprotocol_overload_max_pending_requests", "Process bound on requests in flight (0: none).", ov.config.max_pending_requests),
        ("metaprotocol_overload_downstream_cx_active", "Open downstream connections in the whole process.", ov.connections),
        ("metaprotocol_overload_max_downstream_cx", "Process bound on downstream connections (0: none).", ov.max_connections),
        ("metaprotocol_overload_heap_bytes", "Resident memory at the last reading.", ov.heap_bytes),
        ("metaprotocol_overload_max_heap_bytes", "Memory threshold past which load is shed (0: none).", ov.config.max_heap_size_bytes),
        ("metaprotocol_overload_shedding", "1 while the memory threshold is exceeded.", int(ov.over_heap)),
    )
    for name, help_, value in gauges:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} gauge")
        out.append(_line(name, {}, value))
    for name, help_, counts in (
        ("metaprotocol_overload_rejected_requests_total", "Requests answered with an over-limit reply, by bound.", ov.rejected_requests),
        ("metaprotocol_overload_rejected_cx_total", "Connections closed at accept, by bound.", ov.rejected_connections),
    ):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} counter")
        for reason, n in sorted(counts.items()):
            out.append(_line(name, {"limit": reason}, n))


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}"


def render_prometheus(
    listeners: Iterable[ListenerStats], clusters: Iterable[ClusterStats], overload: Overload | None = None
) -> str:
    """The Prometheus text exposition of all stats."""
    out: list[str] = []
    if overload is not None:
        _render_overload(out, overload)
    ls = list(listeners)
    cs = list(clusters)

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")

    listener_counters = (
        ("requests", "requests_total", "Requests decoded from downstream."),
        ("requests_oneway", "requests_oneway_total", "Oneway requests."),
        ("heartbeats", "heartbeats_total", "Heartbeats answered by the proxy."),
        ("local_answers", "local_answers_total", "Requests answered by the codec itself."),
        ("responses", "responses_total", "Upstream responses sent downstream."),
        ("request_decoding_errors", "request_decoding_errors_total", "Malformed downstream frames."),
        ("cx_total", "downstream_cx_total", "Downstream connections accepted."),
        ("cx_destroy_with_active_rq", "downstream_cx_destroy_with_active_rq_total",
         "Downstream connections closed with requests in flight."),
        ("fanout_requests", "fanout_requests_total", "Requests split across upstreams."),
        ("late_responses", "late_responses_total", "Responses that arrived after a timeout."),
        ("rate_limit_ok", "local_rate_limit_ok_total", "Requests the local rate limit let through."),
        ("rate_limited", "local_rate_limit_rate_limited_total", "Requests refused by the local rate limit."),
        ("rbac_allowed", "rbac_allowed_total", "Requests an RBAC filter let through."),
        ("rbac_denied", "rbac_denied_total", "Requests an RBAC filter refused."),
        ("rbac_shadow_allowed", "rbac_shadow_allowed_total", "Requests shadow RBAC rules would let through."),
        ("rbac_shadow_denied", "rbac_shadow_denied_total", "Requests shadow RBAC rules would refuse."),
        ("retries", "retries_total", "Retried tries."),
        ("retries_not_idempotent", "retries_not_idempotent_total", "Retries refused: the request may have reached a server and is not idempotent."),
        ("faults_injected", "faults_injected_total", "Requests delayed or aborted by fault injection."),
        ("mirrored", "mirrored_requests_total", "Requests copied to a mirror cluster."),
        ("idle_timeouts", "downstream_cx_idle_timeout_total", "Connections closed for idleness."),
        ("mutations_dropped", "mutations_dropped_total", "Mutations the codec could not express (e.g. Thrift without THeader)."),
        ("cx_overflow", "downstream_cx_overflow_total", "Connections closed at once: a listener, process or heap bound was reached."),
        ("codec_internal_errors", "codec_internal_errors_total", "Undocumented exceptions raised by a codec (codec bugs), confined to one connection or request."),
    )  # fmt: skip
    for attr, metric, help_ in listener_counters:
        name = f"metaprotocol_{metric}"
        family(name, "counter", help_)
        for s in ls:
            out.append(_line(name, {"listener": s.name, "protocol": s.protocol}, getattr(s, attr)))
    for attr, metric, help_ in (
        ("active_requests", "active_requests", "Requests in flight."),
        ("cx_active", "downstream_cx_active", "Open downstream connections."),
    ):
        name = f"metaprotocol_{metric}"
        family(name, "gauge", help_)
        for s in ls:
            out.append(_line(name, {"listener": s.name, "protocol": s.protocol}, getattr(s, attr)))
    name = "metaprotocol_local_replies_total"
    family(name, "counter", "Error replies made by the proxy, by error kind.")
    for s in ls:
        for kind, n in sorted(s.errors.items()):
            out.append(_line(name, {"listener": s.name, "kind": kind}, n))
    name = "metaprotocol_route_requests_total"
    family(name, "counter", "Requests per matched route.")
    for s in ls:
        for route, n in sorted(s.route_requests.items()):
            out.append(_line(name, {"listener": s.name, "route": route}, n))
    name = "metaprotocol_request_duration_seconds"
    family(name, "histogram", "Time from request decode to reply written.")
    for s in ls:
        labels = {"listener": s.name}
        running = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.latency.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(_line(f"{name}_bucket", {**labels, "le": le}, running))
        out.append(_line(f"{name}_sum", labels, s.latency.sum))
        out.append(_line(f"{name}_count", labels, running))
    cluster_counters = (
        ("requests", "upstream_requests_total", "Requests sent upstream."),
        ("responses", "upstream_responses_total", "Responses received from upstream."),
        ("cx_total", "upstream_cx_total", "Upstream connections opened."),
        ("cx_connect_fail", "upstream_cx_connect_fail_total", "Upstream connect failures."),
        ("cx_destroy_with_active_rq", "upstream_cx_destroy_with_active_rq_total",
         "Upstream connections lost with requests in flight."),
        ("response_decoding_errors", "upstream_response_decoding_errors_total",
         "Malformed upstream frames."),
        ("unsolicited", "upstream_unsolicited_total", "Upstream messages that answer no request."),
        ("retries", "upstream_rq_retry_total", "Requests to this cluster retried."),
        ("retry_successes", "upstream_rq_retry_success_total", "Retried requests that ended in a non-error response."),
        ("retry_overflows", "upstream_rq_retry_overflow_total", "Retries refused by the retry limit or budget."),
        ("timeout_closes", "upstream_cx_destroy_timeout_total", "Upstream connections closed because requests on them timed out."),
        ("health_check_successes", "upstream_health_check_success_total", "Active health check probes that succeeded."),
        ("health_check_failures", "upstream_health_check_failure_total", "Active health check probes that failed."),
    )  # fmt: skip
    for attr, metric, help_ in cluster_counters:
        name = f"metaprotocol_{metric}"
        family(name, "counter", help_)
        for c in cs:
            out.append(_line(name, {"cluster": c.name}, getattr(c, attr)))
    name = "metaprotocol_upstream_cx_active"
    family(name, "gauge", "Open upstream connections.")
    for c in cs:
        out.append(_line(name, {"cluster": c.name}, c.cx_active))
    name = "metaprotocol_upstream_errors_total"
    family(name, "counter", "Upstream failures by error kind.")
    for c in cs:
        for kind, n in sorted(c.errors.items()):
            out.append(_line(name, {"cluster": c.name, "kind": kind}, n))
    return "\n".join(out) + "\n"
