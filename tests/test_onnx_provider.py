"""`[student].onnx_provider`: which onnxruntime execution provider an ONNX student runs on, without hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import StudentConfig, parse_config
from appliance.engine.onnx import CPU, CUDA, OnnxEngineError, choose_providers
from appliance.errors import ConfigError
from appliance.engine.model_source import StudentSource, open_engine

CPU_ONLY = ["AzureExecutionProvider", CPU]  # what the plain onnxruntime wheel offers
GPU_BUILD = ["TensorrtExecutionProvider", CUDA, CPU]  # onnxruntime-gpu


def test_auto_takes_cuda_when_offered_and_the_cpu_otherwise():
    assert choose_providers(GPU_BUILD, "auto") == [CUDA, CPU]
    assert choose_providers(CPU_ONLY, "auto") == [CPU]


def test_cpu_never_asks_for_cuda():
    assert choose_providers(GPU_BUILD, "cpu") == [CPU]
    assert choose_providers(CPU_ONLY, "cpu") == [CPU]


def test_cuda_keeps_the_cpu_behind_it_for_nodes_cuda_cannot_run():
    assert choose_providers(GPU_BUILD, "cuda") == [CUDA, CPU]


def test_cuda_without_onnxruntime_gpu_fails_naming_the_fix():
    with pytest.raises(OnnxEngineError) as caught:
        choose_providers(CPU_ONLY, "cuda")
    message = str(caught.value)
    assert "[student].onnx_provider" in message and CPU in message
    assert "ATHANOR_GPU=cuda bash scripts/quickstart.sh" in message and "onnxruntime-gpu" in message


def test_the_setting_is_validated_and_defaults_to_auto():
    assert StudentConfig().onnx_provider == "auto"
    assert parse_config({"student": {"onnx_provider": "cuda"}}).student.onnx_provider == "cuda"
    with pytest.raises(ConfigError, match="onnx_provider"):
        parse_config({"student": {"onnx_provider": "gpu"}})


def test_open_engine_passes_the_setting_to_the_onnx_engine(monkeypatch, tmp_path):
    import appliance.engine.onnx as onnx_engine

    seen = {}

    class Recorder:
        def __init__(self, folder: Path, name: str, **kwargs) -> None:
            seen.update(kwargs, folder=folder, name=name)

    monkeypatch.setattr(onnx_engine, "OnnxEngine", Recorder)
    open_engine(StudentConfig(name="s", onnx_provider="cpu"), StudentSource("onnx", tmp_path, "f"))
    assert seen["provider"] == "cpu" and seen["folder"] == tmp_path and seen["name"] == "s"
