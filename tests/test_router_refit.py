"""Refitting the router from the appliance's own log: labels from the teacher's verdicts, a held-back judge."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.protocol.distill_log import DistillLog, read_records
from appliance.protocol.log_entry import LogEntry
from appliance.routing.decide import DEFAULT_ROUTER, load_policy
from appliance.routing.learned import LogisticRouter
from appliance.routing.refit import agrees, examples, in_holdout, refit, teacher_claim
from appliance.routing.signals import Signals


@pytest.mark.parametrize("student, teacher, verdict", [
    ("Yes, cats can see in dim light.", "Yes. Cats see well in low light.", True),
    ("No, they cannot.", "Yes, they can.", False),
    ("是的，可以。", "是的，猫在暗处也能看见。", True),
    ("不是。", "是的。", False),
    ("12 times 12 is equal to 120.", "12 × 12 = 144.", False),
    ("The answer is 144.", "144", True),
    ("一百四十四", "答案是144。", True),
    ("The largest planet is Neptune.", "Jupiter", False),
    ("Jupiter is the largest planet in the solar system.", "Jupiter.", True),
    ("最大的行星是木星。", "木星", True),
])
def test_agreement_with_a_checkable_teacher_answer(student, teacher, verdict):
    assert agrees(student, teacher) is verdict


def test_a_chinese_answer_opening_with_bu_or_shi_is_not_a_yes_or_no():
    assert teacher_claim("不同的国家有不同的习惯，比如日本人吃饭前会说“我开动了”，这是一种礼貌。") is None
    assert teacher_claim("是否需要签证取决于你的国籍和停留时间，请查看大使馆的最新规定。") is None
    assert teacher_claim("不。猫不能吃巧克力。") == ("yesno", "no")
    assert teacher_claim("是的，可以。") == ("yesno", "yes")


def test_free_text_is_not_guessed_at():
    essay = ("Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to "
             "make glucose and oxygen, mostly in the chloroplasts of their leaves.")
    assert teacher_claim(essay) is None
    assert agrees("Plants make food from light.", essay) is None
    assert teacher_claim("光合作用是绿色植物利用光能，把二氧化碳和水转化为储存能量的有机物并释放氧气的过程，主要在叶绿体中进行。") is None


def _record(question: str, student: str, teacher: str, signals: dict[str, float] | None, version: str = "v1",
            partial: bool = False, early: dict[str, float] | None = None) -> dict:
    record_student: dict = {"model": "s", "version": version, "text": student}
    if signals is not None:
        record_student["signals"] = signals
    if early is not None:
        record_student["early_signals"] = early
    if partial:
        record_student["partial"] = True
    return {"messages": [{"role": "user", "content": question}], "student": record_student,
            "teacher": {"text": teacher, "cost_usd": 0.001}}


def _entries(records: list[dict]) -> list[LogEntry]:
    """The log lines as the readers get them (a line that is no entry is skipped, as `read_entries` does)."""
    return [e for e in map(LogEntry.from_json, records) if e is not None]


def _signals(best_mean: float) -> dict[str, float]:
    values = dict.fromkeys(Signals.names(), 0.0)
    values["best_mean"] = best_mean
    return values


def test_examples_keep_only_checkable_whole_answers_of_the_current_student():
    records = [
        _record("q1", "Yes.", "Yes.", _signals(0.9)),
        _record("q2", "Yes.", "No.", _signals(0.2), partial=True),        # escalated early: not a whole answer
        _record("q3", "Yes.", "No.", None),                               # logged before signals were
        _record("q4", "Yes.", "No.", _signals(0.2), version="old"),       # another student
        _record("q5", "Plants.", "A long free-text explanation of how photosynthesis turns light into sugar.",
                _signals(0.5)),
        {"messages": [{"role": "user", "content": "q6"}], "pending": True, "student": {"text": "x"}},
    ]
    found, unlabelled = examples(_entries(records), "v1")
    assert [(e.question, e.right) for e in found] == [("q1", True)]
    assert unlabelled == 1


def _synthetic(n: int, noise: float, seed: int) -> list:
    """Answers whose rightness follows best_mean (plus noise): a signal a router can learn."""
    rng = random.Random(seed)
    found = []
    for i in range(n):
        best = rng.random()
        right = best + rng.gauss(0, noise) > 0.5
        found.append(_record(f"question {i}", "Yes." if right else "No.", "Yes.", _signals(best)))
    return examples(_entries(found), "v1")[0]


def test_refit_learns_a_signal_and_judges_it_on_held_back_questions():
    found = _synthetic(300, 0.05, seed=1)
    outcome = refit(found, 7, None, min_labels=60)
    assert outcome.install and outcome.router is not None
    assert outcome.unlabelled == 7 and outcome.labelled == 300
    assert 0.2 * 300 < outcome.holdout < 0.4 * 300
    assert outcome.auroc_new is not None and outcome.auroc_new > 0.95
    assert outcome.router.trained_on == 300 - outcome.holdout
    # The threshold keeps at most 5% wrong on the held-back questions.
    held = [e for e in found if in_holdout(e.question)]
    kept = [e for e in held if outcome.router.probability([e.features[n] for n in outcome.router.features])
            >= outcome.router.threshold]
    assert kept and sum(not e.right for e in kept) / len(kept) <= 0.05


def test_a_worse_refit_does_not_replace_the_router_in_use():
    names = Signals.names()
    good = LogisticRouter(tuple(names), tuple([0.0] * len(names)), tuple([1.0] * len(names)),
                          tuple(10.0 if n == "best_mean" else 0.0 for n in names), -5.0)
    # Verdicts on the questions it fits on say the opposite of those held back: what it learns fails there.
    rng = random.Random(2)
    records = []
    for i in range(300):
        best = rng.random()
        right = (best > 0.5) if in_holdout(f"question {i}") else (best <= 0.5)
        records.append(_record(f"question {i}", "Yes." if right else "No.", "Yes.", _signals(best)))
    outcome = refit(examples(_entries(records), "v1")[0], 0, good, min_labels=60)
    assert outcome.auroc_current == pytest.approx(1.0) and outcome.auroc_new is not None and outcome.auroc_new < 0.1
    assert not outcome.install and "the current one stays" in outcome.reason


def test_too_few_verdicts_fit_nothing():
    outcome = refit(_synthetic(30, 0.05, seed=3), 0, None, min_labels=60)
    assert outcome.router is None and not outcome.install and "at least 60" in outcome.reason


def test_refit_cli_installs_the_router_the_daemon_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    state = tmp_path / "state"
    log = DistillLog(state / "distill.jsonl")
    rng = random.Random(4)
    shipped = load_policy("default")
    assert shipped is not None
    for i in range(240):
        best = rng.random()
        right = best > 0.5
        log.append(_record(f"question {i}", "Yes." if right else "No.", "Yes.", _signals(best)))
    log.close()
    assert len(list(read_records(state / "distill.jsonl"))) == 240
    runner = CliRunner()
    dry = runner.invoke(main, ["router", "refit", "--json", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["installed"] is False
    assert not (state / "router" / "router.json").exists()
    result = runner.invoke(main, ["router", "refit", "--json", "--no-reload"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["installed"] and outcome["labelled"] == 240 and outcome["student_version"] == "v1"
    refitted = load_policy("default")
    assert refitted is not None and refitted.trained_on == 240 - outcome["held_back"]
    assert refitted != shipped
    # The router of the question alone stays the shipped one; the shipped router of the first tokens, whose
    # threshold the refit did not place, no longer decides what streams (answers are held to their end).
    # (this log predates the first tokens' signals, so no early router could be placed for the new student).
    assert load_policy("default", early=True) is None
    assert outcome["early_installed"] is False and "no early router" in outcome["early"]
    assert load_policy("default", pre=True) == LogisticRouter.load(DEFAULT_ROUTER.with_name("default_router_pre.json"))
    (state / "router" / "router.json").unlink()
    assert load_policy("default", early=True) == LogisticRouter.load(DEFAULT_ROUTER.with_name("default_router_early.json"))


def test_a_new_students_held_out_answers_are_labelled_by_evaluates_agreement():
    from appliance.routing.refit import examples_from_evaluation

    answers = [{"prompt": "q1", "agreed": True, "signals": _signals(0.9)},
               {"prompt": "q2", "agreed": False, "signals": _signals(0.1)},
               {"prompt": "q3", "agreed": True, "signals": None}]  # a transformers run reads no signals
    found = examples_from_evaluation(answers)
    assert [(e.question, e.right, e.features["best_mean"]) for e in found] == [("q1", True, 0.9), ("q2", False, 0.1)]


def test_too_few_answers_to_refit_still_place_the_shipped_routers_threshold_for_a_new_student():
    from appliance.routing.refit import Example, rethreshold

    names = tuple(Signals.names())
    weights = tuple(4.0 if n == "best_mean" else 0.0 for n in names)
    # Its threshold keeps nothing (as the shipped one's does for the embedded student).
    shipped = LogisticRouter(names, (0.5,) * len(names), (0.2,) * len(names), weights, 0.0, 1.0, 1.0, trained_on=160)
    # A new student that is right when sure: 20 answers, the 8 least sure of them wrong.
    answers = [Example(f"q{i}", _signals(0.1 + 0.04 * i), i >= 8) for i in range(20)]
    outcome = rethreshold(answers, shipped)
    assert outcome is not None and (outcome.graded, outcome.kept) == (20, 12)
    placed = outcome.router
    assert placed.weights == shipped.weights and placed.trained_on == 160
    scores = [placed.probability([e.features[n] for n in names]) for e in answers]
    kept = [e for e, s in zip(answers, scores) if s >= placed.threshold]
    assert len(kept) == 12 and all(e.right for e in kept)  # every right answer, no wrong one
    assert placed.cache_threshold >= placed.threshold
    # Wrong whatever its confidence: nothing is kept.
    hopeless = rethreshold([Example(f"q{i}", _signals(0.05 * i), False) for i in range(20)], shipped)
    assert hopeless is not None and hopeless.router.threshold == 1.0 and hopeless.kept == 0
    assert rethreshold(answers[:9], shipped) is None  # too few to place anything


def test_refit_places_the_router_of_the_first_tokens_beside_the_refitted_one(tmp_path, monkeypatch):
    """With the first tokens' signals logged, a refit also decides what streams for this student."""
    from appliance.routing.decide import early_path
    from appliance import paths

    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    log = DistillLog(tmp_path / "state" / "distill.jsonl")
    rng = random.Random(5)
    for i in range(240):
        best = rng.random()
        # The first tokens tell a little less than the whole answer, but still which answers are right.
        log.append(_record(f"question {i}", "Yes." if best > 0.4 else "No.", "Yes.", _signals(best),
                           early=_signals(min(1.0, max(0.0, best + rng.uniform(-0.1, 0.1))))))
    log.close()
    result = CliRunner().invoke(main, ["router", "refit", "--json", "--no-reload"])
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["installed"] and outcome["early_installed"], outcome
    assert early_path(paths.refit_router_file()).is_file()
    early = load_policy("default", early=True)
    assert early is not None and early.threshold < 1.0 and early.cache_threshold == 1.0
    # It lets the sure answers stream and stops the unsure ones at their first tokens.
    names = early.features
    assert early.probability([_signals(0.95)[n] for n in names]) >= early.threshold
    assert early.probability([_signals(0.1)[n] for n in names]) < early.threshold


def test_the_early_router_is_placed_only_where_its_first_tokens_tell_right_from_wrong():
    from appliance.routing.decide import early_path
    from appliance.routing.refit import Example, place_early

    shipped = LogisticRouter.load(early_path(DEFAULT_ROUTER))
    whole = replace(LogisticRouter.load(DEFAULT_ROUTER), threshold=0.6)  # a router that keeps some answers
    assert place_early([Example(f"q{i}", _signals(0.1 * i), True) for i in range(9)], whole, shipped, 40).router is None
    # First tokens that all look alike, half of them wrong: no band streams at most 5% wrong, and a router
    # that lets nothing stream would escalate the answers the whole-answer router keeps: none is placed.
    coin = [Example(f"q{i}", _signals(0.5), i % 2 == 0) for i in range(40)]
    hopeless = place_early(coin, whole, shipped, 40)
    assert hopeless.router is None and "no band" in hopeless.reason
    # Right whenever the first tokens are sure: placed, and it never caches.
    sure = [Example(f"q{i}", _signals(0.025 * i), i >= 16) for i in range(40)]
    placed = place_early(sure, whole, shipped, 40)
    assert placed.router is not None and placed.router.threshold < 1.0 and placed.router.cache_threshold == 1.0
    # Beside a router that keeps nothing, nothing is decoded first: no early router, whatever its data.
    beside_none = place_early(sure, replace(whole, threshold=1.0), shipped, 40)
    assert beside_none.router is None and "keeps none" in beside_none.reason


def test_examples_of_the_first_tokens_come_from_their_own_signals():
    records = [_record("q1", "Yes.", "Yes.", _signals(0.9), early=_signals(0.7)),
               _record("q2", "No.", "Yes.", _signals(0.2))]  # logged before the first tokens' signals were
    found, _ = examples(_entries(records), "v1", early=True)
    assert [(e.question, e.features["best_mean"], e.right) for e in found] == [("q1", 0.7, True)]
    whole, _ = examples(_entries(records), "v1")
    assert [e.features["best_mean"] for e in whole] == [0.9, 0.2]


def test_a_retrain_places_both_routers_for_a_new_student_that_is_right_when_sure(tmp_path, monkeypatch):
    """evaluate's held-out answers (too few to refit) place the shipped weights' thresholds, whole and early."""
    from appliance import paths
    from appliance.distill.retrain_pipeline import RetrainHooks, router_stage
    from appliance.routing.decide import early_path

    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    shipped = load_policy("default")
    shipped_early = load_policy("default", early=True)
    assert shipped is not None and shipped_early is not None

    def sure(router: LogisticRouter, i: int) -> dict[str, float]:
        # Signals the shipped router scores from least to most sure as i grows: along its own weights.
        return {n: m + s * w * 0.05 * (i - 15) for n, m, s, w in zip(router.features, router.mean, router.scale,
                                                                      router.weights)}

    answers = [{"prompt": f"q{i}", "agreed": i >= 12, "signals": sure(shipped, i),
                "early_signals": sure(shipped_early, i)} for i in range(30)]
    notes: list[str] = []
    result = router_stage(answers, "default", RetrainHooks(note=notes.append))
    assert result.installed == paths.refit_router_file()
    whole, early = load_policy("default"), load_policy("default", early=True)
    assert whole is not None and not whole.keeps_none
    assert early is not None and not early.keeps_none and early.cache_threshold == 1.0
    assert early_path(paths.refit_router_file()).is_file() and "early router" in result.outcome
    # Each lets through only answers that were right.
    for router, field in ((whole, "signals"), (early, "early_signals")):
        kept = [a for a in answers if router.probability([a[field][n] for n in router.features]) >= router.threshold]
        assert kept and all(a["agreed"] for a in kept)
