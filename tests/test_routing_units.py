"""The router's pieces without a model: signals, grading, AUROC and operating points, the logistic
router, and the keep/cache decision."""

from __future__ import annotations

import math
import random

import pytest

from appliance.engine.llama import step_stats
from appliance.engine.types import StepStats, TokenEvent
from appliance.routing.decide import decide, load_policy
from appliance.routing.grading import correct
from appliance.routing.learned import LogisticRouter, fit
from appliance.routing.measures import auroc, cheapest, operating_points
from appliance.routing.signals import Signals, signals


def event(p_chosen: float, p_best: float, entropy: float, margin: float = 1.0) -> TokenEvent:
    return TokenEvent(0, "x", math.log(p_chosen), b"x", (), StepStats(math.log(p_best), margin, entropy))


def test_step_stats_match_the_distribution() -> None:
    import numpy as np

    logits = np.array([3.0, 1.0, 0.5, -2.0])
    p = np.exp(logits) / np.exp(logits).sum()
    stats = step_stats(logits)
    assert stats.max_logprob == pytest.approx(math.log(p.max()))
    assert stats.margin == pytest.approx(2.0)
    assert stats.entropy == pytest.approx(float(-(p * np.log(p)).sum()))


def test_a_sampled_unlikely_token_lowers_the_chosen_signal_but_not_the_best_one() -> None:
    sure_model_unlucky_dice = signals("q", [event(0.05, 0.9, 0.4)] * 10)
    unsure_model = signals("q", [event(0.3, 0.3, 2.5)] * 10)
    assert sure_model_unlucky_dice.chosen_q10 < unsure_model.chosen_q10
    assert sure_model_unlucky_dice.best_q10 > unsure_model.best_q10
    assert sure_model_unlucky_dice.neg_entropy_mean > unsure_model.neg_entropy_mean


def test_an_empty_answer_is_as_unsure_as_can_be() -> None:
    s = signals("猫可以吃巧克力吗？", [])
    assert s.best_q10 == 0.0 and s.chinese == 1.0 and len(s.vector()) == len(Signals.names())


@pytest.mark.parametrize(("answer", "gold", "aliases", "category", "right"), [
    ("12 times 12 is equal to 120.", "144", [], "arithmetic", False),
    ("17 times 23 is 391.", "391", [], "arithmetic", True),
    ("答案是三百九十一。", "391", ["三百九十一"], "arithmetic", True),
    ("The largest planet in the solar system is Neptune.", "Jupiter", [], "facts", False),
    ("Jupiter is the largest.", "Jupiter", [], "facts", True),
    ("Yes, the Sun is a star.", "yes", [], "yesno", True),
    ("No. The Sun is a star.", "yes", [], "yesno", False),
    ("不是，鲸鱼是哺乳动物。", "否", ["不是"], "yesno", True),
    ("是的。", "否", ["不是"], "yesno", False),
    ("Water is H2O.", "H2O", [], "definitions", True),
    ("北京是中国的首都。", "北京", [], "facts", True),
    ("Paris", "Paris", [], "facts", True),
    ("Parisian food is great", "Paris", [], "facts", False),
])
def test_grading(answer, gold, aliases, category, right) -> None:
    assert correct(answer, gold, aliases, category) is right


def test_auroc_against_brute_force() -> None:
    rng = random.Random(3)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.9]) for _ in range(60)]
    right = [rng.random() < s for s in scores]
    pos = [s for s, r in zip(scores, right) if r]
    neg = [s for s, r in zip(scores, right) if not r]
    brute = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auroc(scores, right) == pytest.approx(brute)
    assert math.isnan(auroc([0.1, 0.2], [True, True]))


def test_operating_points_and_the_cheapest_safe_one() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    right = [True, True, True, False, True, False]
    points = operating_points(scores, right)
    keep_all = points[0]
    assert keep_all.teacher_share == 0 and keep_all.wrong_kept == pytest.approx(2 / 6)
    assert keep_all.quality == pytest.approx(4 / 6)
    safe = cheapest(points, 0.05)
    assert safe.threshold == 0.7 and safe.wrong_kept == 0 and safe.teacher_share == pytest.approx(0.5)
    assert safe.quality == 1.0


def test_the_logistic_router_learns_a_separable_signal_and_round_trips(tmp_path) -> None:
    rng = random.Random(0)
    x = [[rng.gauss(1.0 if i % 2 else -1.0, 0.5), rng.gauss(0, 1)] for i in range(200)]
    y = [bool(i % 2) for i in range(200)]
    router = fit(["useful", "noise"], x, y)
    assert router.probability([2.0, 0.0]) > 0.9 > 0.1 > router.probability([-2.0, 0.0])
    assert abs(router.weights[0]) > 5 * abs(router.weights[1])
    router.save(tmp_path / "r.json")
    again = LogisticRouter.load(tmp_path / "r.json")
    assert again.probability([0.3, 1.0]) == pytest.approx(router.probability([0.3, 1.0]))
    with pytest.raises(ValueError):
        fit(["a"], [[1.0]] * 20, [True] * 20)


def test_decide_with_and_without_a_router() -> None:
    events = [event(0.9, 0.9, 0.2)] * 5
    by_rule = decide("q", events, None, threshold=0.5, quantile=0.1)
    assert by_rule.keep and by_rule.cache and by_rule.confidence.method == "quantile"
    names = Signals.names()
    neutral = dict(mean=tuple(0.0 for _ in names), scale=tuple(1.0 for _ in names))
    # A router that only trusts peaked steps, keeping at 0.5 and caching at 0.9.
    weights = tuple(8.0 if n == "best_q10" else 0.0 for n in names)
    policy = LogisticRouter(tuple(names), weights=weights, bias=-4.0, threshold=0.5, cache_threshold=0.9,
                            **neutral)
    sure = decide("q", [event(0.95, 0.95, 0.1)] * 5, policy, 0.0, 0.1)
    middling = decide("q", [event(0.6, 0.6, 1.0)] * 5, policy, 0.0, 0.1)
    unsure = decide("q", [event(0.2, 0.2, 3.0)] * 5, policy, 0.0, 0.1)
    assert (sure.keep, sure.cache) == (True, True) and sure.confidence.method == "router"
    assert (middling.keep, middling.cache) == (True, False)
    assert (unsure.keep, unsure.cache) == (False, False)


def test_load_policy_settings(tmp_path) -> None:
    assert load_policy("off") is None
    with pytest.raises(FileNotFoundError):
        load_policy(str(tmp_path / "missing.json"))


def test_pre_route_threshold_sends_only_questions_the_student_would_fail() -> None:
    from appliance.routing.measures import pre_route_threshold

    scores = [0.05, 0.1, 0.15, 0.2, 0.5, 0.6, 0.9]
    right = [False, False, False, True, False, True, True]
    assert pre_route_threshold(scores, right, 0.0) == 0.2  # below 0.2: three questions, none right
    assert pre_route_threshold(scores, right, 0.25) == 0.6  # five sent, one right (20%)
    assert pre_route_threshold([0.1, 0.2], [True, True], 0.1) == 0.0


def test_prompt_features_read_the_question_alone() -> None:
    from appliance.routing.signals import PROMPT_FEATURES, prompt_features

    zh = prompt_features("Python代码 print(len('ab')) 的输出是什么？")
    en = prompt_features("What is the capital of France?")
    assert len(zh) == len(PROMPT_FEATURES)
    assert zh[1] == 1.0 and en[1] == 0.0 and zh[3] > en[3] == 0.0


def test_out_of_fold_scores_are_not_flattered_by_fitting_on_the_same_answers() -> None:
    import numpy as np

    from appliance.routing.learned import out_of_fold

    rng = np.random.default_rng(0)
    names = [f"noise{i}" for i in range(30)]
    x = rng.standard_normal((48, 30)).tolist()
    y = [bool(v) for v in rng.integers(0, 2, 48)]
    in_sample = auroc([fit(names, x, y).probability(row) for row in x], y)
    held_out = auroc(out_of_fold(names, x, y), y)
    # Labels that are noise: the router fitted on them "separates" them; scored out of fold it cannot.
    assert in_sample > 0.85 and held_out < 0.7

    signal = rng.standard_normal(60)
    x2 = [[s, n] for s, n in zip(signal, rng.standard_normal(60))]
    y2 = [bool(s > 0) for s in signal]
    assert auroc(out_of_fold(["signal", "noise"], x2, y2), y2) > 0.95


def test_a_router_keeps_nothing_only_when_no_probability_reaches_its_threshold() -> None:
    from appliance.routing.decide import keeps_nothing

    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    assert keeps_nothing(LogisticRouter(names, zeros, ones, zeros, 30.0, 1.0, 1.0))
    assert not keeps_nothing(LogisticRouter(names, zeros, ones, zeros, -30.0, 0.99, 1.0))
    assert not keeps_nothing(None)  # the quantile rule: its own threshold decides


def test_the_explored_share_is_that_share_and_the_same_for_a_question_asked_again() -> None:
    from appliance.routing.decide import explores

    questions = [f"question number {i}?" for i in range(4000)]
    assert not any(explores(q, 0.0) for q in questions) and all(explores(q, 1.0) for q in questions)
    share = sum(explores(q, 0.1) for q in questions) / len(questions)
    assert 0.08 < share < 0.12
    assert [explores(q, 0.1) for q in questions[:200]] == [explores(q, 0.1) for q in questions[:200]]
    assert explores("什么是知识蒸馏？", 0.5) == explores("什么是知识蒸馏？", 0.5)
