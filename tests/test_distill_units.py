"""Pure parts of the distillation pipeline: reasoning split, rule filters, split, metrics, log records."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from appliance.distill.filters import detect_language, rule_reason
from appliance.distill.metrics import (ItemResult, normalize, recommend_threshold, rule_for, rule_score, summarize,
                                       threshold_curve, token_f1)
from appliance.distill.reasoning import split_reasoning
from appliance.distill.records import Record
from appliance.distill import DistillError
from appliance.distill.retrain import build_dataset, passes_gate, record_from_log
from appliance.protocol.log_entry import LogEntry
from appliance.distill.split import heldout_count, stratified_split
from appliance.protocol.distill_log import DistillLog


@pytest.mark.parametrize("text, expected", [
    ("<thinking>add them</thinking>\n4", ("add them", "4")),
    ("4", (None, "4")),                                              # no block: all answer
    ("<THINKING>a</THINKING> b <thinking>c</thinking>", ("a\n\nc", "b")),  # several blocks, any case
    ("<thinking>cut off mid-thou", ("cut off mid-thou", "")),        # unclosed (truncated): no answer
    ("<thinking></thinking>x", (None, "x")),                          # empty block is no reasoning
])
def test_split_reasoning(text, expected):
    assert split_reasoning(text) == expected


def rec(answer: str, prompt: str = "What is the capital of France, and why is it the capital?", **kw) -> Record:
    return Record(prompt=prompt, answer=answer, **kw)


@pytest.mark.parametrize("record, reason", [
    (rec("Paris is the capital of France."), None),
    (rec("   "), "empty"),
    (rec("Paris is the", finish_reason="length"), "truncated"),
    (rec("I'm sorry, but I can't help with that request."), "refusal"),
    (rec("As an AI language model, I have no opinion."), "refusal"),
    (rec("Sorry for the wait: Paris."), None),                           # "sorry" alone is not a refusal
    (rec("抱歉，我无法回答这个问题。", prompt="法国的首都是哪里？为什么？"), "refusal"),
    (rec("作为一个AI语言模型，我没有个人观点。", prompt="你怎么看巴黎？请说说理由。"), "refusal"),
    (rec("抱歉让你久等了：巴黎是法国的首都。", prompt="法国的首都是哪里？为什么？"), None),
    (rec("我不能确定，但巴黎可能是答案。", prompt="法国的首都是哪里？为什么？"), None),
    # The teacher speaking of itself: the student would learn to say it.
    (rec("I'm a large language model, trained by Google.", prompt="Who are you? Tell me about yourself."), "identity"),
    (rec("I am Gemini, happy to help. Paris is the capital.", teacher_model="gemini-2.5-flash"), "identity"),
    (rec("我是Gemini，由谷歌开发的大型语言模型。", prompt="你是谁？介绍一下你自己。",
         teacher_model="gemini-2.5-flash"), "identity"),
    (rec("我是一个由OpenAI训练的语言模型。", prompt="你是谁？介绍一下你自己。"), "identity"),
    (rec("Gemini is a family of models made by Google DeepMind.", prompt="What is Gemini? Tell me about it.",
         teacher_model="gemini-2.5-flash"), None),                         # about the teacher, not as it
    (rec("Gemini 是谷歌推出的一系列模型。", prompt="Gemini是什么？介绍一下。", teacher_model="gemini-2.5-flash"), None),
    (rec("I'm ChatGPT. Paris is the capital of France.", teacher_model="gpt-4o-mini"), "identity"),
    (rec("La capitale de la France est Paris, et elle est très belle."), "wrong_language"),
    (rec("Paris"), None),                                                  # too short to tell: kept
    (rec('{"a": 1}', format="json"), None),
    (rec('```json\n{"a": 1}\n```', format="json"), None),                 # a fenced JSON answer is JSON
    (rec("{'a': 1}", format="json"), "invalid_json"),
    (rec("Die Hauptstadt ist Paris und sie ist sehr alt.", language="de"), None),  # the item's own language wins
])
def test_rule_filters(record, reason):
    assert rule_reason(record) == reason


def test_language_rule_any_turns_the_check_off():
    assert rule_reason(rec("La capitale de la France est Paris, et elle est très belle."), "any") is None
    assert detect_language("Привет, как дела у тебя сегодня?") == "ru"


def test_stratified_split_keeps_proportions_and_is_order_independent():
    records = [Record(prompt=f"q{i}", answer="a", category=c) for c, n in (("a", 60), ("b", 30), ("c", 10), ("d", 1))
               for i in range(n)]
    train, held = stratified_split(records, 0.2, seed=3)
    assert Counter(r.category for r in held) == {"a": 12, "b": 6, "c": 2}  # "d" has one: all of it trains
    assert Counter(r.category for r in train) == {"a": 48, "b": 24, "c": 8, "d": 1}
    again = stratified_split(list(reversed(records)), 0.2, seed=3)
    assert [r.key for r in again[1]] == [r.key for r in held]
    assert {r.key for r in stratified_split(records, 0.2, seed=4)[1]} != {r.key for r in held}
    assert [heldout_count(n, 0.1) for n in (0, 1, 2, 5, 30)] == [0, 0, 1, 1, 3]


def test_scoring_rules():
    assert rule_for("positive") == "exact" and rule_for("{}", "json") == "json"
    assert rule_for("a long answer with many more words than five") == "judge"
    assert normalize("<thinking>x</thinking> Positive. ") == "positive"
    assert rule_score("exact", "positive", "Positive!") == 1.0
    assert rule_score("json", '{"a": [1, 2]}', '```json\n{"a":[1,2]}\n```') == 1.0
    assert rule_score("json", '{"a": 1}', "not json") == 0.0
    assert rule_score("judge", "x", "y") is None
    assert token_f1("the cat sat", "the cat sat") == 1.0 and token_f1("a b", "c d") == 0.0
    # Chinese is written without spaces: a paragraph is many words, not one, so it goes to the judge,
    # and the judge's stand-in counts the words two answers share.
    paragraph = "机器学习是人工智能的一个分支，它让计算机从数据中学习。"
    assert rule_for(paragraph) == "judge" and rule_for("正面") == "exact"
    assert 0.8 < token_f1(paragraph, "机器学习是人工智能的分支，让计算机从数据学习。") < 1.0
    assert token_f1(paragraph, "今天天气很好。") == 0.0
    assert rule_score("exact", "北京", "北京。") == 1.0 and normalize("「正面」") == "正面"
    assert rule_score("exact", "3.5", "3.5!") == 1.0


def item(category, student, teacher=1.0, confidence=0.5, cost=1.0):
    return ItemResult(category, student, teacher, student >= 0.5, confidence, cost)


def test_retention_and_flags():
    items = [item("math", 1.0)] * 9 + [item("math", 0.0)] + [item("chat", 1.0)] * 20
    per, overall = summarize(items)
    math = next(c for c in per if c.category == "math")
    assert math.retention == pytest.approx(0.9) and math.gap_points == pytest.approx(10) and math.flagged
    assert not next(c for c in per if c.category == "chat").flagged
    assert overall.retention == pytest.approx(29 / 30) and not overall.flagged  # a 3.3-point gap


def test_threshold_is_the_cheapest_that_meets_the_target():
    # Confident answers are right, unsure ones wrong: sending the two unsure ones to the teacher is enough.
    items = [item("x", 1.0, confidence=c) for c in (0.9, 0.8, 0.7, 0.6)] + \
            [item("x", 0.0, confidence=c) for c in (0.2, 0.1)]
    curve = threshold_curve(items)
    assert curve[0].threshold == 0.0 and curve[0].quality == pytest.approx(4 / 6) and curve[0].cost_usd == 0
    assert curve[-1].teacher_share == 1.0 and curve[-1].quality == 1.0
    best = recommend_threshold(curve, 1.0)
    assert best.threshold == pytest.approx(0.6) and best.teacher_share == pytest.approx(2 / 6) and best.cost_usd == 2
    assert recommend_threshold(curve, 0.6).threshold == 0.0  # the student alone already meets 60%
    assert recommend_threshold(threshold_curve([item("x", 0.0, teacher=0.5)]), 0.9) is None


def test_log_records_become_training_records_without_heldout_questions(tmp_path):
    log = DistillLog(tmp_path / "distill.jsonl")
    teacher = {"model": "gemini-2.5-flash", "text": "Paris is the capital.", "input_tokens": 9, "output_tokens": 4,
               "cost_usd": 0.001}
    chats = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "What is the capital of Italy?"}],
        [{"role": "user", "content": "Held-out question?"}],
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "x"}],  # no question last
    ]
    for messages in chats:
        log.append({"messages": messages, "teacher": teacher, "student": {}})
    log.close()
    first = record_from_log(LogEntry.from_json(json.loads((tmp_path / "distill.jsonl").read_text().splitlines()[0])))
    assert (first.role, first.prompt, first.answer, first.cost_usd) == ("Be brief.", "What is the capital of France?",
                                                                         "Paris is the capital.", 0.001)
    held = [Record(prompt="Held-out question?", answer="yes")]
    records, dropped = build_dataset(tmp_path / "distill.jsonl", held, [], embedder=None)
    assert [r.prompt for r in records] == ["What is the capital of France?", "What is the capital of Italy?"]
    assert records[1].history == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"})
    assert dropped == {"heldout": 1}
    assert passes_gate(0.95, 0.95) and not passes_gate(0.90, 0.95) and passes_gate(0.5, None)
    assert not passes_gate(None, 0.5)


def test_install_swaps_a_gguf_file_or_an_export_folder(tmp_path):
    from appliance.distill.retrain import install

    new_export = tmp_path / "export"
    new_export.mkdir()
    (new_export / "student.gguf").write_bytes(b"new")
    (new_export / "manifest.json").write_text("{}")
    served = tmp_path / "serve" / "student.gguf"
    served.parent.mkdir()
    served.write_bytes(b"old")
    install(new_export / "student.gguf", new_export, served)
    assert served.read_bytes() == b"new" and served.with_name("student.gguf.prev").read_bytes() == b"old"
    folder = tmp_path / "current"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"old": 1}')
    install(new_export / "student.gguf", new_export, folder / "manifest.json")
    assert (folder / "student.gguf").read_bytes() == b"new"
    assert (tmp_path / "current.prev" / "manifest.json").read_text() == '{"old": 1}'
    fresh = tmp_path / "state" / "student"  # retrain's own place, not made yet: it becomes the export folder
    install(new_export / "student.gguf", new_export, fresh)
    assert (fresh / "student.gguf").read_bytes() == b"new" and (fresh / "manifest.json").is_file()


def _inputs(**changes):
    from appliance.distill.retrain_plan import RetrainInputs

    base = dict(usable=300, seen_at_last=0, retrain_after=200, min_records=20, heldout=30, heldout_configured=False,
                regressed=None, mode="due")
    return RetrainInputs(**{**base, **changes})


def test_retrain_is_due_on_enough_new_records_or_a_regression():
    from appliance.distill.retrain_plan import plan_retrain

    assert plan_retrain(_inputs()).retrain
    quiet = plan_retrain(_inputs(seen_at_last=150))
    assert not quiet.retrain and "150 new teacher-labelled records" in quiet.reasons[0]
    assert plan_retrain(_inputs(seen_at_last=150, regressed=True)).retrain
    assert not plan_retrain(_inputs(seen_at_last=150, regressed=False)).retrain
    stale = plan_retrain(_inputs(seen_at_last=300, regressed=True))
    assert not stale.retrain and "nothing new has been logged" in stale.reasons[0]
    # A log that was cleared or rotated: everything in it is new.
    assert plan_retrain(_inputs(usable=250, seen_at_last=900)).retrain


def test_retrain_if_regressed_ignores_new_records_and_a_hand_run_always_trains():
    from appliance.distill.retrain_plan import plan_retrain

    assert not plan_retrain(_inputs(mode="regressed")).retrain
    assert plan_retrain(_inputs(mode="regressed", regressed=True)).retrain
    assert "holds up" in plan_retrain(_inputs(mode="regressed", regressed=False)).describe()
    assert plan_retrain(_inputs(mode="always", seen_at_last=299)).retrain


def test_retrain_draws_a_heldout_set_once_and_waits_while_data_is_short():
    from appliance.distill.retrain_plan import plan_retrain

    first = plan_retrain(_inputs(heldout=0))
    assert first.retrain and first.draw_heldout == 30  # 10% of 300
    assert plan_retrain(_inputs(heldout=0, heldout_configured=True)).draw_heldout == 0
    short = plan_retrain(_inputs(usable=35, heldout=0, mode="always"))
    assert not short.retrain and short.draw_heldout == 0
    assert "35 teacher-labelled records in the log, 20 needed to train plus 20 to hold out" in short.reasons[0]


def test_retrain_state_survives_a_torn_file(tmp_path):
    from appliance.protocol.retrain_state import STATE_FILE, read_state, write_state

    assert read_state(tmp_path).seen == 0
    write_state(tmp_path, 321, tmp_path / "student")
    assert read_state(tmp_path).seen == 321 and read_state(tmp_path).student == str(tmp_path / "student")
    (tmp_path / STATE_FILE).write_text('{"seen": 3')
    assert read_state(tmp_path).seen == 0


def test_a_retrained_student_replaces_the_embedded_default(tiny_export, monkeypatch, tmp_path):
    import shutil

    from appliance import paths
    from appliance.config import StudentConfig
    from appliance.engine.model_source import resolve_student

    export, _ = tiny_export
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    assert resolve_student(StudentConfig(quant="q4_1")).quant == "q4_1"  # the embedded default, as shipped
    shutil.copytree(export, paths.retrained_student_dir())
    source = resolve_student(StudentConfig())
    assert source.format == "gguf" and source.path.is_relative_to(paths.retrained_student_dir())


def test_label_categories_are_balanced_by_repeating_rarer_labels_within_a_cap():
    from collections import Counter

    from appliance.distill.split import balance_labels

    sentiment = [Record(prompt=f"review {i}", answer="positive" if i < 12 else "negative", category="s")
                 for i in range(15)]
    open_answers = [Record(prompt=f"q{i}", answer=f"a long answer number {i}", category="open") for i in range(5)]
    out = balance_labels(sentiment + open_answers, max_factor=4)
    counts = Counter(r.answer for r in out if r.category == "s")
    assert counts == {"positive": 12, "negative": 12}  # 3 negatives, each 4 times
    assert [r for r in out if r.category == "open"] == open_answers
    capped = Counter(r.answer for r in balance_labels(sentiment, max_factor=2) if r.category == "s")
    assert capped == {"positive": 12, "negative": 6}
    assert balance_labels(sentiment, max_factor=1) == sentiment
    # The repeats depend on the records and the seed, not on the order they came in.
    assert sorted(r.prompt for r in balance_labels(sentiment, 4)) == sorted(
        r.prompt for r in balance_labels(list(reversed(sentiment)), 4))


def test_datasets_move_to_and_from_openai_messages_jsonl(tmp_path):
    from click.testing import CliRunner

    from appliance.cli import main
    from appliance.distill.records import read_dataset, record_from_messages, write_dataset

    chat = Record(prompt="那第二个呢？", answer="第二个是上海。", role="Answer briefly.",
                  history=({"role": "user", "content": "中国最大的两个城市？"},
                           {"role": "assistant", "content": "第一个是重庆。"}))
    plain = Record(prompt="What is 2+2?", answer="4")
    write_dataset(tmp_path / "train.jsonl", [chat, plain])
    result = CliRunner().invoke(main, ["dataset", "export", str(tmp_path), "--out", str(tmp_path / "openai.jsonl")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "openai.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[1] == {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    # Read back, by any command that reads a dataset: the same prompts, personas, turns and answers.
    again = read_dataset(tmp_path / "openai.jsonl")
    assert [(r.prompt, r.answer, r.role, r.history, r.key) for r in again] == \
        [(r.prompt, r.answer, r.role, r.history, r.key) for r in [chat, plain]]
    for bad, words in ((["user says hi"], "list of"), ([{"role": "user", "content": "hi"}], "end with a user turn"),
                       ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}], "roles are")):
        with pytest.raises(ValueError, match=words):
            record_from_messages(bad)
    (tmp_path / "broken.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DistillError, match="record 1 is not a dataset record.*OpenAI"):
        read_dataset(tmp_path / "broken.jsonl")
