"""How well a score separates right answers from wrong ones, and what routing by it costs (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def auroc(scores: Sequence[float], right: Sequence[bool]) -> float:
    """P(a right answer scores above a wrong one); ties count half. NaN without both kinds."""
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    if not pos or not neg:
        return float("nan")
    ranked = sorted((s, r) for s, r in zip(scores, right))
    # Rank-sum (Mann-Whitney) with average ranks for ties: O(n log n).
    ranks: list[float] = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(rank for rank, (_, r) in zip(ranks, ranked) if r)
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


@dataclass(frozen=True)
class Operating:
    threshold: float
    teacher_share: float
    """Share of questions sent to the teacher (score under the threshold)."""
    wrong_kept: float
    """Share of wrong answers among those the student keeps."""
    quality: float
    """Share of right answers served, the teacher counted right."""


def operating_points(scores: Sequence[float], right: Sequence[bool]) -> list[Operating]:
    """Every distinct threshold, from keeping all answers to keeping none."""
    n = len(scores)
    points = []
    for t in sorted(set(scores)) + [float("inf")]:
        kept = [r for s, r in zip(scores, right) if s >= t]
        wrong = sum(1 for r in kept if not r)
        points.append(Operating(t, 1 - len(kept) / n, wrong / len(kept) if kept else 0.0,
                                (sum(kept) + (n - len(kept))) / n))
    return points


def cheapest(points: Sequence[Operating], max_wrong_kept: float) -> Operating:
    """The lowest teacher share whose kept answers are at most `max_wrong_kept` wrong."""
    ok = [p for p in points if p.wrong_kept <= max_wrong_kept]
    return min(ok, key=lambda p: (p.teacher_share, -p.threshold))


def pre_route_threshold(scores: Sequence[float], right: Sequence[bool], max_right_share: float) -> float:
    """The highest threshold under which at most `max_right_share` of the questions sent straight to the
    teacher would have been answered right by the student (teacher money spent in vain); 0 sends none."""
    best = 0.0
    for t in sorted(set(scores)):
        sent = [r for s, r in zip(scores, right) if s < t]
        if sent and sum(sent) / len(sent) <= max_right_share:
            best = t
    return best
