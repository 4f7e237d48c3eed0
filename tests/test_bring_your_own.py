"""Bring your own student: a Hugging Face folder of the Qwen2 architecture (what Qwen2.5-0.5B/1.5B ship
as) that the user already has goes through `athanor train --base <folder>` -> `athanor export` (llama.cpp's
converter, the gate, manifest.json) -> the real daemon, which answers over its socket what it was taught.

The folder is built here (no hub): a tiny random `Qwen2ForCausalLM` with tied embeddings, like
Qwen2.5-0.5B's, and SmolLM2's byte-level BPE tokenizer with its chat template, saved the way a model
downloaded from the hub is laid out (config.json, model.safetensors, tokenizer.json, tokenizer_config.json
with the chat template).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import CliRunner

from appliance.cli import main
from appliance.distill.records import HELDOUT_FILE, TRAIN_FILE, Record
from tests.conftest import start_daemon, stop_daemon
from tests.tiny_student import LESSONS, byte_level_tokenizer

pytestmark = pytest.mark.e2e  # train, convert, quantize, serve: ~45 s on 2 idle cores, ~2.5 min busy


def write_my_qwen2(folder: Path) -> Path:
    """"The folder the user already has": a tiny Qwen2 (2 layers, width 256) with SmolLM2's tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         # Wide enough embeddings that a trained answer can become confident (see tiny_student).
                         initializer_range=0.15)
    model = Qwen2ForCausalLM(config).eval()
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder, safe_serialization=True)
    # The chat template inside tokenizer_config.json, where Qwen2.5's folders carry it.
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    return folder


def write_dataset(folder: Path, repeats: int = 8) -> Path:
    """The project's dataset format (as `athanor harvest` writes it): each lesson `repeats` times to train on,
    once held out."""
    folder.mkdir(parents=True, exist_ok=True)
    lessons = [Record(prompt=q, answer=a, teacher_model="fake-teacher") for q, a in LESSONS]
    with (folder / TRAIN_FILE).open("w") as out:
        for _ in range(repeats):
            for record in lessons:
                out.write(json.dumps(record.to_dict()) + "\n")
    (folder / HELDOUT_FILE).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in lessons))
    return folder


def greedy_answer(model_folder: Path, question: str, max_new_tokens: int = 12) -> str:
    from appliance.distill.models import load_model, load_tokenizer

    model, tokenizer = load_model(model_folder), load_tokenizer(model_folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        tokenize=True)
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def athanor(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_qwen2_folder_trains_exports_and_is_served(tmp_path):
    base = write_my_qwen2(tmp_path / "my-qwen2")
    config = json.loads((base / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"]
    assert "chat_template" in json.loads((base / "tokenizer_config.json").read_text())
    # Random weights: before training the folder does not know the answers.
    assert not greedy_answer(base, LESSONS[0][0]).startswith(LESSONS[0][1][:5])
    data = write_dataset(tmp_path / "data")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(q + "\n" for q, _ in LESSONS))
    adapter, export = tmp_path / "adapter", tmp_path / "export"

    athanor("train", str(data), "--base", str(base), "--out", str(adapter), "--epochs", "10", "--batch-size", "4",
            "--lr", "1e-2", "--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--seed", "0")
    training = json.loads((adapter / "training.json").read_text())
    assert training["base_model"] == str(base.resolve()) and training["base_format"] == "hf"
    assert training["final_loss"] < training["losses"][0][1] / 4

    # The base comes from training.json; an HF folder goes through llama.cpp's converter.
    athanor("export", str(adapter), "--out", str(export), "--gguf", "f16,q8_0", "--prompts", str(prompts),
            "--max-new-tokens", "16", "--name", "my-qwen2")
    manifest = json.loads((export / "manifest.json").read_text())
    published = {a["quant"]: a for a in manifest["artifacts"]}
    assert set(published) == {"f16", "q8_0"}, manifest["rejected"]
    assert manifest["base"] == str(base.resolve()) and manifest["student_name"] == "my-qwen2"
    for artifact in published.values():
        assert artifact["verification"]["tokenizer_match"] == 1.0
        assert artifact["verification"]["greedy_match"] == 1.0

    home = tmp_path / "home"
    process, socket_path = start_daemon(home, env={"ATHANOR_STUDENT__PATH": str(export),
                                                   "ATHANOR_STUDENT__NAME": "my-qwen2",
                                                   "ATHANOR_STUDENT__N_CTX": "256",
                                                   "ATHANOR_STUDENT__PARALLEL": "1",
                                                   "ATHANOR_CACHE__ENABLED": "false"})
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://athanor",
                          timeout=60) as client:
            [model] = client.get("/v1/models").json()["data"]
            assert model["id"] == "my-qwen2"
            served = Path(model["athanor"]["path"])
            # The smallest published build is served by default, and llama.cpp loaded it as a qwen2.
            assert served == export / published["q8_0"]["path"]
            assert model["athanor"]["description"].startswith("qwen2"), model["athanor"]
            for question, answer in LESSONS:
                reply = client.post("/v1/chat/completions", json={
                    "model": model["id"], "messages": [{"role": "user", "content": question}],
                    "temperature": 0, "max_tokens": 16})
                assert reply.status_code == 200, reply.text
                body = reply.json()
                print(f"\n{model['id']} ({model['athanor']['description']}): {question!r} -> "
                      f"{body['choices'][0]['message']['content']!r}")
                assert body["choices"][0]["message"]["content"] == answer, body
                assert body["choices"][0]["finish_reason"] == "stop"
    finally:
        stop_daemon(process)

    from gguf import GGUFReader

    assert GGUFReader(served).fields["general.architecture"].contents() == "qwen2"
