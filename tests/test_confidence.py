import math

import pytest

from appliance.routing.confidence import confidence


@pytest.mark.parametrize(
    "probs, expected_score",
    [
        # Every token certain: full confidence.
        ([1.0, 1.0, 1.0], 1.0),
        # One doubtful token among many sure ones pulls the low quantile down; the mean would hide it.
        ([0.99] * 9 + [0.05], 0.05 + (0.99 - 0.05) * 0.9),
        # A single token: the quantile is that token.
        ([0.4], 0.4),
    ],
)
def test_score_is_a_low_quantile_of_token_probabilities(probs, expected_score):
    result = confidence([math.log(p) for p in probs], quantile=0.1)
    assert result.score == pytest.approx(expected_score)
    assert result.min_prob == pytest.approx(min(probs))
    assert result.n_tokens == len(probs)


def test_one_bad_token_lowers_the_score_more_than_the_mean():
    sure = confidence([math.log(0.95)] * 20)
    shaky = confidence([math.log(0.95)] * 17 + [math.log(0.02)] * 3)  # 15% of tokens doubtful
    assert shaky.score < 0.05 and sure.score > 0.9
    assert shaky.mean_prob > 0.5  # the (geometric) mean alone would still look passable


def test_empty_answer_scores_zero():
    assert confidence([]).score == 0.0
