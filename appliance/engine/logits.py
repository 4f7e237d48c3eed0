"""Log-probabilities from logits, in float64 so that f16-sized logits stay stable: the one log-softmax
the engines (per token) and the export's verification (per position) share."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise (last axis) log-softmax."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under the softmax of one logits row."""
    return float(log_softmax(logits)[token])
