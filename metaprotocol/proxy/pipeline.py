"""Forwarded pipelines: when a listener's compiled chain decides nothing per request
(``Chain.forwards_pipelines``), a run of plain requests from one read goes upstream as one unit:
one pass through the chain, one upstream write, one completion with the replies' bytes.

Only the grouping differs from ``DownstreamSession._process``: each unit still enters the one
request path (``DownstreamSession.request``), so every stage of the chain applies to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.proxy.context import Pending
from metaprotocol.spi import NEED_DATA, Message, MessageType, RemoteProtocolError

if TYPE_CHECKING:
    from metaprotocol.proxy.chain import Chain
    from metaprotocol.proxy.session import DownstreamSession


def forward_pipelines(session: DownstreamSession, chain: Chain, now: float) -> None:
    """Decode what ``session`` read, sending each run of plain requests as one unit (the codec's
    ``decode_run`` frames a run without a message per request; ``batch`` joins decoded ones)."""
    codec = session.codec
    buffer = session.buffer
    run: list[Message] = []
    while not session.read_paused and not session.closing and buffer.pos < len(buffer.data):
        try:
            unit = codec.decode_run(buffer)
            if unit is not None:
                _send_run(session, chain, run, now)
                _send(session, chain, unit[0], unit[1], now)
                continue
            msg = codec.decode(buffer)
        except RemoteProtocolError as exc:
            _send_run(session, chain, run, now)
            if session.decode_failed(exc, now):
                continue
            return
        if msg is NEED_DATA:
            break
        assert isinstance(msg, Message)  # noqa: S101 - narrows the sentinel for mypy
        if msg.type is MessageType.REQUEST and not msg.parts:
            answer = codec.answer_locally(msg)
            if answer is None:
                if run or buffer.pos < len(buffer.data):
                    run.append(msg)
                else:  # alone in its read (no pipelining)
                    _send(session, chain, msg, 1, now)
                continue
            _send_run(session, chain, run, now)
            session.answered_locally(msg, answer, now)
        else:
            _send_run(session, chain, run, now)
            session.on_message(msg, chain, now)
    _send_run(session, chain, run, now)


def _send_run(session: DownstreamSession, chain: Chain, run: list[Message], now: float) -> None:
    """Send the plain requests gathered so far (as one unit where the codec can) and empty ``run``."""
    if not run:
        return
    if len(run) == 1 or (batch := session.codec.batch(run)) is None:
        for msg in run:
            _send(session, chain, msg, 1, now)
    else:
        _send(session, chain, batch, len(run), now)
    run.clear()


def _send(session: DownstreamSession, chain: Chain, msg: Message, count: int, now: float) -> None:
    """``msg`` standing for ``count`` requests enters the request path; one pending entry answers all."""
    p = Pending(session, msg, now)
    if count > 1:
        p.count = p.batch_left = count
    session.request(p, chain, now)
