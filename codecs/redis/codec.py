"""The Redis codec: RESP2/RESP3 commands in, replies out, on the ordered (pipelined) mode.

Pooled mode (the default, like Envoy's redis_proxy and twemproxy) funnels many clients into a
few shared upstream connections. Commands that depend on per-connection server state are refused
with an ``-ERR`` naming the reason; AUTH, HELLO, SELECT of the configured db, PING, QUIT and
CLIENT SETNAME/SETINFO are answered by the proxy; multi-key MGET/MSET/DEL/UNLINK/EXISTS/TOUCH
are split per key when their keys live on different shards and the replies merged in order.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Final, cast

from metaprotocol.spi import (
    NEED_DATA,
    ClientCodec,
    CodecConfigError,
    CodecFactory,
    Correlation,
    DecodeResult,
    ErrorKind,
    LocalAnswer,
    LocalError,
    LocalProtocolError,
    Message,
    MessageType,
    Mutation,
    ReadBuffer,
    RemoteProtocolError,
    ServerCodec,
)
from metaprotocol_codecs.redis.commands import (
    ALLOWED_CLIENT_SUBCOMMANDS,
    CONNECTION_STATE,
    FANOUT_COMMANDS,
    KEY_SPECS,
    READ_ONLY_COMMANDS,
    SINGLE_KEY,
    key_indexes,
)
from metaprotocol_codecs.redis.patterns import EXACT_MAX
from metaprotocol_codecs.redis.requests import (
    exact_short_run,
    frame_inline,
    frame_multibulk,
    frame_plain,
    pack,
    short_command_name,
    short_command_size,
    short_commands,
)
from metaprotocol_codecs.redis.resp import INCOMPLETE, flat_reply_end, scan_flat_replies, scan_plain_replies, scan_reply

_STAR: Final = ord("*")
_ERROR_BYTES: Final = frozenset(b"-!")
_PUSH: Final = ord(">")
OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"
SERVER_VERSION: Final = "7.0.0"
_LOCAL_COMMANDS: Final = frozenset(
    {b"PING", b"QUIT", b"AUTH", b"HELLO", b"SELECT", b"CLIENT", *CONNECTION_STATE}
)
_connection_ids = itertools.count(1)
# Answered by the proxy in bound mode too (before the first routed command opens the connection).
_BOUND_LOCAL: Final = frozenset({b"AUTH", b"HELLO", b"QUIT"})


class _Pipeline:
    """``opaque`` of a message standing for several commands (ServerCodec.batch)."""

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


def _command_of(request: Message) -> tuple[bytes, list[bytes] | None]:
    """The upper-cased command name and, when the codec kept them, its arguments."""
    return cast("tuple[bytes, list[bytes] | None]", request.opaque)


class RedisConfig:
    """Codec settings (the listener's ``codec.config`` mapping).

    Keys: ``password`` (clients must AUTH with it), ``upstream_password`` and
    ``upstream_username`` (the proxy authenticates upstream), ``db`` (database of the upstream
    connections), ``max_bulk_length`` (bytes, default 512 MiB as Redis), ``mode`` (``pooled``).
    """

    def __init__(self, config: Mapping[str, object]) -> None:
        known = {"password", "upstream_password", "upstream_username", "db", "max_bulk_length", "mode"}
        unknown = set(config) - known
        if unknown:
            raise CodecConfigError(f"unknown redis codec settings: {', '.join(sorted(unknown))}")
        self.password = _opt_str(config, "password")
        self.upstream_password = _opt_str(config, "upstream_password")
        self.upstream_username = _opt_str(config, "upstream_username")
        self.db = _int(config, "db", 0)
        self.max_bulk = _int(config, "max_bulk_length", 512 * 1024 * 1024)
        self.mode = str(config.get("mode", "pooled"))
        if self.mode not in ("pooled", "bound"):
            raise CodecConfigError(f"redis mode {self.mode!r}: pooled or bound")
        if self.db < 0:
            raise CodecConfigError("db must not be negative")


def _opt_str(config: Mapping[str, object], key: str) -> bytes | None:
    value = config.get(key)
    return None if value is None else str(value).encode()


def _int(config: Mapping[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise CodecConfigError(f"redis codec setting {key} must be an integer")
    return value


class RedisServerCodec(ServerCodec):
    """Client-facing side: one per downstream connection (holds its RESP version and auth)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.resp = 2
        self.authenticated = config.password is None
        self.connection_id = next(_connection_ids)

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One command, or NEED_DATA. Empty commands (``*0``, blank lines) are skipped as Redis does."""
        while True:
            data = buffer.data
            pos = buffer.pos
            if pos >= len(data):
                return NEED_DATA
            if data[pos] == _STAR:
                if isinstance(data, bytes):  # the common case: every length plain, skipped
                    bounds: list[int] = []
                    end = frame_plain(data, pos, self.config.max_bulk, bounds)[0]
                    if end >= 0:
                        buffer.pos = end
                        return _command(data[pos:end], data, bounds)
                framed = frame_multibulk(data, pos, self.config.max_bulk)
                if framed is None:
                    return NEED_DATA
                end, bounds = framed
                buffer.pos = end
                if bounds:
                    return _command(data[pos:end], data, bounds)
            else:
                line = frame_inline(data, pos)
                if line is None:
                    return NEED_DATA
                end, args = line
                buffer.pos = end
                if args:
                    raw = pack(args)
                    bounds = _bounds_of_packed(args)
                    return _command(raw, raw, bounds)

    # -- replies ------------------------------------------------------------------------------

    def encode(
        self, response: Message, mutation: Mutation | None = None, request_id: int | None = None
    ) -> bytes | bytearray:
        """Replies pass through unchanged (RESP has nowhere to put a mutation)."""
        return response.raw

    def on_error(self, request: Message | None, error: LocalError) -> bytes:
        """``-ERR <reason>`` (the same form in RESP2 and RESP3); ``-NOPERM <reason>`` for a request
        an authorization policy refused, as Redis answers a command its ACL forbids."""
        text = error.message.replace("\r", " ").replace("\n", " ")
        prefix = "NOPERM" if error.kind is ErrorKind.FORBIDDEN else "ERR"
        return f"-{prefix} {text}\r\n".encode()

    def decode_run(self, buffer: ReadBuffer) -> tuple[Message, int] | None:
        """Consecutive single-key commands (never answered locally nor split) framed in one pass.

        A malformed frame ends the run; ``decode`` then reports it after the run's replies."""
        if not self.authenticated or self.config.mode == "bound":
            return None
        data = buffer.data
        start = pos = buffer.pos
        end = len(data)
        max_bulk = self.config.max_bulk
        plain = isinstance(data, bytes)
        stop, commands = exact_short_run(data, pos) if max_bulk >= EXACT_MAX and not plain else (pos, [])
        if commands:  # lengths and names proved by the pattern itself
            buffer.pos = stop
            _, _, first_name, key_length, rest = commands[0].split(b"\r\n", 4)
            cmd, name, _ = _NAMES.get(first_name) or _name(first_name)
            if len(commands) == 1:
                return _single_key(data[start:stop], cmd, name, rest[: int(key_length[1:])]), 1
            return _pipeline(data[start:stop], name, len(commands)), len(commands)
        short = _plain_run(data, pos, max_bulk) if isinstance(data, bytes) else _short_run(data, pos, max_bulk)
        if short is not None:
            stop, count, (cmd, name, _), key = short
            buffer.pos = stop
            if count == 1:
                return _single_key(data[start:stop], cmd, name, key), 1
            return _pipeline(data[start:stop], name, count), count
        if isinstance(data, bytes) and frame_plain(data, pos, max_bulk)[0] >= 0:
            return None  # a well-formed command, not single-key: decode's
        count = 0
        first = ""
        first_stop = 0
        first_bounds: list[int] = []
        while pos < end and data[pos] == _STAR:
            try:
                framed = frame_multibulk(data, pos, max_bulk)
            except RemoteProtocolError:
                break
            if framed is None or not framed[1]:
                break
            stop, bounds = framed
            _, name, spec = _name(bytes(data[bounds[0] : bounds[1]]))
            if spec != SINGLE_KEY:
                break
            if not count:
                first, first_stop, first_bounds = name, stop, bounds
            count += 1
            pos = stop
        if not count:
            return None
        buffer.pos = pos
        if count == 1:
            return _command(data[start:first_stop], data, first_bounds), 1
        return _pipeline(data[start:pos], first, count), count

    def batch(self, requests: Sequence[Message]) -> Message:
        """Consecutive plain commands as one unit: Redis answers a pipeline in order, so their
        replies come back as one run of bytes for the client."""
        return Message(MessageType.REQUEST, b"".join(r.raw for r in requests), requests[0].metadata, opaque=_Pipeline(len(requests)))

    def merge(self, request: Message, replies: Sequence[Message]) -> bytes:
        """Combine per-key replies into the multi-key command's reply."""
        cmd, _ = _command_of(request)
        _, _, how = FANOUT_COMMANDS[cmd]
        if how == "array":
            return b"*%d\r\n" % len(replies) + b"".join(bytes(r.raw) for r in replies)
        for r in replies:
            if r.type is MessageType.ERROR:
                return bytes(r.raw)
        if how == "ok":
            return OK
        total = 0
        for r in replies:
            raw = bytes(r.raw)
            if not raw.startswith(b":"):
                raise LocalProtocolError(f"expected an integer reply, got {raw[:20]!r}")
            total += int(raw[1:-2])
        return b":%d\r\n" % total

    def is_idempotent(self, request: Message) -> bool:
        """Read-only commands may be resent (a fan-out command's parts are never retried)."""
        return _command_of(request)[0] in READ_ONLY_COMMANDS

    def upstream_profile(self) -> Hashable:
        """Upstream connections are kept per RESP version."""
        return self.resp

    # -- commands the proxy answers -----------------------------------------------------------

    def answer_locally(self, request: Message) -> LocalAnswer | None:
        """Connection-level commands, auth, and refusals of connection-state commands."""
        cmd, args = _command_of(request)
        if not self.authenticated and cmd not in (b"AUTH", b"HELLO", b"QUIT"):
            return LocalAnswer(NOAUTH)
        if cmd not in _LOCAL_COMMANDS:
            return None
        if self.config.mode == "bound" and cmd not in _BOUND_LOCAL:
            return None  # bound: the client's own server connection handles everything else
        assert args is not None  # noqa: S101 - local commands always carry their arguments
        if cmd == b"PING":
            if len(args) == 1:
                return LocalAnswer(PONG)
            if len(args) == 2:  # noqa: PLR2004
                return LocalAnswer(b"$%d\r\n%s\r\n" % (len(args[1]), args[1]))
            return LocalAnswer(_arity("ping"))
        if cmd == b"QUIT":
            return LocalAnswer(OK, close=True)
        if cmd == b"AUTH":
            return LocalAnswer(self._auth(args[1:]))
        if cmd == b"HELLO":
            return LocalAnswer(self._hello(args[1:]))
        if cmd == b"SELECT":
            return LocalAnswer(self._select(args))
        if cmd == b"CLIENT":
            sub = args[1].upper() if len(args) > 1 else b""
            if sub in ALLOWED_CLIENT_SUBCOMMANDS:
                return LocalAnswer(OK)
            return LocalAnswer(
                b"-ERR CLIENT %s is not supported: pooled upstream connections are shared\r\n"
                % sub.decode("latin-1", "replace").encode()
            )
        reason = CONNECTION_STATE[cmd]
        return LocalAnswer(
            f"-ERR {cmd.decode('latin-1')} is not supported by this proxy: {reason}\r\n".encode()
        )

    def _auth(self, args: list[bytes]) -> bytes:
        if not args or len(args) > 2:  # noqa: PLR2004
            return _arity("auth")
        password = self.config.password
        if password is None:
            return (
                b"-ERR AUTH <password> called without any password configured for the default "
                b"user. Are you sure your configuration is correct?\r\n"
            )
        user = args[0] if len(args) == 2 else b"default"  # noqa: PLR2004
        if user == b"default" and hmac.compare_digest(args[-1], password):
            self.authenticated = True
            return OK
        return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"

    def _hello(self, args: list[bytes]) -> bytes:
        version = self.resp
        i = 0
        if args:
            try:
                version = int(args[0])
            except ValueError:
                return b"-ERR Protocol version is not an integer or out of range\r\n"
            if version not in (2, 3):
                return b"-NOPROTO unsupported protocol version\r\n"
            i = 1
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH" and i + 2 < len(args):
                reply = self._auth([args[i + 1], args[i + 2]])
                if reply != OK:
                    return reply
                i += 3
            elif opt == b"SETNAME" and i + 1 < len(args):
                i += 2
            else:
                return b"-ERR Syntax error in HELLO option '%s'\r\n" % args[i]
        if not self.authenticated:
            return b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
        self.resp = version
        fields: list[tuple[bytes, bytes]] = [
            (b"server", _bulk(b"redis")),
            (b"version", _bulk(SERVER_VERSION.encode())),
            (b"proto", b":%d\r\n" % version),
            (b"id", b":%d\r\n" % self.connection_id),
            (b"mode", _bulk(b"standalone")),
            (b"role", _bulk(b"master")),
            (b"modules", b"*0\r\n"),
            (b"proxy", _bulk(b"metaprotocol")),
        ]
        head = b"%%%d\r\n" % len(fields) if version == 3 else b"*%d\r\n" % (2 * len(fields))  # noqa: PLR2004
        return head + b"".join(_bulk(k) + v for k, v in fields)

    def _select(self, args: list[bytes]) -> bytes:
        if len(args) != 2:  # noqa: PLR2004
            return _arity("select")
        try:
            db = int(args[1])
        except ValueError:
            return b"-ERR value is not an integer or out of range\r\n"
        if db == self.config.db:
            return OK
        return (
            b"-ERR SELECT is not supported by this proxy: pooled upstream connections use db %d\r\n"
            % self.config.db
        )


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _arity(name: str) -> bytes:
    return f"-ERR wrong number of arguments for '{name}' command\r\n".encode()


def _bounds_of_packed(args: list[bytes]) -> list[int]:
    """Bounds of each argument inside ``pack(args)`` (for inline commands)."""
    bounds = []
    pos = len(b"*%d\r\n" % len(args))
    for a in args:
        pos += len(b"$%d\r\n" % len(a))
        bounds.append(pos)
        bounds.append(pos + len(a))
        pos += len(a) + 2
    return bounds


_NAMES: dict[bytes, tuple[bytes, str, object]] = {}
"""Command name as sent -> (upper-case name, metadata string, key spec); bounded below."""
_MAX_NAMES: Final = 4096


def _name(sent: bytes) -> tuple[bytes, str, object]:
    cached = _NAMES.get(sent)
    if cached is None:
        upper = sent.upper()
        cached = (upper, upper.decode("latin-1"), KEY_SPECS.get(upper))
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[sent] = cached
    return cached


def _short_run(data: bytes | bytearray, pos: int, max_bulk: int) -> tuple[int, int, tuple[bytes, str, object], bytes] | None:
    """Single-key short commands at ``pos``: (end, count, the first one's name entry, its key).

    Each command's declared lengths are checked against its bytes; the run ends before the
    first that fails a check or is not single-key (the exact framer takes it from there)."""
    run_end, commands = short_commands(data, pos)
    if not commands:
        return None
    fields = _SHORT_NAMES
    small = run_end - pos <= max_bulk  # then no argument can exceed max_bulk
    count = 0
    for argc, field, n2, key, n3, value in commands:
        entry = fields.get(field, _UNSEEN)
        if entry is _UNSEEN:
            entry = _short_name_entry(field)
        if (
            entry is None
            or int(n2) != len(key)
            or (argc == b"3") != bool(n3)
            or (n3 and int(n3) != len(value))
            or not (small or (len(key) <= max_bulk and len(value) <= max_bulk))
        ):
            break
        count += 1
    if not count:
        return None
    first = commands[0]
    entry = fields[first[1]]
    assert entry is not None  # noqa: S101 - checked in the loop
    if count == len(commands):
        return run_end, count, entry, first[3]
    return pos + sum(short_command_size(c) for c in commands[:count]), count, entry, first[3]


def _plain_run(data: bytes, pos: int, max_bulk: int) -> tuple[int, int, tuple[bytes, str, object], bytes] | None:
    """Single-key commands at ``pos`` framed by their declared lengths (requests.frame_plain):
    (end, count, the first one's name entry, its key), as _short_run answers.

    Arguments of any length cost the same few operations (long SET values are skipped, not
    scanned); the run ends before the first command that frame_plain does not take or that is
    not single-key."""
    count = 0
    first: tuple[bytes, str, object] | None = None
    key = b""
    while True:
        end, name_start, name_end, key_start, key_end = frame_plain(data, pos, max_bulk)
        if end < 0:
            break
        entry = _name(data[name_start:name_end])
        if entry[2] != SINGLE_KEY:
            break
        if first is None:
            first = entry
            key = data[key_start:key_end]
        count += 1
        pos = end
    if first is None:
        return None
    return pos, count, first, key


_UNSEEN: Final = object()
_SHORT_NAMES: dict[bytes, tuple[bytes, str, object] | None] = {}


def _short_name_entry(field: bytes) -> tuple[bytes, str, object] | None:
    """The name entry of a short command's name field, when its length is right and the command
    single-key (else None); remembered per field (bounded like _NAMES)."""
    name = short_command_name(field)
    entry = _name(name) if name is not None else None
    if entry is not None and entry[2] != SINGLE_KEY:
        entry = None
    if len(_SHORT_NAMES) < _MAX_NAMES:
        _SHORT_NAMES[field] = entry
    return entry


def _single_key(raw: bytes | bytearray, cmd: bytes, name: str, key: bytes) -> Message:
    """A plain single-key request: routed on its command and key, never split."""
    return Message(MessageType.REQUEST, raw, {"command": name, "key": key.decode("utf-8", "surrogateescape")}, opaque=(cmd, None))


def _pipeline(raw: bytes | bytearray, first: str, count: int) -> Message:
    """``count`` plain single-key requests forwarded as one unit (see decode_run)."""
    return Message(MessageType.REQUEST, raw, {"command": first}, opaque=_Pipeline(count))


def _command(raw: bytes | bytearray, data: bytes | bytearray, bounds: list[int]) -> Message:
    """Build the request message: command and key metadata, fan-out parts where they apply."""
    cmd, name, spec = _name(bytes(data[bounds[0] : bounds[1]]))
    argc = len(bounds) >> 1
    if spec == SINGLE_KEY:
        if argc > 1:
            return _single_key(raw, cmd, name, bytes(data[bounds[2] : bounds[3]]))
        return Message(MessageType.REQUEST, raw, {"command": name}, opaque=(cmd, None))
    args = [bytes(data[bounds[i] : bounds[i + 1]]) for i in range(0, len(bounds), 2)]
    args[0] = cmd
    md = {"command": name}
    keys = key_indexes(cmd, argc, args)
    if keys:
        md["key"] = args[keys[0]].decode("utf-8", "surrogateescape")
    msg = Message(MessageType.REQUEST, raw, md, opaque=(cmd, args))
    fanout = FANOUT_COMMANDS.get(cmd)
    if fanout is not None and len(keys) > 1:
        sub, width, _ = fanout
        msg.parts = [
            Message(
                MessageType.REQUEST,
                pack([sub, *args[k : k + width]]),
                {"command": sub.decode(), "key": args[k].decode("utf-8", "surrogateescape")},
                opaque=(sub, None),
            )
            for k in keys
            if k + width <= argc
        ]
    return msg


class RedisClientCodec(ClientCodec):
    """Upstream side: replies in, commands out; the handshake sets protocol, auth and db."""

    def __init__(self, config: RedisConfig, resp: int) -> None:
        self.config = config
        self.resp = resp

    def decode(self, buffer: ReadBuffer) -> DecodeResult:
        """One whole reply, or NEED_DATA. Top-level pushes are EVENTs (they answer no command)."""
        data = buffer.data
        pos = buffer.pos
        if pos >= len(data):
            return NEED_DATA
        if isinstance(data, bytes):
            end, one, _ = scan_plain_replies(data, pos, 1, self.config.max_bulk)
            if not one:
                end = -1
        else:
            end = flat_reply_end(data, pos, self.config.max_bulk)
        if end < 0:
            end = scan_reply(data, pos, self.config.max_bulk)
            if end == INCOMPLETE:
                return NEED_DATA
        buffer.pos = end
        first = data[pos]
        if first in _ERROR_BYTES:
            mtype = MessageType.ERROR
        elif first == _PUSH:
            mtype = MessageType.EVENT
        else:
            mtype = MessageType.RESPONSE
        return Message(mtype, data[pos:end])

    def frame_replies(self, buffer: ReadBuffer, limit: int) -> tuple[int, int]:
        """Scan up to ``limit`` replies without building messages; stops before a push."""
        data = buffer.data
        pos = buffer.pos
        end = len(data)
        max_bulk = self.config.max_bulk
        count = errors = 0
        while count < limit and pos < end:
            if isinstance(data, bytes):
                pos, flat, flat_errors = scan_plain_replies(data, pos, limit - count, max_bulk)
            else:
                pos, flat, flat_errors = scan_flat_replies(data, pos, limit - count, max_bulk)
            if flat:
                count += flat
                errors += flat_errors
                continue
            first = data[pos]
            if first == _PUSH:
                break
            stop = scan_reply(data, pos, max_bulk)
            if stop == INCOMPLETE:
                break
            if first in _ERROR_BYTES:
                errors += 1
            pos = stop
            count += 1
        buffer.pos = pos
        return count, errors

    def encode(
        self, request: Message, mutation: Mutation | None = None, request_id: int | None = None
    ) -> bytes | bytearray:
        """Commands pass through unchanged."""
        return request.raw

    def health_check_request(self) -> bytes | None:
        """PING (after the handshake, so that a server needing AUTH is probed as traffic sees it)."""
        return pack([b"PING"])

    def handshake(self) -> list[bytes]:
        """HELLO 3 / AUTH / SELECT as the profile and config require."""
        cfg = self.config
        out = []
        user = cfg.upstream_username or b"default"
        if self.resp == 3:  # noqa: PLR2004
            args = [b"HELLO", b"3"]
            if cfg.upstream_password is not None:
                args += [b"AUTH", user, cfg.upstream_password]
            out.append(pack(args))
        elif cfg.upstream_password is not None:
            args = [b"AUTH", cfg.upstream_password]
            if cfg.upstream_username is not None:
                args = [b"AUTH", user, cfg.upstream_password]
            out.append(pack(args))
        if cfg.db:
            out.append(pack([b"SELECT", str(cfg.db).encode()]))
        return out


class RedisCodecFactory(CodecFactory):
    """Entry point ``redis``: RESP2/RESP3 on the ordered correlation mode."""

    name = "redis"
    aliases = ("envoy.filters.network.redis_proxy",)
    correlation = Correlation.ORDERED
    supports_mutation = False
    default_hash_policy = ("key",)

    def __init__(self, config: Mapping[str, object] | None = None) -> None:
        super().__init__(config)
        self.settings = RedisConfig(self.config)
        self.bound_upstream = self.settings.mode == "bound"

    def server_codec(self) -> RedisServerCodec:
        """A codec for one client connection."""
        return RedisServerCodec(self.settings)

    def client_codec(self, profile: Hashable = None) -> RedisClientCodec:
        """A codec for one upstream connection speaking RESP ``profile`` (2 or 3)."""
        return RedisClientCodec(self.settings, profile if isinstance(profile, int) else 2)
