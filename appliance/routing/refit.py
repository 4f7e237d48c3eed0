"""Refit the router from the appliance's own distillation log (pure).

Every teacher call the daemon logs holds the student's answer, the router's signals for it and the
teacher's answer. Where the teacher's answer is checkable (a yes/no, a number, a few words), whether
the student said the same is a label: the router learns, from this student's own traffic, which
signal values mean a wrong answer. Free-text answers are not guessed at: they stay unlabelled.

The labelled records are split by question (a stable hash, so a question asked twice lands on one
side): the router is fitted on one part and judged on the other, against the router in use on the
same records. It is installed only when it does at least as well there.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from ..cache.segment import HAN
from ..protocol.log_entry import LogEntry
from .grading import _norm, _numbers, correct
from .learned import LogisticRouter, fit
from .measures import auroc, cheapest, operating_points

MAX_WRONG_KEPT = 0.05
HOLDOUT_SHARE = 0.3
SHORT_ANSWER_WORDS = 4
SHORT_ANSWER_HAN = 8
_HAN_CHAR = re.compile(f"[{HAN}]")
# A Chinese yes/no word counts only as a whole clause ("是的，…", "不。"): 不同, 是否 and 对于 open free text.
_YES_NO_HEAD = re.compile(r"^[*\"' ]*(?:(yes|no)(?![a-z])|(是的|不是|不对|是|否|对|不)(?=[，,。.!！\s]|$))")


def teacher_claim(text: str) -> tuple[str, str] | None:
    """What a teacher's answer states in a form a student's answer can be checked against, if anything.

    ("yesno", "yes"|"no") when it opens with yes or no; ("number", last number) when it is short and
    states numbers; ("short", text) when it is a few words; None for free text.
    """
    head = _norm(text)
    match = _YES_NO_HEAD.match(head)
    if match:
        word = match.group(1) or match.group(2)
        return "yesno", "no" if word in ("no", "不是", "否", "不对", "不") else "yes"
    words = head.split()
    # Chinese is written without spaces: its length in words is read from its characters.
    han = len(_HAN_CHAR.findall(head))
    short = len(words) <= 12 and len(head) <= 80 and han <= 3 * SHORT_ANSWER_HAN
    numbers = _numbers(head)
    if short and numbers:
        return "number", f"{numbers[-1]:g}"
    if len(words) <= SHORT_ANSWER_WORDS and len(head) <= 40 and han <= SHORT_ANSWER_HAN:
        return "short", head.rstrip(".。!！")
    return None


def agrees(student: str, teacher: str) -> bool | None:
    """Whether the student's answer states the teacher's claim; None when the teacher's is not checkable."""
    claim = teacher_claim(teacher)
    if claim is None:
        return None
    kind, value = claim
    if kind == "yesno":
        return correct(student, "yes" if value == "yes" else "no", category="yesno")
    return correct(student, value)


@dataclass(frozen=True)
class Example:
    question: str
    features: dict[str, float]
    right: bool


def examples(entries: Iterable[LogEntry], student_version: str | None,
             early: bool = False) -> tuple[list[Example], int]:
    """The labelled examples in log entries (of this student version, when given) and how many were not checkable.

    `early`: with the signals of each answer's first tokens (the early router's features), still labelled
    by the whole answer; answers logged before those were recorded are left out.
    """
    found: list[Example] = []
    unlabelled = 0
    for entry in entries:
        student, teacher = entry.student, entry.teacher
        if student is None or teacher is None or not teacher.text or student.partial:
            continue
        features = student.early_signals if early else student.signals
        if features is None:
            continue
        if student_version is not None and student.version != student_version:
            continue
        label = agrees(student.text, teacher.text)
        if label is None:
            unlabelled += 1
            continue
        found.append(Example(entry.question, dict(features), label))
    return found, unlabelled


def examples_from_evaluation(answers: Iterable[dict[str, Any]], early: bool = False) -> list[Example]:
    """Labelled examples from `athanor evaluate`'s answers (a new student on its held-out set): the student's
    signals (of its first tokens, with `early`), and whether its answer agreed with the teacher's by
    evaluate's own scoring."""
    field = "early_signals" if early else "signals"
    return [Example(str(a.get("prompt", "")), {k: float(v) for k, v in a[field].items()}, bool(a.get("agreed")))
            for a in answers if isinstance(a.get(field), dict)]


def in_holdout(question: str, share: float = HOLDOUT_SHARE) -> bool:
    digest = hashlib.sha256(question.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass(frozen=True)
class Refit:
    router: LogisticRouter | None
    """The refitted router, with its thresholds; None when there was too little to fit."""
    labelled: int
    unlabelled: int
    holdout: int
    auroc_new: float | None
    auroc_current: float | None
    install: bool
    reason: str


def refit(found: Sequence[Example], unlabelled: int, current: LogisticRouter | None, min_labels: int) -> Refit:
    """Fit on the examples outside the holdout, judge on it, and say whether the new router should replace `current`."""
    features = list(current.features) if current is not None else sorted(found[0].features) if found else []
    usable = [e for e in found if all(name in e.features for name in features)]
    fit_part = [e for e in usable if not in_holdout(e.question)]
    held = [e for e in usable if in_holdout(e.question)]

    def outcome(router: LogisticRouter | None, auroc_new: float | None, auroc_current: float | None, install: bool,
                reason: str) -> Refit:
        return Refit(router, len(found), unlabelled, len(held), auroc_new, auroc_current, install, reason)

    if len(usable) < min_labels:
        return outcome(None, None, None, False, f"{len(usable)} checkable teacher verdicts on this student; "
                                               f"at least {min_labels} are needed")
    x_fit = [[e.features[n] for n in features] for e in fit_part]
    y_fit = [e.right for e in fit_part]
    y_held = [e.right for e in held]
    if len(set(y_fit)) < 2 or len(set(y_held)) < 2:
        return outcome(None, None, None, False, "the verdicts are all right or all wrong on one side of the split; "
                                               "wait for more traffic")
    new = fit(features, x_fit, y_fit)
    x_held = [[e.features[n] for n in features] for e in held]
    scores = [new.probability(v) for v in x_held]
    auroc_new = auroc(scores, y_held)
    auroc_current = auroc([current.probability(v) for v in x_held], y_held) if current is not None else None
    tuned = replace(with_thresholds(new, scores, y_held), trained_on=len(fit_part))
    if auroc_current is not None and auroc_new < auroc_current:
        return outcome(tuned, auroc_new, auroc_current, False,
                       f"the refitted router separates right from wrong less well on held-back verdicts "
                       f"(AUROC {auroc_new:.3f} < {auroc_current:.3f}); the current one stays")
    return outcome(tuned, auroc_new, auroc_current, True,
                   f"fitted on {len(fit_part)} verdicts, AUROC {auroc_new:.3f} on {len(held)} held back"
                   + (f" (current router: {auroc_current:.3f})" if auroc_current is not None else ""))


def with_thresholds(router: LogisticRouter, scores: Sequence[float], right: Sequence[bool]) -> LogisticRouter:
    """`router` with the thresholds that keep at most 5% wrong (served) and 2.5% wrong (cached) among the
    answers `scores` rates, which must not be the ones it was fitted on (they score too kindly).

    When no band is at most 5% wrong the threshold is "keep none" (inf); 1.0 says the same, since a
    probability never reaches it, and stays plain JSON.
    """
    keep = cheapest(operating_points(scores, right), MAX_WRONG_KEPT)
    cache = cheapest(operating_points(scores, right), MAX_WRONG_KEPT / 2)
    return replace(router, threshold=min(keep.threshold, 1.0),
                   cache_threshold=min(max(keep.threshold, cache.threshold), 1.0))


MIN_RETHRESHOLD_LABELS = 10
"""Graded answers a new student needs before the shipped router's thresholds are chosen on them."""


@dataclass(frozen=True)
class Placed:
    router: LogisticRouter
    """The weights it was given, with thresholds placed for the new student."""
    graded: int
    """The new student's graded answers the thresholds were placed on."""
    kept: int
    """How many of them the router keeps."""


def rethreshold(found: Sequence[Example], current: LogisticRouter,
                min_labels: int = MIN_RETHRESHOLD_LABELS) -> Placed | None:
    """`current`'s weights, with thresholds chosen on a new student's graded answers; None when too few.

    Too few answers to refit a router may still place its threshold: the weights were fitted on other
    answers, so these score the way new ones will, and the threshold that keeps at most 5% wrong among
    them is for this student, not for the one the weights came from (whose threshold may keep nothing).
    """
    usable = [e for e in found if all(name in e.features for name in current.features)]
    if len(usable) < min_labels:
        return None
    scores = [current.probability([e.features[n] for n in current.features]) for e in usable]
    router = with_thresholds(current, scores, [e.right for e in usable])
    return Placed(router, len(usable), sum(1 for p in scores if p >= router.threshold))


@dataclass(frozen=True)
class EarlyPlacement:
    router: LogisticRouter | None
    """The early router for the new whole-answer router; None: none (answers are then held to their end)."""
    reason: str


def place_early(found: Sequence[Example], whole: LogisticRouter, shipped: LogisticRouter,
                min_labels: int) -> EarlyPlacement:
    """The router of an answer's first tokens to go beside `whole`, a refitted or re-thresholded router.

    `found` are the new student's answers with the signals of their first tokens, labelled by the whole
    answer. Fitted on them when there are enough and it does no worse than `shipped`'s weights (the shipped
    early router) on the held-back ones; else `shipped`'s weights with the threshold placed on them; else
    none. Its threshold keeps at most 5% wrong among the answers it lets stream; it never caches (the whole
    answer decides). None either when `whole` keeps nothing: with a teacher, nothing is decoded first then
    (but the explored share, which is held to its end).
    """
    if whole.keeps_none:
        return EarlyPlacement(None, "no early router: the router keeps none of this student's answers")
    outcome = refit(found, 0, shipped, min_labels)
    if outcome.install and outcome.router is not None:
        router, reason = outcome.router, f"early router refitted: {outcome.reason}"
    else:
        placed = rethreshold(found, shipped)
        if placed is None:
            return EarlyPlacement(None, f"no early router: {len(found)} answers with their first tokens' signals, "
                                        f"{MIN_RETHRESHOLD_LABELS} needed; answers are held to their end")
        router, reason = placed.router, (f"early router: the shipped weights, threshold placed on {placed.graded} "
                                         f"answers' first tokens")
    if router.keeps_none:
        # One that lets nothing stream would escalate every answer after its first tokens, even those the
        # whole-answer router keeps: without it they are held to their end and that router decides.
        return EarlyPlacement(None, f"no early router: no band of the first tokens is at most "
                                    f"{MAX_WRONG_KEPT:.0%} wrong; answers are held to their end")
    return EarlyPlacement(replace(router, cache_threshold=1.0), reason)
