"""The pre-router's memory: the student's record on the nearest past questions (pure), and where it comes from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from appliance.routing.decide import load_past_outcomes, pre_path, pre_route_probability
from appliance.routing.learned import LogisticRouter
from appliance.routing.outcomes import (OUTCOME_FEATURES, Outcome, PastOutcomes, outcomes_path, read_outcomes,
                                        write_outcomes)
from appliance.routing.signals import PROMPT_FEATURES


def _unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_the_nearest_questions_record_decides_and_far_ones_barely_count():
    vectors = np.stack([_unit(1, 0.05 * i, 0) for i in range(5)] + [_unit(0, 0.05 * i, 1) for i in range(5)])
    memory = PastOutcomes(vectors, [False] * 5 + [True] * 5, neighbours=5)
    near_failures, _ = memory.features(_unit(1, 0, 0))
    near_successes, similarity = memory.features(_unit(0, 0, 1))
    assert memory.prior == 0.5
    assert near_failures < 0.3 < 0.7 < near_successes
    assert similarity == pytest.approx(1.0, abs=1e-5)
    # A question like none of them: the neighbours weigh nothing and the overall share is left.
    share, similarity = memory.features(_unit(0, -1, 0))
    assert share == pytest.approx(0.5) and similarity <= 0.0


def test_few_neighbours_are_shrunk_towards_the_overall_share():
    vectors = np.stack([_unit(1, 0, 0)] + [_unit(0, 1, 0)] * 9)
    memory = PastOutcomes(vectors, [True] + [False] * 9, neighbours=1, prior_weight=3.0)
    share, _ = memory.features(_unit(1, 0, 0))
    assert share == pytest.approx((1.0 + 3.0 * 0.1) / (1.0 + 3.0))  # one right neighbour is not a certainty


def test_a_question_in_the_memory_can_be_left_out_of_its_own_score():
    vectors = np.stack([_unit(1, 0, 0), _unit(1, 0.1, 0)])
    memory = PastOutcomes(vectors, [True, False], questions=["a", "b"], neighbours=1, prior_weight=0.0)
    assert memory.features(_unit(1, 0, 0))[0] == 1.0
    assert memory.features(_unit(1, 0, 0), skip="a")[0] == 0.0


def test_without_vectors_only_the_overall_share_is_known():
    assert PastOutcomes(None, [True, False, False, False]).features(_unit(1, 0, 0)) == [0.25, 0.0]
    assert PastOutcomes(None, []).features(None) == [0.5, 0.0]
    with pytest.raises(ValueError, match="2 vectors for 3 outcomes"):
        PastOutcomes(np.zeros((2, 3)), [True, False, True])


def test_only_a_pre_router_fitted_with_the_record_reads_it():
    names = PROMPT_FEATURES + OUTCOME_FEATURES
    weights = tuple(10.0 if n == "past_right_share" else 0.0 for n in names)
    with_record = LogisticRouter(names, (0.0,) * len(names), (1.0,) * len(names), weights, -5.0)
    failures = PastOutcomes(np.stack([_unit(1, 0, 0)] * 4), [False] * 4, prior_weight=0.0)
    assert pre_route_probability(with_record, "What is 3 times 4?", failures, _unit(1, 0, 0)) < 0.01
    form_only = LogisticRouter(PROMPT_FEATURES, (0.0,) * 4, (1.0,) * 4, (0.0,) * 4, 2.0)
    assert pre_route_probability(form_only, "What is 3 times 4?", failures, _unit(1, 0, 0)) == pytest.approx(
        1 / (1 + np.exp(-2.0)))


def test_outcomes_file_round_trips_and_skips_bad_lines(tmp_path):
    path = tmp_path / "x_pre_outcomes.jsonl"
    write_outcomes(path, [Outcome("什么是蒸馏？", True), Outcome("What is 3 times 4?", False)])
    with path.open("a", encoding="utf-8") as f:
        f.write("not json\n{\"question\": \"no label\"}\n")
    assert read_outcomes(path) == [Outcome("什么是蒸馏？", True), Outcome("What is 3 times 4?", False)]
    assert outcomes_path(tmp_path / "router_pre.json") == tmp_path / "router_pre_outcomes.jsonl"


def _embed(texts: list[str]) -> np.ndarray:
    """A stand-in embedder that places questions with 'times' on one axis and the rest on another."""
    return np.stack([_unit(1, 0, 0) if "times" in t else _unit(0, 1, 0) for t in texts])


def test_the_memory_adds_what_the_teacher_graded_in_the_log_for_the_serving_student(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    names = PROMPT_FEATURES + OUTCOME_FEATURES
    router = tmp_path / "router.json"
    LogisticRouter(names, (0.0,) * len(names), (1.0,) * len(names), (0.0,) * len(names), 0.0).save(router)
    LogisticRouter(names, (0.0,) * len(names), (1.0,) * len(names), (0.0,) * len(names), 0.0).save(pre_path(router))
    write_outcomes(outcomes_path(pre_path(router)), [Outcome("What is 2 times 2?", False)])
    (tmp_path / "state").mkdir()

    def entry(question: str, student: str, teacher: str, version: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": question}],
                           "student": {"model": "s", "version": version, "text": student,
                                       "signals": dict.fromkeys(PROMPT_FEATURES, 0.0)},
                           "teacher": {"text": teacher, "cost_usd": 0.001}})

    (tmp_path / "state" / "distill.jsonl").write_text("\n".join([
        entry("Is the sun a star?", "Yes.", "Yes, it is.", "v2"),
        entry("Is a whale a fish?", "Yes.", "No.", "v2"),
        entry("Is ice cold?", "No.", "Yes.", "v1"),          # another student's record
    ]) + "\n", encoding="utf-8")
    memory = load_past_outcomes(str(router), _embed, "v2")
    assert memory is not None
    assert memory.questions == ("What is 2 times 2?", "Is the sun a star?", "Is a whale a fish?")
    assert list(memory.right) == [0.0, 1.0, 0.0]
    # Another student than the one the shipped record is of (a retrained or brought one): its own record only.
    own = load_past_outcomes(str(router), _embed, "v2", shipped_student=False)
    assert own is not None and own.questions == ("Is the sun a star?", "Is a whale a fish?")


def test_a_pre_router_without_the_record_needs_no_memory(tmp_path):
    router = tmp_path / "router.json"
    form = LogisticRouter(PROMPT_FEATURES, (0.0,) * 4, (1.0,) * 4, (0.0,) * 4, 0.0)
    form.save(router)
    form.save(pre_path(router))
    assert load_past_outcomes(str(router), _embed, None) is None
    assert load_past_outcomes("off", _embed, None) is None


def test_only_the_newest_graded_questions_are_read_and_kept_in_order(tmp_path):
    from appliance.routing.outcomes import logged_outcomes

    def entry(i: int) -> str:
        graded = i % 3 != 0  # every third answer is free text the teacher's cannot grade
        return json.dumps({"messages": [{"role": "user", "content": f"q{i}"}],
                           "student": {"model": "s", "version": "v1", "text": "Yes." if i % 2 else "No.",
                                       "signals": {"best_mean": 0.5}},
                           "teacher": {"text": "Yes." if graded else "A long answer " * 20, "cost_usd": 0.001}})

    log = tmp_path / "distill.jsonl"
    log.write_text("".join(entry(i) + "\n" for i in range(300)), encoding="utf-8")
    everything = logged_outcomes(log, "v1", limit=10_000)
    assert len(everything) == 200 and everything[0].question == "q1" and everything[-1].question == "q299"
    newest = logged_outcomes(log, "v1", limit=10)
    assert newest == everything[-10:]
    assert [o.right for o in newest] == [o.question.endswith(("1", "3", "5", "7", "9")) for o in newest]
    assert logged_outcomes(log, "v1", limit=0) == [] and logged_outcomes(tmp_path / "none.jsonl", "v1") == []
