"""Numbers about one student answer that may tell whether it is right (pure).

Each is oriented so that higher means "more likely right". The sampled token's probability is
what the router used first; at a sampling temperature it mostly measures the dice, so the
distribution of every step (its best probability, the gap to the second, its entropy) is read too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from ..cache.segment import has_han
from ..engine.types import TokenEvent


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Signals:
    chosen_q10: float
    """10% quantile of the chosen tokens' probabilities (the original router's score)."""
    mean_logprob: float
    """Length-normalised log-probability of the answer."""
    best_q10: float
    """10% quantile of each step's best-token probability."""
    best_mean: float
    neg_entropy_mean: float
    neg_entropy_max: float
    """Minus the entropy of the most uncertain step."""
    margin_q10: float
    """10% quantile of log p(best) - log p(second)."""
    early_best_mean: float
    """Mean best-token probability of the first 8 steps: known before the answer is finished."""
    neg_length: float
    """Minus the number of answer tokens: rambling answers are more often wrong."""
    prompt_chars: float
    chinese: float

    def vector(self) -> list[float]:
        return [float(v) for v in asdict(self).values()]

    def as_dict(self) -> dict[str, float]:
        return {name: round(float(v), 6) for name, v in asdict(self).items()}

    @staticmethod
    def names() -> list[str]:
        return list(Signals.__dataclass_fields__)


def signals(question: str, events: Sequence[TokenEvent]) -> Signals:
    """The signals of one answer; an empty answer scores as unsure as possible."""
    if not events:
        return Signals(0.0, -20.0, 0.0, 0.0, -10.0, -10.0, 0.0, 0.0, 0.0, float(len(question)),
                       float(has_han(question)))
    chosen = [math.exp(e.logprob) for e in events]
    steps = [e.step for e in events if e.step is not None]
    best = [math.exp(s.max_logprob) for s in steps] or chosen
    entropy = [s.entropy for s in steps] or [0.0]
    margin = [s.margin for s in steps] or [0.0]
    return Signals(
        chosen_q10=_quantile(chosen, 0.1),
        mean_logprob=sum(e.logprob for e in events) / len(events),
        best_q10=_quantile(best, 0.1),
        best_mean=sum(best) / len(best),
        neg_entropy_mean=-sum(entropy) / len(entropy),
        neg_entropy_max=-max(entropy),
        margin_q10=_quantile(margin, 0.1),
        early_best_mean=sum(best[:8]) / len(best[:8]),
        neg_length=-float(len(events)),
        prompt_chars=float(len(question)),
        chinese=float(has_han(question)),
    )


PROMPT_FEATURES = ("prompt_chars", "chinese", "digit_share", "code_marks")


def prompt_features(question: str) -> list[float]:
    """What the question alone says, before the student decodes (the pre-router's input)."""
    n = max(1, len(question))
    return [float(len(question)), float(has_han(question)),
            sum(ch.isdigit() for ch in question) / n,
            float(sum(question.count(mark) for mark in ("(", ")", "[", "]", "{", "'", "=")))]
