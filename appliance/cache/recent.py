"""The last few question embeddings, so that a lookup followed by a put of the same prompt embeds once."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import numpy as np

_RECENT_VECTORS = 64  # lookup-then-put of the same prompt embeds once


class RecentEmbeddings:
    """A small LRU of prompt -> float32 vector in front of an embed function; thread-safe.

    Embedding runs outside the lock (the embedder serialises itself), so two threads embedding the same
    new prompt both compute it and the later one is kept.
    """

    def __init__(self, embed: Callable[[list[str]], np.ndarray], size: int = _RECENT_VECTORS) -> None:
        self._embed = embed
        self._size = size
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, prompt: str) -> np.ndarray:
        with self._lock:
            cached = self._recent.get(prompt)
            if cached is not None:
                self._recent.move_to_end(prompt)
                return cached
        vector = np.ascontiguousarray(self._embed([prompt])[0], dtype=np.float32)
        with self._lock:
            self._recent[prompt] = vector
            while len(self._recent) > self._size:
                self._recent.popitem(last=False)
        return vector
