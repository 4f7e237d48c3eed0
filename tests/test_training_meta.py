"""training.json as one typed record, and the one answer to "is this path an export?"."""

from __future__ import annotations

import json

import pytest

from appliance.protocol.training import TRAINING_FILE, TrainingMeta, read_training_meta
from export.errors import ExportError
from appliance.protocol.manifest import MANIFEST_NAME, find_manifest, is_export
from export.merge import read_training_info


def sample() -> TrainingMeta:
    return TrainingMeta(
        base_model="/models/base", base_format="hf", dataset_sha256="ab" * 32, examples=10, skipped_examples=1,
        truncated_examples=2, hyperparameters={"lr": 1e-4, "target_modules": ["q_proj", "v_proj"]},
        kd_teacher=None, precision="bf16", effective_batch_size=8, grad_accum=2, gradient_checkpointing=True,
        quantize_base="4bit", steps=2, final_loss=0.5, losses=((1, 0.9), (2, 0.5)), validation_losses=((2, 0.7),),
        best_step=2, device="cpu", versions={"peft": "0.1"}, created="2026-01-01T00:00:00Z",
    )


def test_round_trip(tmp_path):
    meta = sample()
    assert TrainingMeta.from_json(meta.to_json()) == meta
    meta.write(tmp_path)
    assert read_training_meta(tmp_path) == meta


def test_the_file_keeps_the_keys_the_trainer_always_wrote():
    data = json.loads(sample().to_json())
    assert list(data)[:4] == ["adapter_format", "base_model", "base_format", "dataset_sha256"]
    assert data["losses"] == [[1, 0.9], [2, 0.5]] and data["validation_losses"] == [[2, 0.7]]


def test_old_alias_keys_are_read():
    meta = TrainingMeta.from_json(json.dumps({"base": "/old/base", "dataset_hash": "cd" * 32}))
    assert meta.base_model == "/old/base" and meta.dataset_sha256 == "cd" * 32


def test_the_canonical_key_wins_over_its_alias():
    meta = TrainingMeta.from_json(json.dumps({"base_model": "/new", "base": "/old"}))
    assert meta.base_model == "/new"


def test_unknown_keys_are_ignored_and_missing_ones_default():
    meta = TrainingMeta.from_json(json.dumps({"base_model": "/b", "from_the_future": 1, "final_loss": 0.25}))
    assert meta == TrainingMeta(base_model="/b", final_loss=0.25)


@pytest.mark.parametrize("text", ["[1, 2]", "not json"])
def test_a_file_that_is_not_a_record_is_a_value_error(text):
    with pytest.raises(ValueError):
        TrainingMeta.from_json(text)


def test_no_file_is_no_record(tmp_path):
    assert read_training_meta(tmp_path) is None


def test_the_export_stage_reads_the_record_and_names_a_broken_file(tmp_path):
    assert read_training_info(tmp_path) == TrainingMeta()
    (tmp_path / TRAINING_FILE).write_text(json.dumps({"base": "/b", "dataset_hash": "d"}))
    info = read_training_info(tmp_path)
    assert (info.base_model, info.dataset_sha256) == ("/b", "d")
    (tmp_path / TRAINING_FILE).write_text("{")
    with pytest.raises(ExportError, match="not valid JSON"):
        read_training_info(tmp_path)


def test_an_export_is_a_folder_with_a_manifest_or_the_manifest_itself(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    assert find_manifest(folder) is None and not is_export(folder)
    (folder / MANIFEST_NAME).write_text("{}")
    assert find_manifest(folder) == folder / MANIFEST_NAME and is_export(folder)
    assert find_manifest(folder / MANIFEST_NAME) == folder / MANIFEST_NAME
    # Named but absent: still an export path, so that reading it says the manifest is missing.
    assert find_manifest(tmp_path / "gone" / MANIFEST_NAME) == tmp_path / "gone" / MANIFEST_NAME


def test_a_model_file_or_a_missing_folder_is_not_an_export(tmp_path):
    gguf = tmp_path / "student.gguf"
    gguf.write_bytes(b"GGUF")
    assert not is_export(gguf) and not is_export(tmp_path / "nowhere")
