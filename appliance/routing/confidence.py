"""How sure the student is, from its own per-token log-probabilities (never from asking it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


@dataclass(frozen=True)
class Confidence:
    """`score` is the routing number: a low quantile of the chosen tokens' probabilities.

    A low quantile rather than the mean because one wrong fact is a few unlikely tokens in an
    otherwise fluent answer: the mean hides them, the minimum overreacts to one odd token.
    """

    score: float
    quantile: float
    mean_logprob: float
    mean_prob: float
    min_prob: float
    n_tokens: int
    method: str = "quantile"
    """"quantile": `score` is the quantile above; "router": `score` is a fitted router's P(right)."""

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def confidence(logprobs: Sequence[float], quantile: float = 0.1) -> Confidence:
    """Confidence of an answer from the log-probabilities of its tokens; an empty answer scores 0."""
    if not logprobs:
        return Confidence(0.0, quantile, float("-inf"), 0.0, 0.0, 0)
    probs = sorted(math.exp(lp) for lp in logprobs)
    # Linear interpolation between order statistics, as numpy's default quantile does.
    position = quantile * (len(probs) - 1)
    low = math.floor(position)
    high = min(low + 1, len(probs) - 1)
    score = probs[low] + (probs[high] - probs[low]) * (position - low)
    mean_logprob = sum(logprobs) / len(logprobs)
    return Confidence(
        score=score,
        quantile=quantile,
        mean_logprob=mean_logprob,
        mean_prob=math.exp(mean_logprob),
        min_prob=probs[0],
        n_tokens=len(probs),
    )
