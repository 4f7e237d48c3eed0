"""PNG plots (matplotlib, headless): the training loss curve and the cost-quality curve."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    return plt


def loss_curve(losses: Sequence[tuple[int, float]], path: Path, val_losses: Sequence[tuple[int, float]] = (),
               best_step: int | None = None) -> Path:
    """Training loss per step, with a moving average when there are many steps, and the validation loss
    with the kept step marked when there was validation."""
    plt = _pyplot()
    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, values, lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(values) // 20)
    if window > 1:
        smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                  for i in range(len(values))]
        ax.plot(steps, smooth, lw=1.8, label=f"mean of {window}")
    if val_losses:
        ax.plot([s for s, _ in val_losses], [v for _, v in val_losses], marker="o", ms=4, lw=1.5,
                label="validation loss")
    if best_step is not None:
        ax.axvline(best_step, color="grey", ls="--", lw=0.8, label=f"kept: step {best_step}")
    return _finish(plt, fig, ax, path, "optimizer step", "loss", "training loss")


def cost_quality_curve(points: Sequence[tuple[float, float, float]], chosen: float | None, target: float,
                       path: Path) -> Path:
    """Quality against teacher spend, one point per threshold (threshold, cost, quality); the pick marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([c for _, c, _ in points], [q for _, _, q in points], marker="o", ms=3, lw=1.2)
    ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target quality {target:.2f}")
    for threshold, cost, quality in points:
        if chosen is not None and threshold == chosen:
            ax.plot([cost], [quality], marker="*", ms=14, color="red", label=f"threshold {threshold:.3f}")
    return _finish(plt, fig, ax, path, "teacher spend (USD, held-out set)", "quality",
                   "routing threshold: cost against quality")


def _finish(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Label, grid and legend every plot the same way, then write the PNG and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
