"""`athanor train` on a tiny real Llama: chat formatting with answer-only labels, the KD loss,
the vocabulary check, resuming from a checkpoint to the same weights as an uninterrupted run, and
what makes training fast and visible: truncation, batching by length, the loss on the answer's
logits only, and progress lines when no terminal is attached."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from appliance.cli import main
from appliance.distill import DistillError
from appliance.distill.models import load_model, load_tokenizer
from appliance.distill.progress import LineProgress, TrainLog, duration
from appliance.distill.records import Record, write_dataset
from appliance.distill.train import (IGNORE, StepInfo, TrainSettings, answer_positions, batch_loss, build_example,
                                     chat_tokens, collate, epoch_batches, fit_example, kd_loss, padding_share, train)
from tests import distill_task
from tests.distill_tiny import build_tiny_model

FAST = TrainSettings(learning_rate=3e-3, epochs=2, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=2,
                     modules_to_save=("lm_head",))


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


# --- Throughput and progress (issue #22 part 5) -------------------------------------------------------


def test_fit_example_cuts_the_prompts_middle_and_keeps_the_answer():
    prompt, answer = list(range(100, 120)), [7, 8, 9]
    ids, labels = fit_example(prompt, answer, max_len=13)
    # 10 prompt tokens are left: the first 5 (persona, instruction) and the last 5 (the assistant's header).
    assert ids == [100, 101, 102, 103, 104, 115, 116, 117, 118, 119, 7, 8, 9]
    assert labels == [IGNORE] * 10 + [7, 8, 9]
    # Short enough: untouched.
    assert fit_example(prompt, answer, max_len=23) == (prompt + answer, [IGNORE] * 20 + answer)
    # An answer that cannot fit keeps its head and one prompt token.
    ids, labels = fit_example([1, 2, 3], list(range(50, 60)), max_len=5)
    assert ids == [3, 50, 51, 52, 53] and labels == [IGNORE, 50, 51, 52, 53]


def test_build_example_keeps_the_persona_and_the_assistant_header_when_cut(tiny):
    tokenizer = load_tokenizer(tiny)
    record = Record(prompt="Review: " + "the food was great " * 40 + "\nSentiment?", answer="positive",
                    role="You label reviews.")
    ids, labels = build_example(tokenizer, record, max_len=40)
    start = next(i for i, label in enumerate(labels) if label != IGNORE)
    text = tokenizer.decode(ids[:start])
    assert len(ids) == 40 and text.startswith("<|im_start|>system\nYou label reviews.<|im_end|>")
    assert text.endswith("Sentiment?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(labels[start:]).startswith("positive<|im_end|>")


def test_collate_pads_each_batch_to_its_own_longest():
    batch = collate([([1, 2, 3], [IGNORE, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]


def test_epoch_batches_group_lengths_cover_every_example_and_depend_on_the_seed_only():
    rng = np.random.RandomState(1)
    lengths = [int(x) for x in rng.choice([60, 80, 500], size=203, p=[0.45, 0.45, 0.1])]
    plain = epoch_batches(lengths, 8, seed=3, group_by_length=False)
    # Ungrouped is the order train() always used: slices of the seed's permutation.
    order = np.random.RandomState(3).permutation(203).tolist()
    assert plain == [order[i:i + 8] for i in range(0, 203, 8)]
    grouped = epoch_batches(lengths, 8, seed=3)
    assert grouped == epoch_batches(lengths, 8, seed=3) != epoch_batches(lengths, 8, seed=4)
    assert len(grouped) == len(plain) == 26
    assert sorted(i for batch in grouped for i in batch) == list(range(203))
    assert all(len(batch) == 8 for batch in grouped if batch is not min(grouped, key=len))
    assert padding_share(lengths, grouped) < 0.15 < 0.5 < padding_share(lengths, plain)
    # Batches still mix the epoch: they are not simply in length order.
    longest = [max(lengths[i] for i in batch) for batch in grouped]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)


def test_batch_loss_on_answer_logits_only_equals_the_full_loss(tiny):
    tokenizer = load_tokenizer(tiny)
    model = load_model(tiny)
    records = [Record(prompt=p["prompt"], answer=p["expected"]) for p in distill_task.prompts(5)]
    batch = collate([build_example(tokenizer, r) for r in records], tokenizer.pad_token_id)
    assert answer_positions(batch["labels"]).numel() < batch["input_ids"].shape[1] - 1
    with torch.no_grad():
        full = model(**batch).loss
        assert batch_loss(model, batch).item() == pytest.approx(full.item(), rel=1e-5)
        assert batch_loss(model, batch, keep_logits=False).item() == pytest.approx(full.item(), rel=1e-5)
        teacher = build_tiny_model_loaded(tiny)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        expected = kd_loss(model(**inputs).logits, teacher(**inputs).logits, batch["labels"], 2.0, 0.3)
        got = batch_loss(model, batch, teacher, temperature=2.0, alpha=0.3, vocab=len(tokenizer))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() != pytest.approx(full.item())


def build_tiny_model_loaded(tiny):
    """The tiny model with other weights: a teacher whose logits differ from the student's."""
    model = load_model(tiny)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def info(step: int, elapsed: float, total: int = 100, resumed: int = 0, loss: float = 1.0) -> StepInfo:
    return StepInfo(step=step, total=total, epoch=1, epochs=2, loss=loss, tokens=50, elapsed=elapsed,
                    run_steps=step - resumed, run_tokens=50 * (step - resumed))


def test_train_log_writes_a_line_every_n_steps_and_every_30_seconds():
    clock = [0.0]
    out = io.StringIO()
    log = TrainLog(stream=out, every=10, interval=30.0, window=3, clock=lambda: clock[0])
    for step in range(1, 31):
        clock[0] = step * 2.0  # 2 s a step: the step count decides
        log(info(step, clock[0], total=30, loss=float(step)))
    lines = out.getvalue().splitlines()
    assert [int(re.search(r"step (\d+)/30", line)[1]) for line in lines] == [1, 11, 21, 30]
    assert lines[1] == ("train step 11/30 (37%) epoch 1/2 loss 11.0000 (mean of 3: 10.0000) 25 tok/s 2.0 s/step "
                        "elapsed 22s ETA 38s")
    assert lines[-1].endswith("ETA 0s")
    out.seek(0), out.truncate()
    slow = TrainLog(stream=out, every=10, interval=30.0, clock=lambda: clock[0])
    for step in range(1, 9):
        clock[0] = 1000 + step * 20.0  # 20 s a step: a line at least every 30 s
        slow(info(step, step * 20.0, total=8))
    assert [int(re.search(r"step (\d+)/", line)[1]) for line in out.getvalue().splitlines()] == [1, 3, 5, 7, 8]


def test_step_info_eta_counts_only_this_runs_steps():
    resumed = info(60, elapsed=100.0, total=100, resumed=50)
    assert resumed.eta == pytest.approx(400.0) and resumed.tokens_per_s == pytest.approx(5.0)
    assert duration(resumed.eta) == "6m40s" and duration(7260) == "2h01m" and duration(None) == "?"


def test_line_progress_stands_in_for_a_bar_without_a_terminal():
    clock = [0.0]
    out = io.StringIO()
    lines = LineProgress(stream=out, clock=lambda: clock[0])
    task = lines.add_task("evaluate", total=40, extra="")
    for n in range(40):
        clock[0] += 1.0
        lines.update(task, advance=1, extra=f"${n / 100:.2f}")
    lines.finish(task)
    written = out.getvalue().splitlines()
    # A line every 5% (2 items) of the 40, and the last.
    assert len(written) == 21 and written[0] == "evaluate 1/40 (2%) $0.00 elapsed 1s ETA 39s"
    assert written[9] == "evaluate 19/40 (48%) $0.18 elapsed 19s ETA 21s"
    assert written[-1] == "evaluate 40/40 (100%) $0.39 elapsed 40s ETA 0s"
    # A count set outright (training through `bar`): the pace is measured from the first update.
    out.seek(0), out.truncate()
    task = lines.add_task("train", total=None, extra="")
    clock[0] += 60.0  # loading the model
    lines.update(task, completed=11, total=20, extra="loss 0.5000")
    clock[0] += 10.0
    lines.update(task, completed=12, total=20, extra="loss 0.4000")
    assert out.getvalue().splitlines() == ["train 11/20 (55%) loss 0.5000 elapsed 1m00s ETA ?",
                                           "train 12/20 (60%) loss 0.4000 elapsed 1m10s ETA 1m20s"]


def test_athanor_train_without_a_terminal_logs_progress_lines(tiny, records, tmp_path):
    dataset = tmp_path / "train.jsonl"
    write_dataset(dataset, records)
    tokenizer = load_tokenizer(tiny)
    cut = sum(len(p) + len(a) > 24 for p, a in (chat_tokens(tokenizer, r) for r in records))
    assert 0 < cut < len(records)
    result = CliRunner().invoke(main, [
        "train", str(dataset), "--base", str(tiny), "--out", str(tmp_path / "adapter"), "--epochs", "2",
        "--batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--max-seq-len", "24", "--log-every", "2"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    progress = [line for line in result.stderr.splitlines() if line.startswith("train step")]
    assert [int(re.search(r"step (\d+)/6 ", line)[1]) for line in progress] == [1, 3, 5, 6]
    pattern = re.compile(r"^train step \d/6 \(\d+%\) epoch [12]/2 loss \d+\.\d{4} \(mean of \d+: \d+\.\d{4}\) "
                         r"\d+ tok/s \d+\.\d s/step elapsed \d+s ETA \d+s$")
    assert all(pattern.match(line) for line in progress), progress
    assert "\x1b[" not in result.stderr  # plain text, no terminal codes
    assert f"{cut} longer than max_seq_len 24" in result.stderr
    assert "trained 6 steps" in result.stdout
    assert json.loads((tmp_path / "adapter" / "training.json").read_text())["truncated_examples"] == cut


def test_train_progress_picks_lines_without_a_terminal_and_a_live_bar_with_one(monkeypatch):
    from appliance.distill import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    with progress.train_progress(every=3) as report:
        assert isinstance(report, TrainLog) and report.lines.every == 3
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    seen = {}

    class Recording(progress.Progress):
        def update(self, task, **fields):
            seen.update(fields)
            super().update(task, **fields)

    monkeypatch.setattr(progress, "Progress", Recording)
    with progress.train_progress() as report:
        assert not isinstance(report, TrainLog)
        report(info(30, elapsed=60.0, total=90, loss=0.25))
    assert seen["completed"] == 30 and seen["total"] == 90
    assert seen["extra"] == "epoch 1/2 loss 0.2500 25 tok/s ETA 2m00s"


def test_validation_is_measured_at_even_steps_and_always_at_the_end():
    from appliance.distill.train import validation_steps

    assert validation_steps(per_epoch=8, total=16, eval_every=0) == {2, 4, 6, 8, 10, 12, 14, 16}
    assert validation_steps(per_epoch=3, total=7, eval_every=0) == set(range(1, 8))
    assert validation_steps(per_epoch=10, total=10, eval_every=4) == {4, 8, 10}


def test_early_stopping_waits_patience_validations_after_the_lowest():
    from appliance.distill.checkpoints import TrainState
    from appliance.distill.train import should_stop

    state = TrainState(val_losses=[(2, 1.0), (4, 0.5), (6, 0.6)])
    assert state.best_val == (4, 0.5) and state.evals_since_best() == 1
    assert not should_stop(state, patience=2)
    state.val_losses.append((8, 0.55))
    assert should_stop(state, patience=2)
    assert not should_stop(state, patience=0)
    state.val_losses.append((10, 0.4))
    assert not should_stop(state, patience=1)


def test_small_datasets_train_on_everything_and_larger_ones_hold_back_each_category():
    from appliance.distill.train import MIN_VALIDATION, validation_split

    small = [Record(prompt=f"q{i}", answer="a", category="c") for i in range(MIN_VALIDATION - 1)]
    assert validation_split(small, TrainSettings()) == (small, [])
    big = [Record(prompt=f"q{i}", answer="a", category="en" if i % 2 else "zh") for i in range(100)]
    train_part, val_part = validation_split(big, TrainSettings(validation_fraction=0.1))
    assert len(val_part) == 10 and {r.category for r in val_part} == {"en", "zh"}
    assert not {r.prompt for r in train_part} & {r.prompt for r in val_part}
    assert validation_split(big, TrainSettings(validation_fraction=0.0)) == (big, [])


def test_training_keeps_the_adapter_of_the_lowest_validation_loss_and_stops_early(tiny, tmp_path):
    many = [Record(prompt=p["prompt"], answer=p["expected"], category="sentiment") for p in distill_task.prompts(48)]
    # A learning rate this high overshoots: validation loss rises after its first low, so patience 1 stops it.
    settings = TrainSettings(learning_rate=0.5, epochs=4, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=100,
                             validation_fraction=0.2, eval_every=2, patience=1)
    out = tmp_path / "out"
    result = train(many, tiny, out, settings, dataset_sha256="d")
    assert result.val_losses and result.best_step is not None
    assert dict(result.val_losses)[result.best_step] == min(v for _, v in result.val_losses)
    report = json.loads((out / "training.json").read_text())
    assert report["best_step"] == result.best_step
    assert [s for s, _ in report["validation_losses"]] == [s for s, _ in result.val_losses]
    kept = load_file(str(out / "adapter_model.safetensors"))
    best = load_file(str(out / "checkpoints" / "best" / "adapter_model.safetensors"))
    assert kept.keys() == best.keys()
    for name in kept:
        torch.testing.assert_close(kept[name], best[name])
    if result.stopped_early:
        assert result.steps < result.total_steps
        assert result.val_losses[-1][0] == result.steps and result.best_step < result.steps
    assert result.stopped_early, f"validation losses {result.val_losses} never rose; the test lost its point"


def test_lora_layers_adapts_only_the_top_layers(tiny, records, tmp_path):
    settings = TrainSettings(**{**FAST.__dict__, "lora_layers": 1, "modules_to_save": ()})
    train(records, tiny, tmp_path / "out", settings, dataset_sha256="d")
    names = load_file(str(tmp_path / "out" / "adapter_model.safetensors")).keys()
    layers = {int(m.group(1)) for m in (re.search(r"layers\.(\d+)\.", n) for n in names) if m}
    top = load_model(tiny, "cpu").config.num_hidden_layers - 1
    assert layers == {top}
