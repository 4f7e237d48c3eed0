"""The pure data parts of scripts/bench_distill_real.py: reading labelled texts, labels, the balanced split, scoring."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_distill_real.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_distill_real", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the module is still executing.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_header_guesses_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "reviews.csv", "\ufeffid,Sentiment,Review\n1,Pos, great stay \n2,neg,dirty room\n3,neg,\n")
    columns, rows = bench.read_table(path)
    assert columns == ["id", "Sentiment", "Review"]
    text, label = bench.pick_columns(columns)
    assert (text, label) == ("Review", "Sentiment")
    examples, dropped = bench.to_examples(rows, text, label)
    assert examples == [bench.Example("great stay", "pos"), bench.Example("dirty room", "neg")]
    assert dropped == 1


def test_jsonl_rows_and_non_string_labels(tmp_path: Path) -> None:
    lines = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}, {"sentence": "meh", "label": 2}]
    path = _write(tmp_path / "data.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    columns, rows = bench.read_table(path)
    assert columns == ["sentence", "label"]
    examples, dropped = bench.to_examples(rows, *bench.pick_columns(columns))
    assert [(e.text, e.label) for e in examples] == [("good", "1"), ("bad", "0"), ("meh", "2")]
    assert dropped == 0


def test_explicit_columns_override_guesses(tmp_path: Path) -> None:
    path = _write(tmp_path / "news.tsv", "text\ttitle\ttopic\tlabel\nlong body\tShort\tSports\t3\n")
    columns, rows = bench.read_table(path)
    assert bench.pick_columns(columns) == ("text", "label")
    text, label = bench.pick_columns(columns, "title", "TOPIC")
    assert (text, label) == ("title", "topic")
    examples, _ = bench.to_examples(rows, text, label)
    assert examples == [bench.Example("Short", "sports")]


def test_unknown_columns_are_named_in_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "odd.csv", "body_text,stars\nnice,5\n")
    columns, _ = bench.read_table(path)
    with pytest.raises(SystemExit, match="cannot guess the text column.*'body_text', 'stars'.*--text-column"):
        bench.pick_columns(columns)
    with pytest.raises(SystemExit, match="no label column 'rating'.*'body_text', 'stars'"):
        bench.pick_columns(columns, "body_text", "rating")


def test_headerless_csv_uses_column_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.csv", '1,"a, quoted review"\n0,bad\n')
    columns, rows = bench.read_table(path, header=False)
    assert columns == ["0", "1"]
    examples, _ = bench.to_examples(rows, "1", "0", {"1": "positive", "0": "negative"})
    assert examples == [bench.Example("a, quoted review", "positive"), bench.Example("bad", "negative")]


def test_label_names_map_and_filter() -> None:
    names = bench.parse_label_names(" 0 = Negative, 1=positive ,")
    assert names == {"0": "negative", "1": "positive"}
    rows = [{"t": "x", "l": "1"}, {"t": "y", "l": "0"}, {"t": "z", "l": "2"}]
    examples, dropped = bench.to_examples(rows, "t", "l", names)
    assert [e.label for e in examples] == ["positive", "negative"]
    assert dropped == 1
    assert bench.label_order(examples, names) == ["negative", "positive"]
    assert bench.label_order(examples) == ["negative", "positive"]
    with pytest.raises(SystemExit, match="RAW=WORD"):
        bench.parse_label_names("0:negative")


def test_default_role_lists_every_label() -> None:
    assert bench.default_role(["a", "b", "c"]) == "You classify texts. Answer with one word: a, b or c."
    assert bench.default_role(["no", "yes"]) == "You classify texts. Answer with one word: no or yes."


def test_three_label_split_is_balanced_and_disjoint() -> None:
    examples = [bench.Example(f"{label} text {i}", label) for label in ("a", "b", "c") for i in range(20)]
    examples.append(bench.Example("c " + "long " * 100, "c"))
    pool, test = bench.split(examples, ["a", "b", "c"], test_size=31, max_chars=50, seed=0)
    assert {label: sum(e.label == label for e in test) for label in "abc"} == {"a": 10, "b": 10, "c": 10}
    assert all(len(e.text) <= 50 for e in test)
    assert len(pool) + len(test) == len(examples)
    assert not {e.text for e in pool} & {e.text for e in test}
    assert bench.split(examples, ["a", "b", "c"], 31, 50, seed=0) == (pool, test)


def test_scoring_one_answer_and_a_set() -> None:
    assert bench.answer_word("  Positive\nbecause the room was clean") == "positive"
    assert bench.answer_word("\nnegative") == "negative"
    answers = [bench.answer_word(a) for a in ("positive", "Negative.", "neutral", "positive\n")]
    result = bench.score(answers, ["positive", "negative", "neutral", "negative"], ["positive", "negative", "neutral"])
    assert result.accuracy == 0.5
    assert result.off_label == 1  # "negative." is not a label word
    assert result.shares == {"positive": 0.5, "negative": 0.0, "neutral": 0.25}


def test_question_template_keeps_other_braces() -> None:
    assert bench.ask('Text: {text}\nAnswer as {"label": ...}', "hi") == 'Text: hi\nAnswer as {"label": ...}'
