"""A logistic-regression router: P(student right | signals), fitted from graded answers (pure numpy).

Labels come from wherever the truth is known: a benchmark's gold answers, or the distillation log,
where every teacher call holds a student answer and the teacher's, and their agreement is the label.
Small on purpose: a dozen standardised features, L2-regularised, so that a few hundred labels fit
it without learning their noise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class LogisticRouter:
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float = 0.5
    """Keep the student's answer when P(right) is at least this; chosen on dev labels."""
    cache_threshold: float = 0.5
    """Cache a student answer only when P(right) is at least this."""
    trained_on: int = 0

    def probability(self, x: Sequence[float]) -> float:
        z = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = float(z @ np.asarray(self.weights) + self.bias)
        return float(1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30))))

    @property
    def keeps_none(self) -> bool:
        """Its threshold is one no probability reaches: it keeps none of the student's answers."""
        return self.threshold >= 1.0

    def to_json(self) -> str:
        return json.dumps(self.__dict__ | {"features": list(self.features)}, indent=1)

    @staticmethod
    def from_json(text: str) -> "LogisticRouter":
        data = json.loads(text)
        return LogisticRouter(features=tuple(data["features"]), mean=tuple(data["mean"]),
                              scale=tuple(data["scale"]), weights=tuple(data["weights"]),
                              bias=float(data["bias"]), threshold=float(data.get("threshold", 0.5)),
                              cache_threshold=float(data.get("cache_threshold", 0.5)),
                              trained_on=int(data.get("trained_on", 0)))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> "LogisticRouter":
        return LogisticRouter.from_json(path.read_text(encoding="utf-8"))


def fit(features: Sequence[str], x: Sequence[Sequence[float]], y: Sequence[bool], l2: float = 1.0,
        steps: int = 3000, lr: float = 0.1) -> LogisticRouter:
    """Fit by gradient descent on the mean log-loss plus l2/n * |w|^2 (the bias is not penalised)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if len(xs) < 10 or ys.min() == ys.max():
        raise ValueError("a router needs at least 10 graded answers, some right and some wrong")
    mean = xs.mean(axis=0)
    scale = xs.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (xs - mean) / scale
    w = np.zeros(z.shape[1])
    b = float(np.log(ys.mean() / (1 - ys.mean())))
    n = len(ys)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        w -= lr * (z.T @ (p - ys) / n + 2 * l2 / n * w)
        b -= lr * float((p - ys).mean())
    return LogisticRouter(tuple(features), tuple(mean.tolist()), tuple(scale.tolist()), tuple(w.tolist()), b,
                          trained_on=n)


def out_of_fold(features: Sequence[str], x: Sequence[Sequence[float]], y: Sequence[bool],
                folds: int = 5) -> list[float]:
    """Each example's probability from a router fitted on the other folds.

    A router scores the answers it was fitted on more kindly than new ones, so a threshold chosen on
    its own fitting set keeps too much on new questions. Thresholds are chosen on these scores instead;
    the router that ships is still fitted on all of them. Folds are dealt round-robin within each
    label, so each holds its share of right answers.
    """
    labels = [bool(v) for v in y]
    order = [i for i, r in enumerate(labels) if r] + [i for i, r in enumerate(labels) if not r]
    fold_of = {i: k % folds for k, i in enumerate(order)}
    scores = [0.0] * len(labels)
    for fold in range(folds):
        held = [i for i in range(len(labels)) if fold_of[i] == fold]
        if not held:
            continue
        rest = [i for i in range(len(labels)) if fold_of[i] != fold]
        router = fit(features, [x[i] for i in rest], [labels[i] for i in rest])
        for i in held:
            scores[i] = router.probability(x[i])
    return scores
