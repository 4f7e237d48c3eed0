"""Evaluation arithmetic (pure): scoring rules, per-category quality and retention, and the routing threshold.

Quality is on 0-1; gaps are reported in points (hundredths). A routing threshold t sends an
answer to the teacher when the student's confidence is below t.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

from ..cache.segment import HAN
from .filters import parse_json_answer
from .reasoning import split_reasoning

EXACT, JSON, JUDGE, LABEL = "exact", "json", "judge", "label"
SHORT_ANSWER_WORDS = 5
"""References this short are checked by exact match; longer ones need a judge."""
AGREE_AT = 0.5
MAX_LABELS = 8
"""A category whose references take at most this many values, each seen twice on average, is a label task."""


# Chinese punctuation that NFKC leaves as it is (。 、 「」 and the like), stripped like ASCII's.
_CJK_PUNCTUATION = "。、「」『』【】《》〈〉〔〕…—·～"
_WORD_OR_HAN_RUN = re.compile(rf"([{HAN}]+)|\d+(?:\.\d+)?|[^\W_{HAN}]+", re.UNICODE)


def normalize(text: str) -> str:
    """NFKC, lower case, no reasoning block, single spaces, no surrounding punctuation or quotes (Chinese too)."""
    _, answer = split_reasoning(text)
    answer = " ".join(unicodedata.normalize("NFKC", answer).lower().split())
    return answer.strip(string.punctuation + _CJK_PUNCTUATION + " \"'`“”‘’")


def answer_words(text: str) -> list[str]:
    """The words of an answer: English words and numbers, and Chinese runs cut into words, so that a
    Chinese answer, written without spaces, is not one "word"."""
    from ..cache.segment import chinese_words

    words: list[str] = []
    for match in _WORD_OR_HAN_RUN.finditer(normalize(text)):
        words.extend(chinese_words(match.group(0)) if match.group(1) else [match.group(0)])
    return words


def rule_for(reference: str, fmt: str = "text") -> str:
    """How an answer to this reference is scored: json equality, exact match for short ones, else a judge."""
    if fmt == "json":
        return JSON
    return EXACT if len(answer_words(reference)) <= SHORT_ANSWER_WORDS else JUDGE


def token_f1(reference: str, answer: str) -> float:
    """Word-overlap F1: the stand-in for a judge when none is configured."""
    ref, ans = answer_words(reference), answer_words(answer)
    if not ref or not ans:
        return float(ref == ans)
    common = sum(min(ref.count(w), ans.count(w)) for w in set(ans))
    if common == 0:
        return 0.0
    precision, recall = common / len(ans), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def label_set(references: Sequence[str], fmt: str = "text") -> frozenset[str] | None:
    """The allowed answers of a category whose references come from a small set of short one-line labels
    ("positive"/"negative"), else None. Labels must repeat, so a handful of distinct short facts
    ("Paris", "Rome") is not mistaken for a label set."""
    labels = frozenset(r.strip() for r in references)
    if fmt == "json" or not labels or len(labels) > MAX_LABELS or len(references) < 2 * len(labels):
        return None
    if any(not label or "\n" in label or len(label.split()) > SHORT_ANSWER_WORDS for label in labels):
        return None
    return labels


def off_label(answer: str, labels: frozenset[str]) -> bool:
    """An answer that, stripped (and past any reasoning block), is none of the allowed labels: a
    consumer parsing the label gets nothing usable from it, e.g. "positive\npositive"."""
    return split_reasoning(answer)[1].strip() not in labels


def rule_score(rule: str, reference: str, answer: str, labels: frozenset[str] | None = None) -> float | None:
    """0-1 by rule; None for the judge rule (the caller asks the judge, or falls back to `token_f1`).

    The label rule needs `labels`: an answer is right only when it is one of them, exactly, and
    matches the reference; normalising alone would let "positive\npositive" pass as "positive positive".
    """
    if rule == LABEL:
        if labels is None:
            raise ValueError("the label rule needs the category's labels")
        return 0.0 if off_label(answer, labels) else float(normalize(reference) == normalize(answer))
    if rule == EXACT:
        return float(normalize(reference) == normalize(answer))
    if rule == JSON:
        try:
            return float(parse_json_answer(reference) == parse_json_answer(split_reasoning(answer)[1]))
        except ValueError:
            return 0.0
    return None


@dataclass(frozen=True)
class ItemResult:
    """One held-out prompt: how student and teacher did, how sure the student was, what the teacher cost."""

    category: str
    student_quality: float
    teacher_quality: float
    agreed: bool
    confidence: float
    teacher_cost_usd: float
    off_label: bool = False
    """The student's answer was none of the category's labels (label tasks only); scored wrong."""


@dataclass(frozen=True)
class CategoryScore:
    category: str
    n: int
    student: float
    teacher: float
    retention: float | None
    gap_points: float
    flagged: bool
    agreement: float
    off_label: int = 0
    """Student answers that were none of the category's labels (each also counted wrong)."""


def _score(category: str, items: Sequence[ItemResult], gap_points: float) -> CategoryScore:
    n = len(items)
    student = sum(i.student_quality for i in items) / n
    teacher = sum(i.teacher_quality for i in items) / n
    gap = (teacher - student) * 100
    return CategoryScore(
        category=category, n=n, student=student, teacher=teacher,
        retention=student / teacher if teacher > 0 else None, gap_points=gap, flagged=gap > gap_points,
        agreement=sum(i.agreed for i in items) / n, off_label=sum(i.off_label for i in items),
    )


def summarize(items: Sequence[ItemResult], gap_points: float = 5.0) -> tuple[list[CategoryScore], CategoryScore]:
    """(per category, overall): quality of each side, retention (student / teacher), flags over `gap_points`."""
    if not items:
        raise ValueError("nothing to summarize: no evaluated items")
    groups: dict[str, list[ItemResult]] = defaultdict(list)
    for item in items:
        groups[item.category].append(item)
    per = [_score(c, groups[c], gap_points) for c in sorted(groups)]
    return per, _score("overall", items, gap_points)


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    teacher_share: float
    cost_usd: float
    quality: float


def threshold_curve(items: Sequence[ItemResult]) -> list[CurvePoint]:
    """Quality and teacher spend for every threshold that changes the routing, from "never ask" to "always ask"."""
    if not items:
        return []
    cuts = sorted({0.0, *(i.confidence for i in items)})
    # Just above the most confident answer: everything goes to the teacher.
    cuts.append(min(1.0, max(i.confidence for i in items) + 1e-9) if max(i.confidence for i in items) < 1.0 else 1.0 + 1e-9)
    points = []
    n = len(items)
    for cut in cuts:
        to_teacher = [i for i in items if i.confidence < cut]
        quality = sum(i.teacher_quality if i.confidence < cut else i.student_quality for i in items) / n
        points.append(CurvePoint(cut, len(to_teacher) / n, sum(i.teacher_cost_usd for i in to_teacher), quality))
    return points


def recommend_threshold(points: Sequence[CurvePoint], target: float) -> CurvePoint | None:
    """The cheapest threshold whose quality meets `target` (ties: the better quality); None if none does."""
    meeting = [p for p in points if p.quality >= target - 1e-12]
    if not meeting:
        return None
    return min(meeting, key=lambda p: (p.cost_usd, p.teacher_share, -p.quality))


