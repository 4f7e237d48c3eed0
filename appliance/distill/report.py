"""Rich tables for `athanor evaluate` and `athanor retrain`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .evaluate import Evaluation

CURVE_ROWS = 12


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}"


def print_evaluation(evaluation: Evaluation, console: Console) -> None:
    """Per-category quality and retention, then the cost-quality table and the recommended threshold."""
    table = Table(title="student against teacher (held-out)")
    for column in ("category", "n", "student %", "teacher %", "retention %", "gap (points)", "agreement %",
                   "off-label", ""):
        table.add_column(column, justify="right" if column not in ("category", "") else "left")
    for score in [*evaluation.categories, evaluation.overall]:
        table.add_row(score.category, str(score.n), _pct(score.student), _pct(score.teacher), _pct(score.retention),
                      f"{score.gap_points:.1f}", _pct(score.agreement), str(score.off_label),
                      "[red]FLAG[/red]" if score.flagged else "", style="bold" if score.category == "overall" else None)
    console.print(table)
    for score in evaluation.categories:
        if score.off_label:
            # Counted wrong already; said apart because the fix differs (the student does not stop, or
            # pads its label) from a wrong label.
            allowed = ", ".join(repr(label) for label in evaluation.labels.get(score.category, []))
            console.print(f"[yellow]{score.category}: {score.off_label} of {score.n} student answers were none "
                          f"of the labels {allowed}[/]")
    curve = evaluation.curve
    step = max(1, len(curve) // CURVE_ROWS)
    shown = set(curve[::step]) | ({curve[-1]} if curve else set())
    if evaluation.recommended is not None:
        shown.add(evaluation.recommended)
    shown = sorted(shown, key=lambda p: p.threshold)
    costs = Table(title=f"routing threshold (target quality {evaluation.target_quality:.2f})")
    for column in ("threshold", "to teacher %", "teacher USD", "quality %"):
        costs.add_column(column, justify="right")
    for point in shown:
        mark = " *" if evaluation.recommended is not None and point == evaluation.recommended else ""
        costs.add_row(f"{point.threshold:.4f}{mark}", _pct(point.teacher_share), f"{point.cost_usd:.6f}",
                      _pct(point.quality))
    console.print(costs)
    if evaluation.recommended is None:
        console.print("no threshold meets the target quality, even sending everything to the teacher")
    else:
        best = evaluation.recommended
        console.print(f"recommended [routing].confidence_threshold = {best.threshold:.4f} "
                      f"({best.teacher_share * 100:.1f}% to the teacher, quality {best.quality * 100:.1f}%)")
