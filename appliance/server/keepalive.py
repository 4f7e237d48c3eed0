"""SSE comments while an answer is silent, so that proxies and clients do not give up on it.

A held answer (the router deciding on its first tokens, the teacher thinking) can send nothing for
many seconds; nginx, Caddy and many HTTP clients close a response that is silent for a minute. An
SSE comment line (`: ...`) is ignored by every conforming reader and keeps the bytes flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

KEEPALIVE = b": keep-alive\n\n"


async def with_keepalive(chunks: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """`chunks` as they come, with a comment after every `interval_s` without one.

    The pending read is never cancelled by the timer (cancelling an async generator mid-step would end
    it): it is waited on again after each comment. Closing this closes `chunks`.
    """
    pending: asyncio.Task[bytes] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield chunk
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
