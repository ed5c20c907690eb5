"""Error vocabulary of the codec SPI.

Two kinds, kept strictly apart (h11/h2): a *remote* protocol error means the peer sent bytes that
cannot be framed; the core answers with the codec's error reply where the protocol has one and
closes only that connection. A *local* error is a failure the proxy reports to a client (no route,
timeout, ...) as a protocol-native reply built by ``Codec.on_error``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ErrorKind(enum.Enum):
    """Why the proxy answered a request itself. Values follow Aeraki's ErrorType where it has one."""

    ROUTE_NOT_FOUND = "route_not_found"
    CLUSTER_NOT_FOUND = "cluster_not_found"
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_RESET = "upstream_reset"
    CONNECT_FAILURE = "connect_failure"
    BAD_REQUEST = "bad_request"
    BAD_RESPONSE = "bad_response"
    OVER_LIMIT = "over_limit"
    FORBIDDEN = "forbidden"
    """Refused by an authorization policy (RBAC)."""
    UNSUPPORTED = "unsupported"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class LocalError:
    """A failure to report to the client through the codec's own error reply."""

    kind: ErrorKind
    message: str


class MetaProtocolError(Exception):
    """Root of every exception raised by the SPI and the codecs."""


class RemoteProtocolError(MetaProtocolError):
    """The peer sent bytes that are not a valid frame. The connection cannot continue.

    Attributes:
        kind: the error kind the core reports (``BAD_REQUEST`` downstream, ``BAD_RESPONSE`` upstream).
        request: what is known of the offending request (e.g. its id, from a readable header), so
            the error reply can echo it; None when nothing is known. On the client side, a
            ``Message`` whose ``request_id`` is the id the bad response answers.
        skipped: the codec consumed the whole bad frame (its length was known) and the stream is
            still aligned, so the connection can go on: downstream, the core answers just that
            request with ``on_error(request, ...)`` and keeps reading; upstream, it fails only the
            request the frame answers (by ``request.request_id``, or the head of an ORDERED
            connection) and the connection keeps serving the others. Without it (the default),
            the connection is closed.
    """

    def __init__(
        self,
        message: str,
        kind: ErrorKind = ErrorKind.BAD_REQUEST,
        request: object = None,
        skipped: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.request = request
        self.skipped = skipped


class LocalProtocolError(MetaProtocolError):
    """We were asked to emit something the protocol cannot express: a bug or a bad config."""


class CodecConfigError(MetaProtocolError):
    """A codec's configuration mapping is invalid."""
