"""Stratified train / held-out split by category, and label balancing (pure, seeded, independent of input order)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from .records import Record


def heldout_count(n: int, fraction: float) -> int:
    """How many of a category's `n` records to hold out: the rounded share, but at least one
    when the category has two or more (every category gets measured) and never all of them."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def stratified_split(records: Sequence[Record], fraction: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, heldout): each category split on its own, so both sets keep the categories' proportions."""
    by_category: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_category[record.category].append(record)
    train: list[Record] = []
    heldout: list[Record] = []
    for category in sorted(by_category):
        # Sorted by content first: the same records give the same split whatever order they came in.
        group = sorted(by_category[category], key=lambda r: (r.key, r.content_hash))
        random.Random(f"{seed}:{category}").shuffle(group)
        cut = heldout_count(len(group), fraction)
        heldout.extend(group[:cut])
        train.extend(group[cut:])
    return train, heldout


def balance_labels(records: Sequence[Record], max_factor: int, seed: int = 0) -> list[Record]:
    """`records` with the rarer answers of each label category repeated towards the commonest one's count
    (each record at most `max_factor` times in all), so a student cannot lower its loss by answering the
    majority label whatever it reads. Open-answer categories are left as they are."""
    from .metrics import label_set

    by_category: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_category[record.category].append(record)
    out = list(records)
    for category in sorted(by_category):
        group = by_category[category]
        labels = label_set([r.answer for r in group])
        if labels is None or max_factor <= 1:
            continue
        by_label: dict[str, list[Record]] = defaultdict(list)
        for record in group:
            by_label[record.answer.strip()].append(record)
        most = max(len(members) for members in by_label.values())
        for label in sorted(by_label):
            members = sorted(by_label[label], key=lambda r: (r.key, r.content_hash))
            random.Random(f"{seed}:{category}:{label}").shuffle(members)
            extra = min(most, len(members) * max_factor) - len(members)
            out.extend(members[i % len(members)] for i in range(extra))
    return out
