"""scripts/bench_gpu.sh's table and its refusal where no GPU is (the benchmark itself needs a GPU lease)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_gpu_table  # noqa: E402


def _serve_row(clients: int, tokens_per_s: float, ttft_p95: float) -> dict:
    return {"clients": clients, "aggregate_tokens_per_s": tokens_per_s, "ttft_ms_p95": ttft_p95}


def test_the_table_holds_each_figure_and_the_targets_ratios(tmp_path):
    (tmp_path / "serve.json").write_text(json.dumps({"device": "NVIDIA H200", "daemon": [
        _serve_row(1, 100.0, 20.0), _serve_row(8, 640.0, 36.0)]}))
    (tmp_path / "doctor.json").write_text(json.dumps([{"name": "llama.cpp", "message": "GPU build; 31/31 layers"}]))
    (tmp_path / "daemon.json").write_text(json.dumps({"ratio_daemon_vs_raw": 0.97, "added_latency_1tok_ms": 1.5}))
    (tmp_path / "export.json").write_text(json.dumps({"artifacts": [
        {"artifact": "gguf q8_0", "agreement": 0.99, "tokens_per_s": 900.0}]}))
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "training.json").write_text(json.dumps(
        {"precision": "bf16", "device": "cuda", "steps": 32, "final_loss": 0.4}))
    (tmp_path / "train_seconds").write_text("12\n")
    device, table = bench_gpu_table.rows(tmp_path)
    values = {measure: value for measure, value, _ in table}
    assert device == "NVIDIA H200"
    assert values["8 clients / 1: tokens/s"] == "6.40x" and values["8 clients / 1: ttft p95"] == "1.80x"
    assert values["llama.cpp build"] == "GPU build; 31/31 layers"
    assert values["export gguf q8_0: agreement, tokens/s"] == "0.990, 900"
    assert values["LoRA training"] == "bf16 on cuda, 32 steps in 12 s, final loss 0.4"


def test_a_step_that_wrote_nothing_shows_as_not_measured(tmp_path):
    device, table = bench_gpu_table.rows(tmp_path)
    assert device == "unknown device"
    assert {value for _, value, _ in table} == {bench_gpu_table.NOT_MEASURED}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run the benchmark")
def test_without_a_gpu_the_benchmark_says_so_and_installs_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATHANOR_GPU"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "bench_gpu.sh"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and "no NVIDIA GPU" in done.stderr and "ATHANOR_GPU=cpu" in done.stderr
    assert not (tmp_path / "out").exists()
