"""The codec interfaces a protocol plugin implements.

A plugin ships one ``CodecFactory`` subclass, registered under the entry-point group
``metaprotocol.codecs``. The factory makes a fresh, stateful, sans-IO codec per connection:

* a ``ServerCodec`` for each downstream connection: decodes requests, encodes responses, builds
  local replies (errors, heartbeats, commands the proxy answers itself);
* a ``ClientCodec`` for each upstream connection: decodes responses, encodes requests.

Codecs never touch sockets, clocks, event loops or loggers: bytes in, messages out, and back.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from metaprotocol.spi.buffer import ReadBuffer
from metaprotocol.spi.errors import LocalError, LocalProtocolError
from metaprotocol.spi.message import Correlation, Message, MessageType, _NeedData

Mutation = Mapping[str, str]
"""Key/values to set on an outgoing message (Dubbo attachments, THeader headers ...)."""

DecodeResult = Message | _NeedData


@dataclass(frozen=True, slots=True)
class LocalAnswer:
    """A reply the codec makes itself, without routing the request (Redis PING, AUTH ...).

    Attributes:
        reply: the bytes to send to the client.
        close: close the connection once the reply is written (Redis QUIT).
    """

    reply: bytes
    close: bool = False


class ServerCodec(abc.ABC):
    """Downstream side of one connection: requests in, responses and local replies out."""

    @abc.abstractmethod
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """Consume one whole request frame from ``buffer`` or nothing. The core calls it only
        while the buffer holds unread bytes.

        Returns:
            A ``Message`` (``buffer.pos`` advanced past it) or ``NEED_DATA`` (buffer untouched).

        Raises:
            RemoteProtocolError: the bytes cannot be framed; the connection cannot continue.
        """

    @abc.abstractmethod
    def encode(
        self,
        response: Message,
        mutation: Mutation | None = None,
        request_id: int | None = None,
    ) -> bytes | bytearray:
        """Bytes to send downstream for ``response``.

        Args:
            response: as decoded upstream.
            mutation: key/values to set (only when the factory declares ``supports_mutation``).
            request_id: the downstream request's id, restored after upstream multiplexing.

        Returns:
            ``response.raw`` itself when nothing changes (zero copy).
        """

    @abc.abstractmethod
    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        """The protocol's own error reply to ``request`` (echoing its id).

        ``request`` is None when the failure is not tied to a decoded request (a frame that could
        not be decoded); the codec then answers as the protocol does for garbage, or returns b"".
        """

    def heartbeat_reply(self, heartbeat: Message) -> bytes:
        """Reply to a heartbeat; heartbeats stop at the proxy and are never routed."""
        raise LocalProtocolError(f"{type(self).__name__} has no heartbeats")

    def answer_locally(self, request: Message) -> LocalAnswer | None:
        """Return a reply when the proxy itself must answer ``request``; None routes it."""
        return None

    def batch(self, requests: Sequence[Message]) -> Message | None:
        """One message standing for consecutive plain requests of an ORDERED protocol, so that
        the proxy routes and forwards a client's pipeline as a unit when nothing is decided per
        request (``Chain.forwards_pipelines``). Its ``raw`` is the requests' bytes in order; the
        upstream's replies to them are passed back concatenated. When the pipeline fails, the
        replies that came are kept and ``batch_error`` answers the rest. None (the default) keeps
        requests one by one."""
        return None

    def batch_error(self, batch: Message, error: LocalError, unanswered: int) -> bytes:
        """The error replies, in order, to the last ``unanswered`` requests of a forwarded
        pipeline (``batch`` or ``decode_run``'s message) whose first ones were answered upstream.

        The default repeats ``on_error(batch, error)``: right for protocols whose error reply
        echoes nothing of its request (ORDERED ones, the only ones that forward pipelines).
        """
        return self.on_error(batch, error) * unanswered

    def decode_run(self, buffer: ReadBuffer) -> tuple[Message, int] | None:
        """Optional fast path for forwarded pipelines: frame, without a message per request, the
        run of plain requests (routed, not answered locally, not split) starting at the buffer's
        position, and return it as one ``batch``-style message with its request count. A run of
        one is returned as the ordinary decoded request with a count of 1 (so that nothing is
        framed twice). None (the default, or no plain request first) leaves the buffer to
        ``decode``."""
        return None

    def is_idempotent(self, request: Message) -> bool:
        """Whether sending ``request`` twice is safe (e.g. a Redis read), so that a retry policy
        may resend it after it may already have reached a server (reset, timeout, error reply).

        Asked only when a retry is considered. The default, False, retries such a request only where
        the route says ``retry_non_idempotent``; requests that never left the proxy (connect failure,
        no healthy upstream) are always retryable.
        """
        return False

    def merge(self, request: Message, replies: Sequence[Message]) -> bytes:
        """Combine the replies to ``request.parts`` (in order) into one reply to ``request``."""
        raise LocalProtocolError(f"{type(self).__name__} does not split requests")

    def upstream_profile(self) -> Hashable:
        """Key of the upstream connection kind this client needs (e.g. RESP2 vs RESP3).

        Requests are only sent on upstream connections made for the same profile.
        """
        return None


class ClientCodec(abc.ABC):
    """Upstream side of one connection: responses in, requests out."""

    @abc.abstractmethod
    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """Consume one whole response frame from ``buffer`` or nothing (see ``ServerCodec.decode``).

        Unsolicited server messages (pushes) are returned with type ``EVENT``; they answer no request.
        """

    @abc.abstractmethod
    def encode(
        self,
        request: Message,
        mutation: Mutation | None = None,
        request_id: int | None = None,
    ) -> bytes | bytearray:
        """Bytes to send upstream for ``request``.

        Args:
            request: as decoded downstream.
            mutation: key/values to set (only when the factory declares ``supports_mutation``).
            request_id: the id to use upstream instead of ``request.request_id`` (multiplexing).

        Returns:
            ``request.raw`` itself when nothing changes (zero copy).
        """

    def can_mutate(self, request: Message) -> bool:
        """Whether a mutation can be written into ``request`` (Thrift: only over THeader).

        When it cannot, the request is forwarded unchanged and the proxy counts the dropped mutation.
        """
        return True

    def handshake(self) -> list[bytes]:
        """Requests to send first on a new upstream connection; their replies are discarded.

        A reply to a handshake request that is an error fails the connection.
        """
        return []

    def frame_replies(self, buffer: ReadBuffer, limit: int) -> tuple[int, int]:
        """Step over up to ``limit`` whole replies (ORDERED codecs, for forwarded pipelines):
        returns how many and how many of them are errors, and stops early at anything that is not
        a plain reply (an event, a heartbeat) or at an incomplete frame, leaving it to ``decode``.

        The default decodes one message at a time; a codec can scan without building messages.
        """
        count = errors = 0
        while count < limit:
            start = buffer.pos
            msg = self.decode(buffer)
            if not isinstance(msg, Message):
                break
            if msg.type is not MessageType.RESPONSE and msg.type is not MessageType.ERROR:
                buffer.pos = start  # left for decode
                break
            count += 1
            errors += msg.type is MessageType.ERROR
        return count, errors

    def health_check_request(self) -> bytes | None:
        """A probe for active health checks (Dubbo: a heartbeat; Redis: PING), sent on a fresh
        connection after ``handshake()``; the endpoint passes when every reply comes within the
        check's timeout and none is an ERROR. None (the default): a TCP connect is the check."""
        return None

    def answer_event(self, event: Message) -> bytes | None:
        """Bytes to send back for a server-initiated message (e.g. a Dubbo heartbeat request).

        Called for messages decoded as HEARTBEAT or EVENT; None sends nothing.
        """
        return None

    def request_id_of(self, response: Message) -> int | None:
        """The id a response answers (default: ``response.request_id``)."""
        return response.request_id


class CodecFactory(abc.ABC):
    """Entry point of a codec plugin: declares the protocol and makes per-connection codecs.

    Class attributes:
        name: the entry-point name (``redis``).
        aliases: other names accepted in configuration (``aeraki.meta_protocol.codec.redis``).
        correlation: how responses match requests upstream.
        supports_mutation: whether request/response mutations can be expressed on the wire.
        max_request_id: for REQUEST_ID codecs, the largest id the wire can carry.
        default_hash_policy: metadata keys hashed for RING_HASH/MAGLEV when a route names none.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    correlation: ClassVar[Correlation]
    supports_mutation: ClassVar[bool] = False
    max_request_id: ClassVar[int] = 2**31 - 1
    default_hash_policy: ClassVar[tuple[str, ...]] = ()
    bound_upstream: bool = False
    """True: each client gets its own upstream connection, chosen by its first routed request,
    and after the codec's handshake bytes pass through unparsed both ways (Envoy generic_proxy's
    ``bind_upstream_connection``; Redis transactions, pub/sub and blocking commands need it)."""

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        """Validate ``config`` (the listener's codec config mapping); raise CodecConfigError."""
        self.config: Mapping[str, object] = dict(config or {})

    @abc.abstractmethod
    def server_codec(self) -> ServerCodec:
        """A fresh codec for one downstream connection."""

    @abc.abstractmethod
    def client_codec(self, profile: Hashable = None) -> ClientCodec:
        """A fresh codec for one upstream connection of the given profile."""
