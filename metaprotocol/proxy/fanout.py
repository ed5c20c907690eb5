"""Scatter-gather requests: a request the codec split into parts (Redis MGET over shards) is sent
part by part when the parts go to different upstreams, and answered with the codec's merge of
their replies once the last arrives. Parts are Pendings of their own with ``parent`` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metaprotocol.proxy.context import Failure, Pending
from metaprotocol.spi import ErrorKind, MetaProtocolError

if TYPE_CHECKING:
    from metaprotocol.proxy.routing import RouterStage
    from metaprotocol.proxy.session import DownstreamSession
    from metaprotocol.spi import Message


def split(router: RouterStage, session: DownstreamSession, p: Pending, parts: list[Message], now: float) -> bool:
    """Send the parts of ``p`` separately; False (nothing sent) when they all share one upstream,
    so that the request goes whole."""
    targets = []
    for part in parts:
        target = router.resolve(part)
        if isinstance(target, Failure):
            session.fail_with(p, target)
            return True
        targets.append(target)
    first = targets[0]
    if all(t[1] == first[1] and t[2] == first[2] for t in targets):
        return False
    ctx = session.ctx
    ctx.stats.fanout_requests += 1
    p.parts_left = len(parts)
    p.part_replies = [None] * len(parts)
    for i, (part, target) in enumerate(zip(parts, targets, strict=True)):
        child = Pending(session, part, now)
        child.parent = p
        child.part_index = i
        router.upstreams.send(ctx, child, part, target, now, oneway=False)
        if p.done:  # a part failed at once: the request is answered
            break
    return True


def part_replied(session: DownstreamSession, part: Pending, response: Message) -> None:
    """A part's reply: kept until the last, then merged into the parent's reply."""
    part.done = True
    parent = part.parent
    assert parent is not None  # noqa: S101 - only parts come here
    if parent.done:
        return
    replies = parent.part_replies
    assert replies is not None  # noqa: S101
    replies[part.part_index] = response
    parent.parts_left -= 1
    if parent.parts_left:
        return
    try:
        merged = session.codec.merge(parent.request, [r for r in replies if r])
    except MetaProtocolError as exc:
        session.local_error(parent, ErrorKind.BAD_RESPONSE, str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - a codec bug: this request fails, nothing else
        session.codec_bug(exc)
        session.local_error(parent, ErrorKind.INTERNAL, "internal error")
        return
    session.finish(parent, merged)


def part_failed(session: DownstreamSession, part: Pending, kind: ErrorKind, message: str) -> None:
    """A part failed: the whole request fails with its error (once)."""
    part.done = True
    parent = part.parent
    assert parent is not None  # noqa: S101 - only parts come here
    if not parent.done:
        session.local_error(parent, kind, message)
