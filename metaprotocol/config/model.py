"""The proxy's configuration model.

Plain, immutable and hashable-by-value: a config is a value that can be compared (to find what
changed on a live update), dumped as JSON (``/config_dump``) and built from any source (a static
bootstrap file today, xDS resources from ``aeraki_ctl``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

DEFAULT_ROUTE_TIMEOUT: Final = 15.0
"""Per-request timeout in seconds when a route names none (Envoy generic_proxy's default)."""

DEFAULT_CONNECT_TIMEOUT: Final = 5.0

HASH_FUNCTIONS: Final = ("md5", "crc32a", "fnv1a_64", "fnv1a_32")
"""Key hash functions for RING_HASH/MAGLEV clusters (twemproxy's names)."""


class MatchKind(enum.Enum):
    """How an attribute matcher compares (Envoy HeaderMatcher / StringMatcher forms)."""

    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    CONTAINS = "contains"
    REGEX = "regex"
    PRESENT = "present"


class LbPolicy(enum.Enum):
    """Endpoint selection within a cluster (Envoy names)."""

    ROUND_ROBIN = "ROUND_ROBIN"
    RANDOM = "RANDOM"
    LEAST_REQUEST = "LEAST_REQUEST"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


HASHING_POLICIES: Final = frozenset({LbPolicy.RING_HASH, LbPolicy.MAGLEV})
"""Policies that pick the endpoint from a hash of request metadata."""


@dataclass(frozen=True, slots=True)
class AttributeMatcher:
    """One condition on a metadata attribute; a route matches when all its conditions do.

    ``name`` is compared lower-cased (codec metadata keys are lower-case, as in Aeraki).
    ``present`` with ``value == "false"`` requires the attribute to be absent.
    """

    name: str
    kind: MatchKind
    value: str = ""
    invert: bool = False
    ignore_case: bool = False


class RbacAction(enum.Enum):
    """What an RBAC filter does with a request its policies match (Envoy's RBAC.Action)."""

    ALLOW = "ALLOW"  # only matching requests pass
    DENY = "DENY"  # matching requests are refused
    LOG = "LOG"  # nothing is refused; matches are counted


class RbacOp(enum.Enum):
    """The node kinds of an RBAC permission or principal (Envoy's Permission / Principal oneofs
    that apply to a layer-7 request of any protocol)."""

    ANY = "any"
    AND = "and"
    OR = "or"
    NOT = "not"
    REQUEST = "request"  # a request metadata attribute (Envoy: header)
    PEER = "peer"  # a connection attribute: source.principal, source.namespace (Envoy: authenticated)
    SOURCE_IP = "source_ip"  # the client's address in a CIDR range (Envoy: direct_remote_ip, remote_ip, source_ip)
    DESTINATION_PORT = "destination_port"  # the listener's port, or a range of ports


@dataclass(frozen=True, slots=True)
class RbacRule:
    """One node of a permission or principal tree."""

    op: RbacOp
    children: tuple[RbacRule, ...] = ()
    matcher: AttributeMatcher | None = None  # REQUEST and PEER
    cidr: tuple[str, int] = ("", 0)  # SOURCE_IP: address prefix and length
    ports: tuple[int, int] = (0, 0)  # DESTINATION_PORT: first and last (inclusive)


@dataclass(frozen=True, slots=True)
class RbacPolicy:
    """A named policy: it matches a request when any permission and any principal match."""

    name: str
    permissions: tuple[RbacRule, ...]
    principals: tuple[RbacRule, ...]


@dataclass(frozen=True, slots=True)
class RbacFilter:
    """Envoy's RBAC rules for every request of a listener (the MetaProtocol rbac filter): its
    ``action`` applies to requests any policy matches; ``shadow`` rules are evaluated and counted,
    never enforced."""

    stat_prefix: str
    action: RbacAction = RbacAction.ALLOW
    policies: tuple[RbacPolicy, ...] = ()
    enforced: bool = True  # False: shadow rules


@dataclass(frozen=True, slots=True)
class WeightedCluster:
    """One destination of a traffic split."""

    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class RouteAction:
    """Where a matched request goes.

    Exactly one of ``cluster`` and ``weighted_clusters`` is set. ``subset`` selects endpoints by
    label (Envoy ``metadata_match`` under ``envoy.lb``). ``hash_policy`` names metadata keys whose
    values feed ring-hash/Maglev balancing. ``timeout`` is per request, in seconds (0 = none).
    """

    cluster: str | None = None
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    hash_policy: tuple[str, ...] = ()
    subset: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_ROUTE_TIMEOUT

    def cluster_names(self) -> tuple[str, ...]:
        """Every cluster this action may send to."""
        if self.cluster is not None:
            return (self.cluster,)
        return tuple(w.name for w in self.weighted_clusters)


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """Copy a fraction (0..1) of a route's requests to a shadow cluster; replies are discarded."""

    cluster: str
    fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry failed requests: up to ``num_retries`` more tries for the failure kinds in
    ``retry_on`` (error kind values, plus ``error`` for an error reply from upstream), each try
    with ``per_try_timeout`` seconds (0: the route timeout). A request that may already have
    reached a server is resent only when the codec says it is idempotent or
    ``retry_non_idempotent`` is set."""

    num_retries: int = 1
    retry_on: frozenset[str] = frozenset({"connect_failure", "upstream_reset", "upstream_timeout"})
    per_try_timeout: float = 0.0
    retry_non_idempotent: bool = False

    def retry_on_text(self) -> str:
        """``retry_on`` as Envoy's comma-separated string; the opt-in travels as the token
        ``non_idempotent`` (Envoy's RetryPolicy has no field for it)."""
        tokens = sorted(self.retry_on | ({NON_IDEMPOTENT} if self.retry_non_idempotent else set()))
        return ",".join(tokens)


NON_IDEMPOTENT = "non_idempotent"
RETRY_KINDS: Final = frozenset({"connect_failure", "upstream_reset", "upstream_timeout", "no_healthy_upstream", "error"})
# Envoy's retry_on conditions, in this proxy's terms (a protocol error reply stands for a 5xx).
ENVOY_RETRY_ON: Final[dict[str, frozenset[str]]] = {
    "5xx": frozenset({"error", "upstream_reset", "upstream_timeout", "connect_failure"}),
    "gateway_error": frozenset({"upstream_reset", "upstream_timeout", "connect_failure"}),
    "reset": frozenset({"upstream_reset", "upstream_timeout"}),
    "reset_before_request": frozenset({"connect_failure"}),
}


def parse_retry_on(text: str) -> tuple[frozenset[str], bool]:
    """``retry_on`` (comma-separated; ``-`` or ``_``): this proxy's failure kinds, Envoy's
    conditions that make sense outside HTTP, and ``non_idempotent``. Returns the kinds and the
    opt-in.

    Raises:
        ValueError: a token this proxy cannot honour (HTTP-only ones such as retriable-4xx).
    """
    kinds: set[str] = set()
    opt_in = False
    for raw in text.split(","):
        token = raw.strip().lower().replace("-", "_")
        if not token:
            continue
        if token == NON_IDEMPOTENT:
            opt_in = True
        elif token in RETRY_KINDS:
            kinds.add(token)
        elif token in ENVOY_RETRY_ON:
            kinds |= ENVOY_RETRY_ON[token]
        else:
            known = sorted(RETRY_KINDS | {NON_IDEMPOTENT} | {k.replace("_", "-") for k in ENVOY_RETRY_ON})
            raise ValueError(f"unknown {raw.strip()!r} (one of {', '.join(known)})")
    return frozenset(kinds), opt_in


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    """Chaos testing: delay a fraction of requests, abort a fraction with a local error."""

    delay: float = 0.0
    delay_fraction: float = 0.0
    abort_kind: str = "internal"
    abort_fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """``max_tokens`` (also the initial fill), refilled by ``tokens_per_fill`` every ``fill_interval``."""

    max_tokens: int
    tokens_per_fill: int
    fill_interval: float


@dataclass(frozen=True, slots=True)
class RateLimitCondition:
    """Requests matching ``match`` use ``bucket``; the first matching condition wins."""

    match: tuple[AttributeMatcher, ...]
    bucket: TokenBucket


@dataclass(frozen=True, slots=True)
class LocalRateLimit:
    """Aeraki's local rate limit: ordered conditions, then the default bucket (None: no limit)."""

    conditions: tuple[RateLimitCondition, ...] = ()
    default: TokenBucket | None = None


@dataclass(frozen=True, slots=True)
class GlobalRateLimit:
    """Ask a rate limit service (Envoy's RLS API) about requests matching ``match`` (empty: all).

    ``descriptors`` maps metadata properties to descriptor keys; ``service_cluster`` names the
    cluster of the service; ``timeout`` bounds the call; on failure ``deny_on_fail`` decides.
    """

    domain: str
    service_cluster: str
    descriptors: tuple[tuple[str, str], ...]
    match: tuple[AttributeMatcher, ...] = ()
    timeout: float = 0.02
    deny_on_fail: bool = False


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One JSON line per request to ``path`` (``/dev/stdout`` for stdout); ``fields`` maps JSON keys
    to Envoy-style command operators (``%REQ(method)%``, ``%DURATION%`` ...)."""

    path: str
    fields: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RouteRule:
    """An ordered route: the first rule whose matchers all match wins."""

    name: str
    match: tuple[AttributeMatcher, ...]
    action: RouteAction
    request_mutation: tuple[tuple[str, str], ...] = ()
    response_mutation: tuple[tuple[str, str], ...] = ()
    mirrors: tuple[MirrorPolicy, ...] = ()
    retry: RetryPolicy | None = None
    fault: FaultPolicy | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """A named route table (RDS resource name ``<host>_<port>`` under Aeraki's convention)."""

    name: str
    routes: tuple[RouteRule, ...]


@dataclass(frozen=True, slots=True)
class CodecRef:
    """The codec a listener speaks: an entry-point name (or alias) plus its config mapping."""

    name: str
    config: Mapping[str, object] = field(default_factory=dict, hash=False, compare=True)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """A downstream listener running the MetaProtocol proxy filter.

    ``route_config`` is the static table; ``rds_name`` names a table delivered over xDS instead.
    """

    name: str
    address: str
    port: int
    codec: CodecRef
    stat_prefix: str
    route_config: RouteConfig | None = None
    rds_name: str | None = None
    idle_timeout: float = 0.0
    max_pending_per_connection: int = 4096
    upstream_connections_per_endpoint: int = 1
    local_rate_limit: LocalRateLimit | None = None
    access_log: tuple[AccessLog, ...] = ()
    global_rate_limit: GlobalRateLimit | None = None
    max_connections: int = 0
    """Open downstream connections this listener accepts at once (0: only the process bound);
    past it a new connection is closed at once (Envoy's connection_limit filter)."""
    protocol: str = ""
    """The application protocol's name (``dubbo``: MetaProtocolProxy ``protocol.name``); empty: the
    codec's name stands for it."""
    tls: DownstreamTls | None = None
    """TLS termination (the filter chain's ``transport_socket``); None: plaintext."""
    rbac: tuple[RbacFilter, ...] = ()
    """Authorization filters in their order in the filter chain (each a stage of the chain)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An upstream address with its balancing weight and labels (for subsets)."""

    address: str
    port: int
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """``address:port``, the identity used for pools, hashing and stats."""
        return f"{self.address}:{self.port}"


DEFAULT_RETRY_BUDGET_PERCENT: Final = 20.0
"""Envoy's defaults for a ``retry_budget`` that leaves its fields out."""
DEFAULT_MIN_RETRY_CONCURRENCY: Final = 3


@dataclass(frozen=True, slots=True)
class CircuitBreakers:
    """Limits per cluster (0: none): requests in flight, requests waiting for a connection, and
    retries in progress: at most ``max_retries``, or with a retry budget (``retry_budget_percent``
    above 0, which then takes precedence, as in Envoy) that percentage of the requests in flight
    but never fewer than ``min_retry_concurrency``."""

    max_requests: int = 0
    max_pending_requests: int = 0
    max_retries: int = 0
    retry_budget_percent: float = 0.0
    min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Eject an endpoint after ``consecutive_errors`` failures in a row, for
    ``base_ejection_time`` x the number of times it was ejected, at most ``max_ejection_percent``
    of the cluster at once."""

    consecutive_errors: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """Envoy's ``upstream_connection_options.tcp_keepalive``: SO_KEEPALIVE on upstream
    connections, with the kernel's probe count, idle time and interval (0: the OS default)."""

    probes: int = 0
    time: float = 0.0
    interval: float = 0.0


class HealthCheckKind(enum.Enum):
    """What an active health check sends: the codec's own probe (Dubbo heartbeat, Redis PING;
    a codec without one falls back to a connect) or only a TCP connect."""

    CODEC = "codec"
    TCP = "tcp"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Envoy's ``health_checks[0]``: probe each endpoint every ``interval``; a probe that gets no
    good answer within ``timeout`` fails; ``unhealthy_threshold`` failures in a row take the
    endpoint out of balancing, ``healthy_threshold`` successes in a row bring it back."""

    interval: float
    timeout: float
    unhealthy_threshold: int = 3
    healthy_threshold: int = 2
    kind: HealthCheckKind = HealthCheckKind.CODEC


DEFAULT_MAX_CONSECUTIVE_TIMEOUTS: Final = 3


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A named group of endpoints and how to pick one."""

    name: str
    endpoints: tuple[Endpoint, ...]
    lb_policy: LbPolicy = LbPolicy.ROUND_ROBIN
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    ring_min_size: int = 1024
    ring_max_size: int = 8 * 1024 * 1024
    hash_function: str = "md5"
    hash_tag: str = ""
    circuit_breakers: CircuitBreakers | None = None
    outlier_detection: OutlierDetection | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_consecutive_timeouts: int = DEFAULT_MAX_CONSECUTIVE_TIMEOUTS
    """A multiplexed upstream connection on which this many requests in a row time out with no
    reply in between is closed and replaced (0: never). ORDERED and EXCLUSIVE connections are
    closed on their first timeout, since a lost reply would misalign them."""
    health_check: HealthCheck | None = None
    tls: UpstreamTls | None = None
    """TLS origination to every endpoint (the cluster's ``transport_socket``); None: plaintext."""


DEFAULT_MAX_PENDING_REQUESTS: Final = 50_000
DEFAULT_MAX_HEAP_BYTES: Final = 1 << 30


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """Process-wide bounds (Envoy's overload manager in spirit); 0 disables a bound.

    ``max_active_downstream_connections``: open client connections over all listeners (None: 90 %
    of the process's file descriptor limit, decided when the proxy starts).
    ``max_pending_requests``: requests in flight over all listeners; past it new requests get the
    codec's over-limit reply at once. ``max_heap_size_bytes``: resident memory past which new
    requests get that reply and new connections are closed, read every ``refresh_interval``.
    """

    max_active_downstream_connections: int | None = None
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    max_heap_size_bytes: int = DEFAULT_MAX_HEAP_BYTES
    refresh_interval: float = 0.25


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """Where the admin HTTP endpoint listens."""

    address: str
    port: int


# -- TLS (Envoy's envoy.transport_sockets.tls) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataSource:
    """Envoy's ``DataSource``: a file (reloaded when it changes) or inline PEM text."""

    filename: str = ""
    inline: str = ""


class SanType(enum.Enum):
    """Which subject alternative names a matcher reads (Envoy's ``SubjectAltNameMatcher.SanType``;
    ANY: the deprecated ``match_subject_alt_names``, any type)."""

    ANY = "ANY"
    DNS = "DNS"
    URI = "URI"
    EMAIL = "EMAIL"
    IP_ADDRESS = "IP_ADDRESS"


@dataclass(frozen=True, slots=True)
class SanMatcher:
    """One ``match_typed_subject_alt_names`` entry: a peer is accepted when any of its SANs of
    ``san_type`` matches (``kind``: exact, prefix, suffix, contains or regex)."""

    san_type: SanType
    kind: MatchKind
    value: str
    ignore_case: bool = False


TLS_VERSIONS: Final = ("TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3")
ECDH_CURVES: Final = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}
"""Envoy's (BoringSSL's) curve names that Python's ``ssl.SSLContext.set_ecdh_curve`` can set, and
the OpenSSL name it takes (X25519 cannot be chosen alone through Python's ssl; it is a default)."""


@dataclass(frozen=True, slots=True)
class TlsParams:
    """Envoy's ``tls_params``: protocol versions (``TLS_AUTO``: Envoy's default, 1.2 to 1.3), the
    TLS 1.2 cipher suites (OpenSSL names) and the key exchange curve."""

    min_version: str = "TLS_AUTO"
    max_version: str = "TLS_AUTO"
    cipher_suites: tuple[str, ...] = ()
    ecdh_curves: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CommonTls:
    """Envoy's ``CommonTlsContext``: our certificate and key, what peers must present
    (``trusted_ca``: verify the peer against it; ``match_sans``: and one of its SANs must match),
    protocol parameters and ALPN."""

    certificate_chain: DataSource | None = None
    private_key: DataSource | None = None
    trusted_ca: DataSource | None = None
    match_sans: tuple[SanMatcher, ...] = ()
    params: TlsParams = TlsParams()
    alpn_protocols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """Envoy's ``DownstreamTlsContext`` on a listener: TLS termination, mTLS when
    ``require_client_certificate`` (a client certificate is verified against ``trusted_ca``
    whenever one is presented). ``allow_plaintext``: a client that does not start a TLS handshake
    is served in plaintext on the same port (Istio's PERMISSIVE; in Envoy a ``tls_inspector`` and a
    second, ``raw_buffer``, filter chain)."""

    common: CommonTls
    require_client_certificate: bool = False
    allow_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """Envoy's ``UpstreamTlsContext`` on a cluster: TLS origination sending ``sni``; the server's
    certificate is verified only against ``trusted_ca`` and the SAN matchers (as in Envoy, the SNI
    is not checked as a host name); a certificate of our own makes it mTLS."""

    common: CommonTls
    sni: str = ""


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """A whole proxy configuration."""

    listeners: tuple[ListenerConfig, ...]
    clusters: tuple[ClusterConfig, ...]
    admin: AdminConfig | None = None
    source: str = "<memory>"
    ads: tuple[str, int] | None = None
    node_id: str = ""
    overload: OverloadConfig = OverloadConfig()

    def cluster_map(self) -> dict[str, ClusterConfig]:
        """Clusters by name."""
        return {c.name: c for c in self.clusters}
