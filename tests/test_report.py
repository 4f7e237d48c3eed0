"""The answer ledger and `athanor report`: savings, the teacher's share, the return on distillation."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from click.testing import CliRunner

from appliance.cli import main
from appliance.storage.ledger import LEDGER_FILE, AnswerLedger, AnswerRow, read_rows
from appliance.paths import state_dir
from appliance.report.figures import build_report
from appliance.teacher.factory import LEDGER_FILE as SPEND_FILE
from appliance.teacher.limits import SpendLedger, read_spend


def _ts(day: str, hour: int = 12) -> float:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=timezone.utc).timestamp()


def _row(day: str, route: str, cost: float = 0.0, saved: float = 0.0) -> AnswerRow:
    return AnswerRow(_ts(day), route, "student", 10, 5, cost, saved, False)


def test_savings_share_teacher_share_and_cache_rate_per_day_and_month():
    rows = [_row("2026-11-01", "teacher", cost=0.03), _row("2026-11-01", "student", saved=0.01),
            _row("2026-11-02", "cache", saved=0.02), _row("2026-11-02", "cache", saved=0.02),
            _row("2026-12-01", "student", saved=0.01)]
    report = build_report(rows, {"2026-11-01": 0.03}, today="2026-12-01")
    assert [d.label for d in report.days] == ["2026-11-01", "2026-11-02", "2026-12-01"]
    assert [m.label for m in report.months] == ["2026-11", "2026-12"]
    nov = report.months[0]
    assert nov.answers == 4 and nov.teacher_share == 0.25 and nov.cache_hit_rate == 0.5
    assert abs(nov.savings_share - 0.05 / 0.08) < 1e-9  # saved 0.05 of the 0.08 the teacher alone would charge
    assert report.distillation_usd == 0.0 and report.break_even is None and report.return_on_distillation is None


def test_distillation_spend_is_what_the_teacher_was_paid_beyond_answers_and_savings_repay_it():
    rows = [_row("2026-11-01", "teacher", cost=0.5), _row("2026-11-02", "student", saved=0.6),
            _row("2026-11-03", "student", saved=0.6)]
    # The spend ledger holds the harvest ($1.00) on top of the served teacher answer ($0.50).
    report = build_report(rows, {"2026-11-01": 1.5}, today="2026-11-03")
    assert abs(report.distillation_usd - 1.0) < 1e-9
    assert report.break_even == "2026-11-03" and not report.break_even_projected
    assert abs(report.return_on_distillation - 0.2) < 1e-9


def test_break_even_is_projected_from_the_recent_pace_and_a_new_harvest_puts_it_back():
    rows = [_row("2026-11-0" + str(d), "cache", saved=0.1) for d in range(1, 8)]
    report = build_report(rows, {"2026-11-01": 2.0}, today="2026-11-07")
    # $2.00 owed, $0.70 saved, $0.10 a day: 13 more days.
    assert report.break_even == "2026-11-20" and report.break_even_projected
    assert abs(report.next_month_saved_usd - 3.0) < 1e-9 and report.next_month_spent_usd == 0.0
    paid_then_harvested = build_report(rows, {"2026-11-01": 0.1, "2026-11-05": 5.0}, today="2026-11-07")
    assert paid_then_harvested.break_even_projected  # paid back on the 1st, in debt again after the 5th
    flat = build_report([], {"2026-11-01": 2.0}, today="2026-11-07")
    assert flat.break_even is None and flat.days[0].answers == 0


def test_the_ledger_writes_in_the_background_and_reads_back_in_order(tmp_path):
    ledger = AnswerLedger(tmp_path / LEDGER_FILE)
    rows = [_row("2026-11-0" + str(d), route, saved=0.01 * d) for d, route in ((2, "cache"), (1, "student"))]
    for row in rows:
        ledger.add(row)
    ledger.close()  # writes what is queued
    assert list(read_rows(tmp_path / LEDGER_FILE)) == sorted(rows, key=lambda r: r.ts)
    assert [r.route for r in read_rows(tmp_path / LEDGER_FILE, since=_ts("2026-11-02", 0))] == ["cache"]
    assert list(read_rows(tmp_path / "missing.sqlite3")) == []


def test_report_command_prints_the_tables_writes_json_and_a_png(tmp_path):
    runner = CliRunner()
    empty = runner.invoke(main, ["report"])
    assert empty.exit_code == 0 and "no answers recorded yet" in empty.output
    today = datetime.now(timezone.utc).date().isoformat()
    ledger = AnswerLedger(state_dir() / LEDGER_FILE)
    for route, cost, saved in (("teacher", 0.02, 0.0), ("cache", 0.0, 0.02), ("student", 0.0, 0.02)):
        ledger.add(AnswerRow(time.time(), route, "student", 100, 20, cost, saved, False))
    ledger.close()
    spend = SpendLedger(state_dir() / SPEND_FILE, daily_budget_usd=5.0)
    spend.record(0.52)  # the served answer and a $0.50 harvest
    spend.close()
    assert read_spend(state_dir() / SPEND_FILE) == {today: 0.52}
    shown = runner.invoke(main, ["report", "--png", str(tmp_path / "r.png")])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())  # rich wraps lines to the terminal's width
    assert "3 answers" in text and "67% of what the teacher alone would have charged" in text
    assert "distillation cost $0.5000" in text and "break-even projected for" in text
    assert (tmp_path / "r.png").stat().st_size > 1000
    data = json.loads(runner.invoke(main, ["report", "--json"]).output)
    assert data["total"]["by_route"] == {"teacher": 1, "cache": 1, "student": 1}
    assert data["quality"] == {"retention": None, "previous_retention": None, "measured_at": None}  # never retrained
    from appliance.protocol.retrain_state import write_state
    from appliance.paths import retrain_dir

    write_state(retrain_dir(), 60, tmp_path / "student", 0.95, 0.9)
    data = json.loads(runner.invoke(main, ["report", "--json"]).output)
    assert data["quality"]["retention"] == 0.95 and data["quality"]["previous_retention"] == 0.9
    shown = " ".join(runner.invoke(main, ["report"]).output.split())
    assert "keeps 0.950 of the teacher's answers on the held-out set (the student before it: 0.900)" in shown
    assert abs(data["distillation_usd"] - 0.5) < 1e-9
    bad = runner.invoke(main, ["report", "--since", "yesterday"])
    assert bad.exit_code == 2 and "is not a date like" in bad.output


def _request(target: str, method: str = "GET"):
    from appliance.server.http import HttpRequest

    return HttpRequest(method, target, {}, b"", None, "req-1")


def test_the_daemon_serves_the_report_rereading_its_ledger_at_most_every_30_s():
    import asyncio

    from appliance.server.http import json_response
    from appliance.server.report_api import FRESH_S, ReportApi

    async def inner(request):
        return json_response(404, {"error": {"message": "elsewhere"}})

    now = [1000.0]
    api = ReportApi(inner, state_dir(), clock=lambda: now[0])
    ledger = AnswerLedger(state_dir() / LEDGER_FILE)
    ledger.add(AnswerRow(time.time(), "cache", "student", 100, 20, 0.0, 0.02, False))
    ledger.close()
    spend = SpendLedger(state_dir() / SPEND_FILE, daily_budget_usd=5.0)
    spend.record(0.50)  # a harvest: distillation to repay
    spend.close()

    def get(target, method="GET"):
        response = asyncio.run(api(_request(target, method)))
        return response.status, json.loads(response.body)

    status, first = get("/v1/report")
    assert status == 200 and first["total"]["answers"] == 1 and abs(first["distillation_usd"] - 0.5) < 1e-9
    assert first["break_even"] is not None and first["break_even_projected"] is True
    ledger = AnswerLedger(state_dir() / LEDGER_FILE)
    ledger.add(AnswerRow(time.time(), "student", "student", 100, 20, 0.0, 0.02, False))
    ledger.close()
    assert get("/v1/report")[1]["total"]["answers"] == 1  # within 30 s: the same report
    now[0] += FRESH_S + 1
    assert get("/v1/report")[1]["total"]["answers"] == 2
    assert get("/v1/report?since=2999-01-01")[1]["total"]["answers"] == 0
    status, body = get("/v1/report?since=yesterday")
    assert status == 400 and "is not a date like" in body["error"]["message"]
    assert get("/v1/report", "POST")[0] == 405
    assert get("/v1/stats")[0] == 404  # every other path goes on to the inner handler


def test_the_dashboard_shows_when_savings_repay_the_distillation():
    from appliance.tui.panels import break_even

    assert break_even(None).plain == "" and break_even({"distillation_usd": 0.0, "break_even": None}).plain == ""
    reached = {"distillation_usd": 0.5, "break_even": "2026-11-20", "break_even_projected": False}
    assert break_even(reached).plain == "  break-even 11-20"
    assert break_even(reached | {"break_even": "2026-12-15", "break_even_projected": True}).plain == "  break-even ~12-15"
    assert break_even(reached | {"break_even": None}).plain == "  break-even not in sight"
