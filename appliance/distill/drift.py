"""Categories for the questions the daemon logged, and the recent traffic the retrain gate measures on.

Logged questions carry no category of their own. They are grouped by what they ask: first by
language, then by k-means over their sentence embeddings (the cache's embedder, k chosen by the
silhouette), each group named
after its most central question, so that a report line reads "en: What is the capital of…" rather
than "cluster 3". The held-out set is then drawn per category, and the gate measures the newest
traffic per category beside it, so that a retrain that helps the old questions and hurts this
week's shows it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Protocol, Sequence

import numpy as np

from ..cache.segment import has_han
from .records import Record

MAX_CLUSTERS = 8
"""Per language: enough to tell apart arithmetic from recipes, few enough that each is measured."""
MIN_PER_CLUSTER = 10
"""A category smaller than this measures nothing (one answer moves it by 10%)."""
NAME_CHARS = 40


class Embeds(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


def language(text: str) -> str:
    return "zh" if has_han(text) else "en"


SILHOUETTE_SAMPLE = 1000
"""Questions the silhouette is measured on (its cost grows with the square of this)."""
MIN_SILHOUETTE = 0.1
"""Below this mean silhouette the groups are not real: the language stays one category."""


def cluster_count(n: int) -> int:
    """The most groups `n` questions of one language may be split into: about sqrt(n/2), each of at least
    MIN_PER_CLUSTER questions, at most MAX_CLUSTERS."""
    return max(1, min(MAX_CLUSTERS, n // MIN_PER_CLUSTER, round(math.sqrt(n / 2))))


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette under cosine distance: how much nearer each question is to its own group than to
    the next one (1: apart, 0: no structure)."""
    distance = 1.0 - vectors @ vectors.T
    groups = sorted(set(labels.tolist()))
    if len(groups) < 2:
        return 0.0
    mean_to = np.stack([distance[:, labels == g].mean(axis=1) for g in groups], axis=1)
    sizes = np.array([(labels == g).sum() for g in groups])
    own = np.searchsorted(groups, labels)
    n_own = sizes[own]
    # Own-group mean without the point itself (its distance to itself is 0).
    a = np.where(n_own > 1, mean_to[np.arange(len(labels)), own] * n_own / np.maximum(n_own - 1, 1), 0.0)
    mean_to[np.arange(len(labels)), own] = np.inf
    b = mean_to.min(axis=1)
    score = np.where(n_own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(score.mean())


def choose_groups(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Labels for the k, up to `cluster_count`, whose clustering has the best silhouette; one group when none
    reaches MIN_SILHOUETTE. Measured rather than fixed: a fixed k splits one topic in two as readily as it
    separates two."""
    n = len(vectors)
    best, best_score = np.zeros(n, dtype=np.int64), MIN_SILHOUETTE
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, SILHOUETTE_SAMPLE, replace=False)) if n > SILHOUETTE_SAMPLE else np.arange(n)
    for k in range(2, cluster_count(n) + 1):
        labels = kmeans(vectors, k, seed)
        score = silhouette(vectors[sample], labels[sample])
        if score > best_score:
            best, best_score = labels, score
    return best


def kmeans(vectors: np.ndarray, k: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """Cluster labels of unit vectors by spherical k-means (k-means++ seeding, seeded: the same log
    gives the same categories)."""
    n = len(vectors)
    if k <= 1 or n <= k:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = [vectors[int(rng.integers(n))]]
    for _ in range(1, k):
        distance = np.min(1.0 - vectors @ np.stack(centres).T, axis=1).clip(min=0.0)
        total = float(distance.sum())
        pick = int(rng.choice(n, p=distance / total)) if total > 0 else int(rng.integers(n))
        centres.append(vectors[pick])
    centre = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        labels = np.argmax(vectors @ centre.T, axis=1)
        for c in range(k):
            members = vectors[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                centre[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
    return labels


def _name(lang: str, questions: Sequence[str], vectors: np.ndarray) -> str:
    """The group's most central question (nearest its mean), clipped: what the group asks, in its own words."""
    mean = vectors.mean(axis=0)
    central = " ".join(questions[int(np.argmax(vectors @ mean))].split())
    clipped = central if len(central) <= NAME_CHARS else central[:NAME_CHARS - 1] + "…"
    return f"{lang}: {clipped}"


def categorize(records: Sequence[Record], embedder: Embeds, seed: int = 0) -> list[Record]:
    """`records` with their category set to the group of questions they belong to (order kept)."""
    out = list(records)
    by_language: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_language.setdefault(language(record.prompt), []).append(i)
    for lang, indices in sorted(by_language.items()):
        questions = [records[i].prompt for i in indices]
        vectors = np.asarray(embedder.embed(questions), dtype=np.float32)
        labels = choose_groups(vectors, seed)
        names = {int(c): _name(lang, [q for q, lab in zip(questions, labels) if lab == c], vectors[labels == c])
                 for c in set(labels.tolist())}
        for i, label in zip(indices, labels):
            out[i] = replace(records[i], category=names[int(label)])
    return out


def recent_count(n: int, share: float, cap: int) -> int:
    """How many of the newest records the gate measures on instead of training on: `share` of them, at
    most `cap`, none when too few are left to train on."""
    if n < 2 * MIN_PER_CLUSTER or share <= 0:
        return 0
    return min(cap, max(MIN_PER_CLUSTER, round(n * share)))
