"""Evaluation stops where the daemon stops (issue #22): the base loader reads a GGUF's special tokens
and end-of-generation (EOG) set the way llama.cpp does, the evaluate runner on the embedded SmolLM2
ends its answer at `<|im_end|>`, and a label task counts an answer that is no label as off-label."""

from __future__ import annotations

import asyncio

import pytest

from appliance.defaults import embedded_student_path
from appliance.distill.evaluate import EvalSettings, evaluate
from appliance.distill.metrics import LABEL, label_set, off_label, rule_score
from appliance.distill.models import end_of_generation_ids, gguf_end_of_generation, read_gguf_vocab
from appliance.distill.records import Record
from appliance.distill.students import LocalAnswer


@pytest.fixture(scope="module")
def smollm2_vocab():
    return read_gguf_vocab(embedded_student_path())


def test_the_eog_set_of_the_embedded_gguf_ends_the_chat_turn(smollm2_vocab):
    ids = {text: i for i, text in enumerate(smollm2_vocab.tokens[:20])}
    # transformers' GGUF conversion makes `<|im_start|>` the eos; the file itself declares `<|im_end|>`.
    assert smollm2_vocab.declared["eos"] == ids["<|im_end|>"]
    eog = gguf_end_of_generation(smollm2_vocab)
    # The turn end (declared eos), `<|endoftext|>` (by its text) and `<reponame>` (llama.cpp's FIM repo token).
    assert eog == {ids["<|im_end|>"], ids["<|endoftext|>"], ids["<reponame>"]}
    assert ids["<|im_start|>"] not in eog


def test_the_eog_set_is_the_one_llama_cpp_stops_at(smollm2_vocab):
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(embedded_student_path()).encode(), params)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        theirs = {i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    finally:
        llama_cpp.llama_model_free(model)
    assert gguf_end_of_generation(smollm2_vocab) == theirs


def test_eog_rules_for_other_families():
    # Llama 3: eos is <|end_of_text|>, the turn ends with a declared eot; both stop, <|eom_id|> by its text.
    llama3 = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|eot_id|>": 2, "<|eom_id|>": 3, "hello": 4}
    assert end_of_generation_ids(llama3, {"bos": 0, "eos": 1, "eot": 2}, 5) == {1, 2, 3}
    # A declared id outside the vocabulary is dropped, as llama.cpp does; bos and padding never stop.
    assert end_of_generation_ids({"a": 0, "b": 1}, {"eos": 7, "bos": 0, "padding": 1}, 2) == set()
    # gpt-oss: <|end|> closes a message inside a turn when <|return|> and <|call|> exist.
    harmony = {"<|end|>": 0, "<|return|>": 1, "<|call|>": 2}
    assert end_of_generation_ids(harmony, {}, 3) == {1, 2}
    assert end_of_generation_ids({"<|end|>": 0}, {}, 1) == {0}


@pytest.fixture(scope="module")
def smollm2_runner():
    from appliance.distill.students import HFRunner

    runner = HFRunner(embedded_student_path())
    yield runner
    runner.close()


SENTIMENT = [{"role": "system", "content": "Classify the sentiment of the review. Answer with one word: "
                                           "positive or negative."},
             {"role": "user", "content": "Review: The food was great and the staff were lovely.\nSentiment?"}]


def test_the_loader_gives_the_embedded_student_its_own_special_tokens(smollm2_runner):
    from appliance.distill.models import end_of_turn

    tokenizer = smollm2_runner._tokenizer
    assert (tokenizer.eos_token, tokenizer.bos_token) == ("<|im_end|>", "<|im_start|>")
    assert end_of_turn(tokenizer) == "<|im_end|>"


def test_evaluate_runner_stops_at_im_end_on_the_embedded_student(smollm2_runner, monkeypatch):
    model, tokenizer = smollm2_runner._model, smollm2_runner._tokenizer
    generated = []

    def spy(*args, **kwargs):
        out = type(model).generate(model, *args, **kwargs)
        generated.append(out.sequences[0, args[0].shape[1]:].tolist())
        return out

    monkeypatch.setattr(model, "generate", spy)
    max_tokens = 24
    answer = smollm2_runner.answer(SENTIMENT, max_tokens)
    [tokens] = generated
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Left alone this model writes "Positive.<|im_end|>\n<|im_end|><|im_start|>system..."; generation must
    # end at the first <|im_end|>, well before max_tokens, and leave it out of the answer.
    assert im_end in tokens and tokens.index(im_end) == len(tokens) - 1 < max_tokens - 1
    assert answer.text == tokenizer.decode(tokens[:-1]).strip()
    assert answer.text == "Positive."
    assert "<|im_" not in answer.text and "\n" not in answer.text
    assert len(answer.logprobs) == len(tokens) - 1  # no log-probability for the stop token, as llama.cpp


def test_evaluate_runner_answers_what_the_daemon_serves(smollm2_runner, tmp_path):
    from appliance.distill.students import GGUFRunner
    from appliance.engine.model_source import serve_embedded

    # The daemon's F16 copy holds the shipped Q4_1 weights dequantized, as transformers reads them.
    daemon = GGUFRunner(serve_embedded("f16", tmp_path), n_ctx=512, n_threads=2)
    try:
        for messages, expected in ((SENTIMENT, "Positive."),
                                   ([{"role": "user", "content": "What is the capital of France?"}],
                                    "The capital of France is Paris.")):
            assert smollm2_runner.answer(messages, 24).text == daemon.answer(messages, 24).text == expected
        # Read from llama.cpp's steps, as the daemon's router reads them: what a refit after retrain learns from.
        from appliance.routing.signals import Signals

        signals = daemon.answer(SENTIMENT, 24).signals
        assert signals is not None and set(signals) == set(Signals.names()) and 0 < signals["best_mean"] <= 1
    finally:
        daemon.close()


def test_a_label_answer_must_be_one_of_the_labels():
    labels = label_set(["positive", "negative", "negative", "positive", " positive"])
    assert labels == {"positive", "negative"}
    assert rule_score(LABEL, "positive", " positive\n", labels) == 1.0
    assert rule_score(LABEL, "positive", "negative", labels) == 0.0  # on-label, wrong
    for stray in ("positive\npositive", "positive<|im_end|>\npositive", "Positive.", "The sentiment is positive"):
        assert off_label(stray, labels) and rule_score(LABEL, "positive", stray, labels) == 0.0
    assert rule_score("exact", "positive", "Positive.") == 1.0  # the exact rule alone would have passed it
    # Distinct short facts, a JSON category, or long answers are no label set.
    assert label_set(["Paris", "Rome", "Berlin", "Madrid"]) is None
    assert label_set(['{"a": 1}'] * 4, "json") is None
    assert label_set(["a long answer that is not a label at all"] * 4) is None
    with pytest.raises(ValueError):
        rule_score(LABEL, "positive", "positive")


class _Scripted:
    """A student that answers each prompt with a scripted text."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def answer(self, messages, max_tokens):
        return LocalAnswer(self.answers[messages[-1]["content"]], (-0.1,))

    def close(self) -> None:
        pass


def test_evaluate_reports_off_label_answers_apart():
    records = [Record(prompt=f"review {i}", answer=label, expected=label, category="sentiment")
               for i, label in enumerate(["positive", "negative"] * 3)]
    records.append(Record(prompt="capital?", answer="Paris", category="facts"))
    student = _Scripted({"review 0": "positive\npositive", "review 1": "negative", "review 2": "negative",
                         "review 3": "negative", "review 4": "positive", "review 5": "meh", "capital?": "Paris"})
    result = asyncio.run(evaluate(records, student, EvalSettings()))
    sentiment = next(c for c in result.categories if c.category == "sentiment")
    facts = next(c for c in result.categories if c.category == "facts")
    # Right: reviews 1, 3, 4. Wrong on-label: review 2. Off-label (and wrong): reviews 0 and 5.
    assert sentiment.student == pytest.approx(3 / 6) and sentiment.off_label == 2
    assert facts.off_label == 0 and result.overall.off_label == 2
    assert [a["off_label"] for a in result.answers] == [True, False, False, False, False, True, False]
    report = result.to_dict()
    assert report["labels"] == {"sentiment": ["negative", "positive"]}
    assert next(c for c in report["categories"] if c["category"] == "sentiment")["off_label"] == 2
