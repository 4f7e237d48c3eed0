"""Pure figures comparing an artifact's next-token distributions with the merged model's.

Everything here takes arrays and returns numbers; running the models lives in `runners.py`.
Agreement and KL are teacher-forced: every artifact sees the merged model's own greedy
continuation, so one early disagreement does not cascade into every later position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from appliance.engine.logits import log_softmax


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of positions where the two logits rows pick the same most likely token."""
    if len(reference) == 0:
        return 1.0
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)))


def mean_kl(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over positions of KL(reference || candidate) of the next-token distributions, in nats."""
    if len(reference) == 0:
        return 0.0
    p_log = log_softmax(reference)
    q_log = log_softmax(candidate)
    kl = (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)
    return float(np.mean(np.maximum(kl, 0.0)))


def greedy_match(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Fraction of prompts whose free-running greedy continuation equals the reference exactly."""
    if not reference:
        return 1.0
    return sum(a == b for a, b in zip(reference, candidate)) / len(reference)


@dataclass(frozen=True)
class Figures:
    """What verification measured for one artifact."""

    agreement: float
    """Teacher-forced top-1 agreement with the merged model."""
    kl_mean: float
    """Mean KL(merged || artifact) of next-token distributions, nats."""
    greedy_match: float
    """Fraction of prompts with an identical free-running greedy continuation."""
    tokens_per_s: float
    """Greedy decode speed on this machine."""
    positions: int
    """Positions compared (prompts x continuation tokens)."""

    def as_dict(self) -> dict:
        return {
            "agreement": round(self.agreement, 4),
            "kl_mean": round(self.kl_mean, 6),
            "greedy_match": round(self.greedy_match, 4),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "positions": self.positions,
        }


@dataclass(frozen=True)
class Threshold:
    min_agreement: float
    max_kl: float


# Defaults from scripts/bench_export.py (SmolLM2-135M + a LoRA adapter, 8 held-out prompts, teacher-
# forced agreement / mean KL in nats): f16 0.990 / 0.00003, q8_0 0.896 / 0.022, q4_k_m 0.792 / 0.37,
# ONNX fp32 1.000 / 0, ONNX fp16 1.000 / 0.00003, ONNX int8 (dynamic, per-tensor) 0.42 / 2.4. Each
# limit sits below what a sound build of its type measured, with room for other prompts, and far above
# a broken file (agreement ~0, KL > 5). The int8 limit is meant to reject damage like SmolLM2's: a build that cannot answer like the
# merged model is not worth serving whatever its size.
DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    "f32": Threshold(0.97, 0.01),
    "f16": Threshold(0.95, 0.02),
    "bf16": Threshold(0.95, 0.02),
    "q8_0": Threshold(0.85, 0.06),
    "q6_k": Threshold(0.80, 0.12),
    "q5_k_m": Threshold(0.78, 0.20),
    "q5_k_s": Threshold(0.78, 0.20),
    "q5_0": Threshold(0.75, 0.25),
    "q4_k_m": Threshold(0.70, 0.50),
    "q4_k_s": Threshold(0.68, 0.55),
    "q4_0": Threshold(0.65, 0.60),
    "fp32": Threshold(0.97, 0.01),
    "fp16": Threshold(0.95, 0.02),  # the same rounding as GGUF f16, so the same limit
    "int8": Threshold(0.80, 0.20),
}
_FALLBACK = Threshold(0.60, 0.70)


@dataclass(frozen=True)
class Gate:
    """Per quant type, the least agreement and the most KL an artifact may show and still be published."""

    thresholds: dict[str, Threshold] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def threshold(self, quant: str) -> Threshold:
        return self.thresholds.get(quant, _FALLBACK)

    def judge(self, quant: str, figures: Figures) -> list[str]:
        """Reasons the artifact fails the gate; empty when it passes."""
        limit = self.threshold(quant)
        reasons = []
        if not figures.agreement >= limit.min_agreement:  # also catches NaN
            reasons.append(f"agreement {figures.agreement:.3f} < {limit.min_agreement}")
        if not figures.kl_mean <= limit.max_kl:
            reasons.append(f"mean KL {figures.kl_mean:.4f} > {limit.max_kl}")
        return reasons

    def overridden(self, min_agreement: float | None = None, max_kl: float | None = None) -> "Gate":
        """The same gate with one limit forced on every quant type (the CLI's --min-agreement / --max-kl)."""
        if min_agreement is None and max_kl is None:
            return self
        quants = set(self.thresholds) | set(DEFAULT_THRESHOLDS)
        table = {}
        for quant in quants:
            limit = self.threshold(quant)
            table[quant] = Threshold(
                limit.min_agreement if min_agreement is None else min_agreement,
                limit.max_kl if max_kl is None else max_kl,
            )
        return Gate(table)
