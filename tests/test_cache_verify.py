"""The cache's check of a neighbour: closed grammatical classes (pure), then the real embedder on spans.

The pair sets in tests/data are split: thresholds were chosen on the dev half; the test half is only
reported (scripts/bench_cache.py), never asserted here, so it stays a measurement.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cache import segment
from appliance.cache.embedder import load_embedder, span_similarity
from appliance.cache.numbers import chinese_numeral, number_of
from appliance.cache.verify import VerifyParams, analyze, check_match, compare, normalize_prompt

DATA = Path(__file__).parent / "data"
PARAMS = VerifyParams()


@pytest.fixture(scope="module")
def similarity():
    return span_similarity(load_embedder(None))  # the cache's own judge of differing spans


def blocked(a: str, b: str) -> str:
    return compare(analyze(a), analyze(b), PARAMS).blocked


# --- pure: words, numbers, coverage ----------------------------------------------------------------

def test_chinese_is_segmented_into_words_and_english_contractions_expand() -> None:
    assert segment.words("猫可以吃巧克力吗？") == ["猫", "可以", "吃", "巧克力", "吗"]
    assert segment.words("What's the capital?") == segment.words("what is the capital")
    assert segment.words("why cant dogs eat it") == segment.words("Why can't dogs eat it")
    assert segment.words("Ｇｉｔ分支") == ["git", "分支"]  # full-width letters folded


@pytest.mark.parametrize(("text", "value"), [("三百五十", 350), ("十二", 12), ("两万", 20000), ("二〇二四", 2024),
                                             ("一千零五", 1005), ("十", 10)])
def test_chinese_numerals(text: str, value: int) -> None:
    assert chinese_numeral(text) == value


def test_numbers_in_any_form_compare_equal() -> None:
    assert number_of("three") == number_of("3") == number_of("三个") == "3"
    assert number_of("7b") != number_of("70b")
    assert number_of("一下") is None and number_of("cat") is None


def test_scripts_the_checks_were_not_built_for_are_uncovered() -> None:
    assert segment.coverage("Как удалить ветку Git?").covered is False
    assert "cyrillic" in segment.coverage("Как удалить ветку Git?").reason
    assert segment.coverage("गिट शाखा कैसे हटाएं").covered is False
    assert segment.coverage("如何删除Git分支？ (v2.4, 100%)").covered is True


# --- pure: what blocks outright --------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b", "reason"), [
    ("Is a 7B model enough?", "Is a 70B model enough?", "numbers"),
    ("三个人够吗？", "四个人够吗？", "numbers"),
    ("Can I freeze cooked rice?", "Can't I freeze cooked rice?", "negation"),
    ("猫可以吃葡萄吗？", "猫不可以吃葡萄吗？", "negation"),
    ("Who won the election?", "Who will win the election?", "tense"),
    ("谁赢了比赛？", "谁会赢比赛？", "tense"),
    ("What was the capital of Brazil?", "What is the capital of Brazil?", "tense"),
    ("How do I convert USD to EUR?", "How do I convert EUR to USD?", "order"),
    ("北京比上海大吗？", "上海比北京大吗？", "order"),
    ("Did the dog bite the cat?", "Did the cat bite the dog?", "order"),
])
def test_grammar_that_flips_the_answer_blocks(a: str, b: str, reason: str) -> None:
    assert reason in blocked(a, b)
    assert reason in blocked(b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("How do I reverse a list in Python?", "In Python, how do I reverse a list?"),
    ("What's the capital of Canada?", "what is the capital of canada"),
    ("如何删除Git分支？", "如何删除Git分支"),
])
def test_moved_clauses_and_spelling_do_not_block(a: str, b: str) -> None:
    assert blocked(a, b) == ""


def test_a_content_word_only_one_side_has_blocks() -> None:
    assert "raw" in blocked("Can I eat eggs raw?", "Can I eat eggs?")


# --- with the embedder -----------------------------------------------------------------------------

@pytest.mark.parametrize(("a", "b"), [
    ("什么是知识蒸馏？", "什么是模型量化？"),
    ("猫可以吃巧克力吗？", "狗可以吃巧克力吗？"),
    ("如何删除Git分支？", "如何创建Git分支？"),
    ("水的沸点是多少度？", "水的冰点是多少度？"),
    ("How do I encrypt a file?", "How do I decrypt a file?"),
])
def test_the_reported_wrong_hits_now_miss(similarity, a: str, b: str) -> None:
    assert not check_match(a, b, similarity).ok
    assert not check_match(b, a, similarity).ok


@pytest.mark.parametrize(("a", "b"), [
    ("Should I keep bread in the fridge?", "Should I keep bread in the refrigerator?"),
    ("冰箱里的剩饭能放几天？", "冰箱里的剩饭能放几天"),
    ("What is the capital of Australia?", "what's the capital of australia"),
])
def test_paraphrases_hit(similarity, a: str, b: str) -> None:
    assert check_match(a, b, similarity).ok, check_match(a, b, similarity).reason


def test_uncovered_text_is_never_matched(similarity) -> None:
    check = check_match("Как удалить ветку Git?", "Как удалить ветку Git?", similarity)
    assert not check.ok and "cyrillic" in check.reason


def _pairs(split: str) -> list[dict]:
    rows = []
    for lang in ("en", "zh"):
        path = DATA / f"cache_pairs_{lang}.jsonl"
        rows += [json.loads(line) | {"lang": lang} for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    return [r for r in rows if r["split"] == split]


def test_the_dev_half_it_was_tuned_on_has_no_false_hit(similarity) -> None:
    changes = [r for r in _pairs("dev") if r["label"] == "change"]
    assert len(changes) >= 80
    false_hits = [(r["a"], r["b"]) for r in changes if check_match(r["a"], r["b"], similarity).ok]
    assert false_hits == []


def test_normalize_prompt_puts_the_last_user_turn_first() -> None:
    text = normalize_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Why?"}])
    assert text.startswith("Why?") and "system: Be brief." in text and "Hello" not in text


@pytest.mark.parametrize("a, b, swap", [
    ("什么是机器学习？", "机器学习是什么？", False),        # an identity asked either way round
    ("哪个是最大的行星？", "最大的行星是哪个？", False),
    ("谁打了小明？", "小明打了谁？", True),                # around another verb: who did what to whom
    ("谁是张三的父亲？", "张三是谁的父亲？", True),        # the question word moved inside a phrase
    ("谁喜欢小红？", "小红喜欢谁？", True),
])
def test_a_question_word_may_trade_places_only_across_the_copula(a: str, b: str, swap: bool) -> None:
    assert (blocked(a, b) == "word order swaps roles") is swap


@pytest.mark.parametrize("a, b, ok", [
    ("这家店周末开门吗？", "这家店周末开门呢？", True),   # mood particles (the lexicon's `y`) set the tone only
    ("猫能吃葡萄吗？", "猫能吃葡萄嘛？", True),
    ("你明天有空吧？", "你明天有空吗？", True),
    ("他去过北京吗？", "他去了北京吗？", False),          # aspect particles are not mood: 过 is not 了
    ("这个药饭前吃吗？", "这个药饭后吃吗？", False),
])
def test_sentence_final_mood_particles_may_trade_places(similarity, a: str, b: str, ok: bool) -> None:
    assert check_match(a, b, similarity).ok is ok


def test_mood_particles_come_from_the_segmenters_lexicon() -> None:
    from appliance.cache.segment import mood_particle

    assert all(mood_particle(w) for w in "吗呢吧嘛")
    assert not any(mood_particle(w) for w in ("了", "过", "的", "前", "不", "而已"))
