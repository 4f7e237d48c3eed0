"""The whole distillation loop on CPU: a teacher (the fake Gemini, reached by the real google-genai
client) labels review sentiment -> `athanor harvest` -> `athanor train` (LoRA on a tiny real Llama)
-> `athanor evaluate`; the student's agreement with the teacher on held-out prompts must rise."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from appliance.cli import main
from tests import distill_task
from tests.distill_tiny import build_tiny_model
from tests.fakes import FakeGemini

pytestmark = pytest.mark.e2e
KEY = "fake-gemini-key-e2e"


@pytest.fixture
def one_thread():
    # A width-64 model spends more time synchronising threads than computing; one is faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_harvest_train_evaluate_raises_agreement(tmp_path, monkeypatch, one_thread):
    with FakeGemini(api_key=KEY, answer=distill_task.teacher_answer) as fake:
        for name, value in {
            "ATHANOR_TEACHER__PROVIDER": "gemini", "ATHANOR_TEACHER__BASE_URL": fake.url,
            "ATHANOR_TEACHER__API_KEY_ENV": "ATHANOR_TEST_GEMINI_KEY", "ATHANOR_TEST_GEMINI_KEY": KEY,
            "ATHANOR_TEACHER__REQUESTS_PER_MINUTE": "100000", "ATHANOR_DISTILL__MAX_TOKENS": "8",
            "ATHANOR_DISTILL__HELDOUT_FRACTION": "0.25", "ATHANOR_DISTILL__CONCURRENCY": "8",
        }.items():
            monkeypatch.setenv(name, value)
        prompts = distill_task.write_prompts(tmp_path / "prompts.jsonl", 200)
        data, tiny = tmp_path / "data", build_tiny_model(tmp_path / "tiny")
        run("harvest", str(prompts), "--out", str(data))
        report = json.loads((data / "report.json").read_text())
        assert report["heldout"] >= 30 and report["train"] >= 90
        before = tmp_path / "before"
        run("evaluate", "--dataset", str(data), "--student", str(tiny), "--max-tokens", "4", "--out", str(before))
        adapter = tmp_path / "adapter"
        run("train", str(data), "--base", str(tiny), "--out", str(adapter), "--epochs", "10", "--lr", "3e-3",
            "--modules-to-save", "lm_head", "--lora-dropout", "0")
        after = tmp_path / "after"
        run("evaluate", "--dataset", str(data), "--student", str(adapter), "--max-tokens", "4", "--out", str(after))
        asked = len(fake.requests)
    assert asked == 200  # every prompt once; evaluation reused the harvested answers (exact-match category)
    first = json.loads((before / "evaluation.json").read_text())["overall"]["agreement"]
    last = json.loads((after / "evaluation.json").read_text())
    print(f"\nagreement with the teacher on {report['heldout']} held-out prompts: "
          f"before {first:.1%}, after {last['overall']['agreement']:.1%}")
    assert last["overall"]["agreement"] >= first + 0.5
    assert last["overall"]["agreement"] >= 0.75
    training = json.loads((adapter / "training.json").read_text())
    assert training["final_loss"] < training["losses"][0][1] / 4
    assert (adapter / "adapter_config.json").is_file() and (adapter / "loss.png").stat().st_size > 0
    assert (after / "cost_quality.png").stat().st_size > 0 and last["recommended_threshold"] is not None
