"""Near-duplicate prompts: neighbours by embedding similarity (the cache's embedder and FAISS), each
confirmed by the cache's own check that two questions ask the same thing (`cache.verify`), so that
"planet number 1" and "planet number 2" stay two questions however close they embed.

Duplicates waste teacher money, overweight one question in training, and leak held-out
questions into the training set; the first of each group is kept, in dataset order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from .records import Record


class Embeds(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class Duplicate:
    index: int
    """Position of the dropped item."""
    of: int
    """Position of the kept item it repeats."""
    similarity: float


def near_duplicates(vectors: np.ndarray, threshold: float,
                    same: Callable[[int, int], bool] = lambda i, j: True, k: int = 32) -> list[Duplicate]:
    """Items whose unit vector is at least `threshold` cosine-similar to one of the `k` nearest earlier
    kept items for which `same(item, kept item)` confirms it."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) == 0:
        return []
    index = faiss.IndexFlatIP(vectors.shape[1])
    kept: list[int] = []  # faiss row -> item position
    found: list[Duplicate] = []
    for position, vector in enumerate(vectors):
        if kept:
            scores, rows = index.search(vector[None, :], min(k, len(kept)))
            match = next(((kept[int(r)], float(s)) for s, r in zip(scores[0], rows[0])
                          if r >= 0 and s >= threshold and same(position, kept[int(r)])), None)
            if match is not None:
                found.append(Duplicate(position, match[0], match[1]))
                continue
        index.add(vector[None, :])
        kept.append(position)
    return found


def prompt_text(record: Record) -> str:
    """What is compared: earlier turns and the prompt. The persona is matched exactly instead (see below)."""
    turns = " ".join(m.get("content", "") for m in record.history)
    return " \n".join(part for part in (turns, record.prompt) if part)


def dedup_records(
    records: Sequence[Record], embedder: Embeds, threshold: float
) -> tuple[list[Record], list[tuple[Record, Record, float]]]:
    """(kept, [(dropped, the kept record it repeats, similarity)]).

    Only records with the same persona are compared: one long persona shared by every prompt
    would otherwise make all of them look alike, and one question asked of two personas is two.
    """
    if not records:
        return [], []
    from ..cache.embedder import span_similarity
    from ..cache.verify import check_match

    texts = [prompt_text(r) for r in records]
    vectors = embedder.embed(texts)
    spans = span_similarity(embedder)
    groups: dict[str, list[int]] = {}
    for position, record in enumerate(records):
        groups.setdefault(record.role or "", []).append(position)
    pairs: list[tuple[int, int, float]] = []
    for positions in groups.values():
        def same(i: int, j: int, positions: list[int] = positions) -> bool:
            return check_match(texts[positions[i]], texts[positions[j]], spans).ok

        for duplicate in near_duplicates(vectors[positions], threshold, same):
            pairs.append((positions[duplicate.index], positions[duplicate.of], duplicate.similarity))
    dropped_at = {index for index, _, _ in pairs}
    kept = [r for i, r in enumerate(records) if i not in dropped_at]
    return kept, [(records[i], records[of], similarity) for i, of, similarity in sorted(pairs)]
