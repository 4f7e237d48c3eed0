"""One log line per request (id, caller, method, path, status, route, duration), for the journal.

The line is written when the answer is complete: for a streamed answer that is when its last
chunk went out, so the duration and the route (known only once the router has decided) are real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from .http import Handler, HttpRequest, HttpResponse

log = logging.getLogger("athanor.access")

class AccessLog:
    """Wraps a handler and logs each request it answers at INFO."""

    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        try:
            response = await self.inner(request)
        except asyncio.CancelledError:
            _log(request, "cancelled", started)
            raise
        except Exception:
            _log(request, "500", started)  # the server turns it into a 500 and logs the traceback
            raise
        if response.stream is None:
            _log(request, str(response.status), started)
        else:
            response.stream = _logged(response.stream, request, response.status, started)
        return response


async def _logged(
    stream: AsyncIterator[bytes], request: HttpRequest, status: int, started: float
) -> AsyncIterator[bytes]:
    outcome = str(status)
    try:
        async for chunk in stream:
            yield chunk
    except (asyncio.CancelledError, GeneratorExit):
        outcome = f"{status} cancelled"  # the client left mid-stream
        raise
    except Exception:
        outcome = f"{status} failed"
        raise
    finally:
        close = getattr(stream, "aclose", None)
        if close is not None:
            await close()
        _log(request, outcome, started)


def _log(request: HttpRequest, status: str, started: float) -> None:
    uid = request.peer.uid if request.peer is not None else "-"
    log.info("%s uid=%s %s %s %s route=%s %.3fs", request.request_id, uid, request.method, request.path, status,
             request.notes.route or "-", time.monotonic() - started)
