"""Turning a token stream into text: incremental UTF-8 and stop sequences held back while they may still match."""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from .types import TokenEvent


class Utf8Stream:
    """Decodes token bytes as they come; a character split across tokens is released when complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """What is left when the answer ends. A character cut short there (the token budget ran out between
        its bytes) is dropped, not sent as U+FFFD: the finish reason already says the answer was cut."""
        pending, _ = self._decoder.getstate()
        self._decoder.reset()
        return "" if pending else self._decoder.decode(b"", final=True)


@dataclass
class StopMatcher:
    """Releases text only once it cannot be the start of a stop sequence.

    `feed()` returns (text safe to emit, whether a stop sequence was hit). After a hit the
    stop sequence itself and anything after it is never emitted, as OpenAI does.
    """

    stops: tuple[str, ...]
    _pending: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        buffer = self._pending + text
        if not self.stops:
            self._pending = ""
            return buffer, False
        hits = [i for i in (buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._pending = ""
            return buffer[: min(hits)], True
        hold = self._longest_partial_suffix(buffer)
        self._pending = buffer[len(buffer) - hold:] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Text still held when generation ended without completing a stop sequence."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending

    def _longest_partial_suffix(self, buffer: str) -> int:
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best


@dataclass
class TextDelta:
    """Text released by one token (possibly empty) and the token that released it."""

    text: str
    token: TokenEvent | None


class TextAssembler:
    """Token events in, text deltas out: joins split UTF-8 characters and cuts at stop sequences."""

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._utf8 = Utf8Stream()
        self._stops = StopMatcher(stops)
        self.text = ""

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def feed(self, token: TokenEvent) -> TextDelta:
        released, _ = self._stops.feed(self._utf8.feed(token.raw))
        self.text += released
        return TextDelta(released, token)

    def finish(self) -> TextDelta:
        tail, _ = self._stops.feed(self._utf8.flush())
        tail += self._stops.flush()
        self.text += tail
        return TextDelta(tail, None)

