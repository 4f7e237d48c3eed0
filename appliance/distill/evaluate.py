"""`athanor evaluate`: student against teacher on held-out prompts, per category, and the routing threshold.

The reference answer of a record is its `expected` answer when the prompt file gave one, else the
teacher's harvested answer. `--teacher` re-asks a live teacher (or runs a local model) instead of
reusing the harvested answers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..routing.confidence import confidence
from ..teacher import Teacher, TeacherError, TeacherParams
from .judge import grade
from .metrics import (AGREE_AT, LABEL, CategoryScore, CurvePoint, ItemResult, label_set, off_label,
                      recommend_threshold, rule_for, rule_score, summarize, threshold_curve, token_f1)
from .records import Record
from .students import Runner

EVALUATION_FILE = "evaluation.json"
CURVE_PNG = "cost_quality.png"


@dataclass(frozen=True)
class EvalSettings:
    max_tokens: int = 64
    gap_points: float = 5.0
    target_quality: float = 0.95
    confidence_quantile: float = 0.1


@dataclass
class Evaluation:
    items: list[ItemResult]
    categories: list[CategoryScore]
    overall: CategoryScore
    curve: list[CurvePoint]
    recommended: CurvePoint | None
    target_quality: float
    judge: str
    """Who scored open answers: a judge model's name, or "token-f1" when none was available."""
    answers: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, list[str]] = field(default_factory=dict)
    """The allowed answers of each label-task category (see `metrics.label_set`)."""

    @property
    def agreement(self) -> float:
        return self.overall.agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": asdict(self.overall),
            "categories": [asdict(c) for c in self.categories],
            "flagged": [c.category for c in self.categories if c.flagged],
            "recommended_threshold": asdict(self.recommended) if self.recommended else None,
            "target_quality": self.target_quality,
            "curve": [asdict(p) for p in self.curve],
            "judge": self.judge,
            "labels": self.labels,
            "answers": self.answers,
        }


class _Scorer:
    def __init__(self, judge: Teacher | None) -> None:
        self.judge = judge

    async def __call__(self, rule: str, prompt: str, reference: str, answer: str,
                       labels: frozenset[str] | None = None) -> float:
        by_rule = rule_score(rule, reference, answer, labels)
        if by_rule is not None:
            return by_rule
        if self.judge is not None:
            graded = await grade(self.judge, prompt, reference, answer)
            if graded is not None:
                return graded
        return token_f1(reference, answer)


async def _teacher_answer(teacher: Teacher | Runner | None, record: Record, max_tokens: int) -> tuple[str, float]:
    if teacher is None:
        return record.answer, record.cost_usd
    if hasattr(teacher, "complete"):
        try:
            reply = await teacher.complete(record.messages(), TeacherParams(max_tokens=max_tokens, temperature=0.0))
        except TeacherError as exc:
            return f"(teacher failed: {exc})", 0.0
        return reply.text, reply.cost_usd
    local = await asyncio.to_thread(teacher.answer, record.messages(), max_tokens)
    return local.text, record.cost_usd  # a local teacher is free; keep the cloud's price as the routing cost


async def evaluate(
    records: Sequence[Record],
    student: Runner,
    settings: EvalSettings,
    teacher: Teacher | Runner | None = None,
    judge: Teacher | None = None,
    on_item: Callable[[ItemResult], None] = lambda item: None,
) -> Evaluation:
    """Run the student (and the teacher, if given) on every record and score both."""
    score = _Scorer(judge)
    items: list[ItemResult] = []
    answers: list[dict[str, Any]] = []
    references: dict[tuple[str, str], list[str]] = {}
    for record in records:
        references.setdefault((record.category, record.format), []).append(record.expected or record.answer)
    labels = {key: label_set(refs, key[1]) for key, refs in references.items()}
    for record in records:
        local = await asyncio.to_thread(student.answer, record.messages(), settings.max_tokens)
        sure = confidence(list(local.logprobs), settings.confidence_quantile).score
        teacher_text, cost = await _teacher_answer(teacher, record, settings.max_tokens)
        reference = record.expected or record.answer
        allowed = labels[record.category, record.format]
        rule = LABEL if allowed else rule_for(reference, record.format)
        student_quality = await score(rule, record.prompt, reference, local.text, allowed)
        teacher_quality = (1.0 if teacher_text == reference
                           else await score(rule, record.prompt, reference, teacher_text, allowed))
        agreement = await score(rule, record.prompt, teacher_text, local.text, allowed)
        strayed = allowed is not None and off_label(local.text, allowed)
        item = ItemResult(record.category, student_quality, teacher_quality, agreement >= AGREE_AT, sure, cost, strayed)
        items.append(item)
        answers.append({"prompt": record.prompt, "category": record.category, "reference": reference,
                        "teacher": teacher_text, "student": local.text, "confidence": round(sure, 6),
                        "student_quality": student_quality, "teacher_quality": teacher_quality,
                        "agreed": item.agreed, "off_label": strayed, "signals": local.signals,
                        "early_signals": local.early_signals})
        on_item(item)
    per, overall = summarize(items, settings.gap_points)
    curve = threshold_curve(items)
    judge_name = getattr(judge, "name", None) or "token-f1"
    return Evaluation(items, per, overall, curve, recommend_threshold(curve, settings.target_quality),
                      settings.target_quality, judge_name, answers,
                      {category: sorted(allowed) for (category, _), allowed in labels.items() if allowed})


def write_outputs(evaluation: Evaluation, out_dir: Path) -> tuple[Path, Path]:
    """evaluation.json and cost_quality.png in `out_dir`."""
    from .plots import cost_quality_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / EVALUATION_FILE
    report.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    chosen = evaluation.recommended.threshold if evaluation.recommended else None
    png = cost_quality_curve([(p.threshold, p.cost_usd, p.quality) for p in evaluation.curve], chosen,
                             evaluation.target_quality, out_dir / CURVE_PNG)
    return report, png
