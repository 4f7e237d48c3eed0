"""Training a real-sized student (issue #20 part 3) on the tiny Llama, on a CPU: the precision a run
picks, bf16 mixed precision, gradient accumulation that gives the same update as one big batch and
resumes exactly, gradient checkpointing that recomputes and changes nothing, and QLoRA refused before
any work where it cannot run."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from appliance.cli import main
from appliance.distill import DistillError
from appliance.distill import train as train_module
from appliance.distill.models import load_model
from appliance.distill.records import Record, write_dataset
from appliance.distill.train import (TrainSettings, check_quantize_base, choose_precision, fingerprint_settings,
                                     train)
from tests import distill_task

FAST = TrainSettings(learning_rate=3e-3, epochs=2, batch_size=4, lora_r=4, lora_alpha=8, checkpoint_every=2)


@pytest.fixture(scope="module")
def uneven():
    """Answers of very different lengths, so micro-batches of one step learn different numbers of tokens."""
    tails = ["", " and the soup was cold", " because the staff were kind and the rooms were clean and quiet", " mostly"]
    return [Record(prompt=p["prompt"], answer=p["expected"] + tails[i % len(tails)] * (1 + i % 3), category="c")
            for i, p in enumerate(distill_task.prompts(12))]


def adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance)


def test_precision_auto_is_bf16_on_a_modern_gpu_fp16_on_an_older_one_and_fp32_on_a_cpu():
    assert choose_precision("auto", "cuda", bf16_supported=True) == "bf16"
    assert choose_precision("auto", "cuda", bf16_supported=False) == "fp16"
    assert choose_precision("auto", "cpu", bf16_supported=True) == "fp32"
    # An explicit choice stands where it can run: bf16 on a CPU too (autocast), fp32 anywhere.
    assert choose_precision("bf16", "cpu", bf16_supported=True) == "bf16"
    assert choose_precision("fp32", "cuda", bf16_supported=True) == "fp32"
    assert choose_precision("fp16", "cuda", bf16_supported=False) == "fp16"
    with pytest.raises(DistillError, match="no bfloat16 .* fp16 or auto"):
        choose_precision("bf16", "cuda", bf16_supported=False)
    with pytest.raises(DistillError, match="fp16 training needs a CUDA GPU.* bf16 or fp32"):
        choose_precision("fp16", "cpu", bf16_supported=True)


def test_qlora_is_refused_without_cuda_or_bitsandbytes_naming_the_fix():
    check_quantize_base("none", "cpu", has_bitsandbytes=False)
    check_quantize_base("4bit", "cuda", has_bitsandbytes=True)
    with pytest.raises(DistillError, match=r"needs a CUDA GPU .*\[distill\].quantize_base = \"none\""):
        check_quantize_base("4bit", "cpu", has_bitsandbytes=True)
    with pytest.raises(DistillError, match="needs bitsandbytes.*pip install bitsandbytes"):
        check_quantize_base("4bit", "cuda", has_bitsandbytes=False)


def test_qlora_on_a_cpu_fails_before_training_starts(tiny, records, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the 4-bit check")

    monkeypatch.setattr(train_module, "load_model", no_work)
    monkeypatch.setattr(train_module, "load_tokenizer", no_work)
    settings = TrainSettings(**{**FAST.__dict__, "quantize_base": "4bit"})
    with pytest.raises(DistillError, match="QLoRA.* needs a CUDA GPU"):
        train(records, tiny, tmp_path / "out", settings, dataset_sha256="d")
    assert not (tmp_path / "out").exists()
    # The command line says the same before it reads the dataset.
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--base", str(tiny), "--out", str(tmp_path / "out"),
                                       "--quantize-base", "4bit"])
    assert result.exit_code != 0 and "needs a CUDA GPU" in result.stderr


def test_bf16_on_a_cpu_trains_and_its_fp32_adapter_saves_and_loads(tiny, records, tmp_path):
    from peft import PeftModel

    dataset = tmp_path / "train.jsonl"
    write_dataset(dataset, records)
    out = tmp_path / "adapter"
    result = CliRunner().invoke(main, [
        "train", str(dataset), "--base", str(tiny), "--out", str(out), "--epochs", "5", "--batch-size", "4",
        "--lr", "1e-2", "--lora-r", "4", "--lora-alpha", "8", "--precision", "bf16"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "; bf16" in result.stderr
    report = json.loads((out / "training.json").read_text())
    assert report["precision"] == "bf16" and report["hyperparameters"]["precision"] == "bf16"
    assert report["grad_accum"] == 1 and report["gradient_checkpointing"] is False
    losses = [loss for _, loss in report["losses"]]
    assert len(losses) == 15 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.8, losses
    # It learns as fp32 does: the same curve within bf16's rounding.
    fp32 = train(records, tiny, tmp_path / "fp32", TrainSettings(learning_rate=1e-2, epochs=5, batch_size=4, lora_r=4,
                                                                 lora_alpha=8, precision="fp32"), dataset_sha256="d")
    assert losses == pytest.approx([loss for _, loss in fp32.losses], rel=2e-2)
    saved = adapter(out)
    assert {t.dtype for t in saved.values()} == {torch.float32}  # trained in fp32 over a bf16 base
    loaded = PeftModel.from_pretrained(load_model(tiny, dtype="bf16"), str(out))
    state = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert len(state) == len(saved)
    for name, value in saved.items():
        match = [v for k, v in state.items() if k.replace(".default", "").endswith(name.removeprefix("base_model.model."))]
        assert len(match) == 1
        torch.testing.assert_close(match[0].float(), value)


def test_two_accumulated_micro_batches_make_the_update_of_one_batch_twice_their_size(tiny, uneven, tmp_path):
    # No dropout: it draws its masks per micro-batch, so only then are the two runs the same computation.
    one = TrainSettings(**{**FAST.__dict__, "batch_size": 4, "lora_dropout": 0.0, "max_steps": 1})
    two = TrainSettings(**{**one.__dict__, "batch_size": 2, "grad_accum": 2})
    assert two.effective_batch_size == one.effective_batch_size == 4
    big = train(uneven, tiny, tmp_path / "one", one, dataset_sha256="d")
    accumulated = train(uneven, tiny, tmp_path / "two", two, dataset_sha256="d")
    assert big.total_steps == accumulated.total_steps == 6  # steps are optimizer steps, whatever grad_accum is
    assert accumulated.losses[0][1] == pytest.approx(big.losses[0][1], rel=1e-5)
    first = "checkpoints/step-0000001"
    a, b = adapter(tmp_path / "one" / first), adapter(tmp_path / "two" / first)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # the step moved the adapter
    assert_same(a, b, rtol=1e-4, atol=1e-6)


def test_accumulating_runs_resume_to_the_same_adapter(tiny, uneven, tmp_path):
    settings = TrainSettings(**{**FAST.__dict__, "batch_size": 2, "grad_accum": 2, "checkpoint_every": 1})
    whole = train(uneven, tiny, tmp_path / "whole", settings, dataset_sha256="d")
    stopped = train(uneven, tiny, tmp_path / "resumed", TrainSettings(**{**settings.__dict__, "max_steps": 4}),
                    dataset_sha256="d")
    assert not stopped.finished and stopped.steps == 4
    resumed = train(uneven, tiny, tmp_path / "resumed", settings, dataset_sha256="d")
    assert resumed.finished and resumed.resumed_from == 4 and resumed.steps == whole.steps == 6
    assert_same(adapter(tmp_path / "whole"), adapter(tmp_path / "resumed"), rtol=1e-5, atol=1e-6)
    # Another accumulation is another run: its checkpoints are refused, not mixed in.
    with pytest.raises(DistillError, match="different settings"):
        train(uneven, tiny, tmp_path / "resumed", TrainSettings(**{**settings.__dict__, "grad_accum": 3}),
              dataset_sha256="d")


def test_gradient_checkpointing_recomputes_each_layer_and_trains_the_same(tiny, records, tmp_path, monkeypatch):
    calls: list[bool] = []
    real = train_module.load_model

    def counting(*args, **kwargs):
        model = real(*args, **kwargs)
        # A pre-hook: recomputation stops as soon as it has what the backward pass needs, before a forward hook.
        model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(True))
        return model

    monkeypatch.setattr(train_module, "load_model", counting)
    plain = train(records, tiny, tmp_path / "plain", FAST, dataset_sha256="d")
    plain_calls = len(calls)
    calls.clear()
    checkpointed = train(records, tiny, tmp_path / "ckpt", TrainSettings(**{**FAST.__dict__,
                                                                             "gradient_checkpointing": True}),
                         dataset_sha256="d")
    assert plain_calls == plain.steps == 6 and len(calls) == 2 * checkpointed.steps  # forward, then recomputed
    assert [x for _, x in checkpointed.losses] == pytest.approx([x for _, x in plain.losses], rel=1e-5)
    assert_same(adapter(tmp_path / "plain"), adapter(tmp_path / "ckpt"), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "ckpt" / "training.json").read_text())["gradient_checkpointing"] is True


def test_checkpoints_of_runs_before_these_settings_still_resume():
    old = {k: v for k, v in TrainSettings().__dict__.items()
           if k not in ("max_steps", "precision", "grad_accum", "gradient_checkpointing", "quantize_base")}
    assert fingerprint_settings(TrainSettings(), "fp32") == old
    # Checkpointing changes memory, not results: turning it on after running out of memory still resumes.
    assert fingerprint_settings(TrainSettings(gradient_checkpointing=True), "fp32") == old
    assert fingerprint_settings(TrainSettings(), "bf16") == {**old, "precision": "bf16"}
    assert fingerprint_settings(TrainSettings(grad_accum=4), "fp32") == {**old, "grad_accum": 4}
