"""Log-probabilities from logits: the log-softmax the engines (one token per decoded step) and the export's
verification (every position, in float64 so that f16-sized logits stay stable) share."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise (last axis) log-softmax."""
    values = np.asarray(logits, dtype=np.float64)
    shifted = values - values.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under the softmax of one logits row. It runs for every token the engines decode, so it
    normalises one entry in the row's own dtype rather than building the whole float64 row."""
    peak = float(logits.max())
    return float(logits[token]) - peak - float(np.log(np.exp(logits - peak).sum()))
