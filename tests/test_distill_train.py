"""`athanor train` on a tiny real Llama: chat formatting with answer-only labels, the KD loss,
the vocabulary check, and resuming from a checkpoint to the same weights as an uninterrupted run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from appliance.distill import DistillError
from appliance.distill.models import load_tokenizer
from appliance.distill.records import Record
from appliance.distill.train import IGNORE, TrainSettings, build_example, kd_loss, train
from tests import distill_task
from tests.distill_tiny import build_tiny_model

FAST = TrainSettings(learning_rate=3e-3, epochs=2, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=2,
                     modules_to_save=("lm_head",))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def records():
    return [Record(prompt=p["prompt"], answer=p["expected"], category="sentiment") for p in distill_task.prompts(12)]


def test_build_example_labels_only_the_answer(tiny):
    tokenizer = load_tokenizer(tiny)
    record = Record(prompt="Review: The soup was bland.\nSentiment?", answer="negative", role="You label reviews.")
    ids, labels = build_example(tokenizer, record)
    assert len(ids) == len(labels)
    prompt_len = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert tokenizer.decode(ids[:prompt_len]) == (
        "<|im_start|>system\nYou label reviews.<|im_end|>\n<|im_start|>user\n"
        "Review: The soup was bland.\nSentiment?<|im_end|>\n<|im_start|>assistant\n")
    # The answer and the end-of-turn token are learned, so the student learns to stop.
    assert tokenizer.decode(labels[prompt_len:]).startswith("negative<|im_end|>")
    assert all(label == IGNORE for label in labels[:prompt_len])


def test_build_example_cuts_the_prompt_before_the_answer(tiny):
    tokenizer = load_tokenizer(tiny)
    record = Record(prompt="Review: " + "the food was great " * 40 + "\nSentiment?", answer="positive")
    ids, labels = build_example(tokenizer, record, max_len=32)
    assert len(ids) == 32
    assert tokenizer.decode([t for t in labels if t != IGNORE]).startswith("positive<|im_end|>")


def test_build_example_fallback_ends_the_turn_with_the_templates_end_of_turn(tiny):
    tokenizer = load_tokenizer(tiny)
    # A template that rewrites the system turn once an answer follows (so the prompt is no prefix of the
    # full chat), on a tokenizer whose eos is not the turn's end (as Llama 3's <|end_of_text|> is not <|eot_id|>).
    tokenizer.chat_template = ("<|im_start|>system\n{{ 'Answer.' if messages[-1]['role'] == 'assistant' else 'Ask.' }}"
                               "<|im_end|>\n" + tokenizer.chat_template)
    tokenizer.eos_token = "<pad>"
    record = Record(prompt="Review: The soup was bland.\nSentiment?", answer="negative")
    ids, labels = build_example(tokenizer, record)
    assert tokenizer.decode([t for t in labels if t != IGNORE]) == "negative<|im_end|>"


def test_kd_loss_mixes_kl_at_temperature_with_cross_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[:, :2] = IGNORE  # the prompt
    s, t, y = student[:, :-1], teacher[:, :-1], labels[:, 1:]
    mask = y != IGNORE
    ce = F.cross_entropy(s[mask], y[mask])
    T = 2.0
    kl = F.kl_div(F.log_softmax(s[mask] / T, -1), F.log_softmax(t[mask] / T, -1), log_target=True,
                  reduction="batchmean")
    assert kd_loss(student, teacher, labels, T, 0.0) == pytest.approx(ce.item(), rel=1e-5)
    assert kd_loss(student, teacher, labels, T, 1.0) == pytest.approx((kl * T * T).item(), rel=1e-5)
    assert kd_loss(student, teacher, labels, T, 0.3) == pytest.approx((0.3 * kl * T * T + 0.7 * ce).item(), rel=1e-5)
    # A student that already matches its teacher pays only the cross-entropy share.
    assert kd_loss(student, student, labels, T, 0.5) == pytest.approx(0.5 * ce.item(), rel=1e-5)


def test_kd_refuses_a_teacher_with_another_vocabulary(tiny, records, tmp_path):
    other = build_tiny_model(tmp_path / "other", vocab_size=500)
    with pytest.raises(DistillError, match="vocabulary differs .* share a tokenizer"):
        train(records, tiny, tmp_path / "out", FAST, dataset_sha256="d", kd_teacher=other)


def test_kd_from_a_same_vocabulary_teacher_trains(tiny, records, tmp_path):
    result = train(records, tiny, tmp_path / "out", FAST, dataset_sha256="d", kd_teacher=tiny)
    assert result.finished and result.steps == 6
    assert json.loads((tmp_path / "out" / "training.json").read_text())["kd_teacher"] == str(tiny)


def test_an_interrupted_run_resumes_to_the_same_adapter(tiny, records, tmp_path):
    whole = train(records, tiny, tmp_path / "whole", FAST, dataset_sha256="d")
    assert whole.finished and whole.steps == 6
    stopped = train(records, tiny, tmp_path / "resumed", TrainSettings(**{**FAST.__dict__, "max_steps": 3}),
                    dataset_sha256="d")
    assert not stopped.finished and stopped.steps == 3
    assert not (tmp_path / "resumed" / "adapter_model.safetensors").exists()
    resumed = train(records, tiny, tmp_path / "resumed", FAST, dataset_sha256="d")
    assert resumed.finished and resumed.resumed_from == 3
    a = load_file(str(tmp_path / "whole" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lm_head" in k for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / "resumed" / "training.json").read_text())
    assert report["base_model"] == str(tiny.resolve()) and report["dataset_sha256"] == "d"
    assert report["hyperparameters"]["lora_r"] == 4 and len(report["losses"]) == 6
    assert [x[1] for x in report["losses"]] == pytest.approx([x[1] for x in whole.losses], abs=1e-4)
    # The same checkpoints with other data are refused rather than silently mixed.
    with pytest.raises(DistillError, match="different dataset_sha256"):
        train(records, tiny, tmp_path / "resumed", FAST, dataset_sha256="other")
