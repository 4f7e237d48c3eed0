"""`athanor report`'s figures: money spent and saved, the teacher's share, the return on distillation.

Pure: built from the answer ledger's rows and the teacher's spend per day. Serving spend is what the
teacher charged for the answers it gave; whatever else the teacher was paid for on a day (harvests,
labelling pending questions) is the one-time cost of distillation that savings pay back.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Iterable, Sequence

from ..storage.ledger import AnswerRow
from ..teacher.limits import utc_day

RECENT_DAYS = 7
"""Days whose mean rates project the next month and the break-even date."""


@dataclass(frozen=True)
class Period:
    label: str
    answers: int = 0
    by_route: dict[str, int] = field(default_factory=dict)
    spent_usd: float = 0.0
    saved_usd: float = 0.0
    degraded: int = 0

    @property
    def teacher_share(self) -> float | None:
        return self.by_route.get("teacher", 0) / self.answers if self.answers else None

    @property
    def cache_hit_rate(self) -> float | None:
        return self.by_route.get("cache", 0) / self.answers if self.answers else None

    @property
    def savings_share(self) -> float | None:
        """Saved as a share of what the teacher alone would have charged for the same answers."""
        would_have = self.spent_usd + self.saved_usd
        return self.saved_usd / would_have if would_have > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "answers": self.answers, "by_route": self.by_route,
                "spent_usd": round(self.spent_usd, 6), "saved_usd": round(self.saved_usd, 6),
                "savings_share": self.savings_share, "teacher_share": self.teacher_share,
                "cache_hit_rate": self.cache_hit_rate, "degraded": self.degraded}


@dataclass(frozen=True)
class Report:
    days: list[Period]
    months: list[Period]
    total: Period
    distillation_usd: float
    """Teacher spend not on answers served: harvests and labelling, the one-time cost savings repay."""
    break_even: str | None
    """The day cumulative savings reached the distillation spend (projected when `projected`), None when
    there is nothing to repay or savings do not grow."""
    break_even_projected: bool
    next_month_spent_usd: float
    next_month_saved_usd: float
    retention: float | None = None
    """The serving student's retention on the held-out set when `retrain` installed it (None: never retrained)."""
    retention_was: float | None = None
    retention_at: str | None = None

    @property
    def return_on_distillation(self) -> float | None:
        """Savings to date per dollar of distillation, minus the dollar (0.5 = paid back and half again)."""
        return self.total.saved_usd / self.distillation_usd - 1 if self.distillation_usd > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {"total": self.total.as_dict(), "days": [d.as_dict() for d in self.days],
                "months": [m.as_dict() for m in self.months], "distillation_usd": round(self.distillation_usd, 6),
                "return_on_distillation": self.return_on_distillation, "break_even": self.break_even,
                "break_even_projected": self.break_even_projected,
                "next_month": {"spent_usd": round(self.next_month_spent_usd, 6),
                               "saved_usd": round(self.next_month_saved_usd, 6)},
                "quality": {"retention": self.retention, "previous_retention": self.retention_was,
                            "measured_at": self.retention_at}}


def _period(label: str, rows: Sequence[AnswerRow]) -> Period:
    return Period(label, len(rows), dict(Counter(r.route for r in rows)), sum(r.cost_usd for r in rows),
                  sum(r.saved_usd for r in rows), sum(r.degraded for r in rows))


def build_report(rows: Iterable[AnswerRow], teacher_spend: dict[str, float], today: str) -> Report:
    """The report over `rows` (time-ordered), with the teacher's spend per UTC day (the spend ledger)."""
    by_day: dict[str, list[AnswerRow]] = defaultdict(list)
    for row in rows:
        by_day[utc_day(row.ts)].append(row)
    all_days = sorted(set(by_day) | {d for d, usd in teacher_spend.items() if usd > 0})
    days = [_period(d, by_day.get(d, [])) for d in all_days]
    by_month: dict[str, list[AnswerRow]] = defaultdict(list)
    for d in all_days:
        by_month[d[:7]].extend(by_day.get(d, []))
    months = [_period(m, by_month[m]) for m in sorted(by_month)]
    total = _period("total", [r for d in all_days for r in by_day.get(d, [])])
    distillation = {d.label: max(0.0, teacher_spend.get(d.label, 0.0) - d.spent_usd) for d in days}
    one_time = sum(distillation.values())
    break_even, projected = None, False
    if one_time > 0:
        cost = saved = 0.0
        for period in days:
            cost += distillation[period.label]
            saved += period.saved_usd
            if saved < cost:
                break_even = None  # not yet, or a later harvest put it back in debt
            elif break_even is None:
                break_even = period.label
    recent = days_before(days, today, RECENT_DAYS)
    daily_saved = sum(d.saved_usd for d in recent) / RECENT_DAYS
    daily_spent = sum(d.spent_usd for d in recent) / RECENT_DAYS
    if one_time > 0 and break_even is None and daily_saved > 0:
        owed = one_time - total.saved_usd
        break_even = (date.fromisoformat(today) + timedelta(days=max(1, math.ceil(owed / daily_saved - 1e-9)))).isoformat()
        projected = True
    return Report(days, months, total, one_time, break_even, projected, daily_spent * 30, daily_saved * 30)


def days_before(days: Sequence[Period], today: str, count: int) -> list[Period]:
    """The periods of the `count` days up to and including `today`."""
    first = (date.fromisoformat(today) - timedelta(days=count - 1)).isoformat()
    return [d for d in days if first <= d.label <= today]
