"""`athanor report` on a terminal and as a PNG."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .figures import Period, Report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _table(title: str, periods: list[Period]) -> Table:
    table = Table(title=title)
    for name in ("period", "answers", "cache", "student", "teacher", "spent", "saved", "savings", "teacher share"):
        table.add_column(name, justify="left" if name == "period" else "right")
    for p in periods:
        table.add_row(p.label, str(p.answers), _pct(p.cache_hit_rate), str(p.by_route.get("student", 0)),
                      str(p.by_route.get("teacher", 0)), f"${p.spent_usd:.4f}", f"${p.saved_usd:.4f}",
                      _pct(p.savings_share), _pct(p.teacher_share))
    return table


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    console.print(_table("by month", report.months))
    console.print(_table("last 14 days", report.days[-14:]))
    total = report.total
    console.print(f"to date: {total.answers} answers, spent ${total.spent_usd:.4f} on teacher answers, saved "
                  f"${total.saved_usd:.4f} ({_pct(total.savings_share)} of what the teacher alone would have "
                  f"charged); teacher share {_pct(total.teacher_share)}, cache hits {_pct(total.cache_hit_rate)}")
    if report.distillation_usd > 0:
        when = ("not in sight at the recent pace" if report.break_even is None else
                f"{'projected for' if report.break_even_projected else 'reached on'} {report.break_even}")
        console.print(f"distillation cost ${report.distillation_usd:.4f} (harvests, labelling); return so far "
                      f"{report.return_on_distillation:+.0%}; break-even {when}")
    if report.retention is not None:
        was = f" (the student before it: {report.retention_was:.3f})" if report.retention_was is not None else ""
        console.print(f"quality: the serving student keeps {report.retention:.3f} of the teacher's answers on the "
                      f"held-out set{was}, measured when `retrain` installed it on {report.retention_at}")
    console.print(f"next 30 days at the last 7 days' pace: spend ${report.next_month_spent_usd:.4f}, "
                  f"save ${report.next_month_saved_usd:.4f}")


def plot_report(report: Report, path: Path) -> Path:
    """Cumulative savings against cumulative spend (serving and distillation), one point per day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d.label for d in report.days]
    saved, spent, total_saved, total_spent = [], [], 0.0, 0.0
    for d in report.days:
        total_saved += d.saved_usd
        total_spent += d.spent_usd
        saved.append(total_saved)
        spent.append(total_spent)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(days, saved, marker="o", ms=3, label="saved (teacher price of cache and student answers)")
    ax.plot(days, spent, marker="o", ms=3, label="spent on teacher answers")
    if report.distillation_usd > 0:
        ax.axhline(report.distillation_usd, color="grey", ls="--", lw=0.8,
                   label=f"distillation cost ${report.distillation_usd:.2f}")
    if report.break_even and not report.break_even_projected:
        # The x axis holds day labels (matplotlib's categorical units), so a label is a position on it.
        ax.axvline(report.break_even, color="green", ls=":",  # type: ignore[arg-type]
                   label=f"break-even {report.break_even}")
    ax.set_xlabel("day (UTC)")
    ax.set_ylabel("USD, cumulative")
    ax.set_title("Athanor: savings against spend")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
