"""The pure halves of the export stage: verification figures, the gate, manifests and artifact choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from export.errors import ChecksumMismatch, ExportError
from appliance.protocol.manifest import Artifact, Manifest, choose_artifact, file_entries, read_manifest, verify_artifact, write_manifest
from export.verify import Figures, Gate, Threshold, greedy_match, mean_kl, top1_agreement


def test_agreement_counts_matching_argmax_rows():
    ref = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cand = np.array([[0.0, 4.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
    assert top1_agreement(ref, cand) == pytest.approx(2 / 3)


@pytest.mark.parametrize("shift", [0.0, 7.5, -100.0])
def test_kl_is_zero_for_the_same_distribution_whatever_the_logit_offset(shift):
    # Logits are defined up to a constant; llama.cpp and torch may differ by one.
    ref = np.random.default_rng(0).normal(size=(5, 50))
    assert mean_kl(ref, ref + shift) == pytest.approx(0.0, abs=1e-9)


def test_kl_matches_the_closed_form_for_two_outcomes():
    p, q = 0.9, 0.6
    ref = np.log([[p, 1 - p]])
    cand = np.log([[q, 1 - q]])
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert mean_kl(ref, cand) == pytest.approx(expected)


def test_greedy_match_is_per_prompt_exact():
    assert greedy_match([[1, 2], [3, 4]], [[1, 2], [3, 5]]) == 0.5


@pytest.mark.parametrize("quant, agreement, kl, passes", [
    ("f16", 1.0, 0.0, True),
    ("f16", 0.94, 0.0, False),        # under f16's 0.95
    ("q4_k_m", 0.75, 0.4, True),      # 4-bit is allowed to lose more
    ("q8_0", 0.99, 0.2, False),       # agreement alone does not pass: the distribution moved
    ("q3_xyz", 0.61, 0.6, True),      # unknown type: the lenient fallback
    ("f16", float("nan"), 0.0, False),  # a broken measurement never passes
])
def test_gate_table(quant, agreement, kl, passes):
    figures = Figures(agreement, kl, 1.0, 10.0, 10)
    assert (Gate().judge(quant, figures) == []) is passes


def test_gate_override_applies_to_every_type():
    gate = Gate().overridden(min_agreement=1.0, max_kl=-1.0)
    reasons = gate.judge("q4_k_m", Figures(1.0, 0.0, 1.0, 1.0, 1))
    assert reasons == ["mean KL 0.0000 > -1.0"]
    assert gate.threshold("int8") == Threshold(1.0, -1.0)


def _artifact(tmp_path, name: str, quant: str, data: bytes, fmt: str = "gguf") -> Artifact:
    file = tmp_path / name
    file.write_bytes(data)
    entry = file_entries(tmp_path, [file])[0]
    return Artifact(fmt, quant, name, entry.sha256, entry.size_bytes, files=(entry,))


def test_manifest_round_trip_and_choice(tmp_path):
    big = _artifact(tmp_path, "s.q8_0.gguf", "q8_0", b"x" * 100)
    small = _artifact(tmp_path, "s.q4_k_m.gguf", "q4_k_m", b"y" * 50)
    onnx = _artifact(tmp_path, "model.onnx", "int8", b"z" * 10, fmt="onnx")
    write_manifest(Manifest(base="b", adapter="a", artifacts=[big, small, onnx]), tmp_path)
    manifest = read_manifest(tmp_path)
    assert choose_artifact(manifest).quant == "q4_k_m"  # the smallest GGUF, even though ONNX is smaller
    assert choose_artifact(manifest, quant="q8_0").path == "s.q8_0.gguf"
    assert choose_artifact(manifest, fmt="onnx").quant == "int8"
    with pytest.raises(ExportError, match="no published f16 artifact"):
        choose_artifact(manifest, quant="f16")
    assert verify_artifact(manifest.artifacts[0], tmp_path) == tmp_path / "s.q8_0.gguf"


def test_verify_names_file_hashes_and_fix(tmp_path):
    artifact = _artifact(tmp_path, "s.gguf", "f16", b"abc")
    (tmp_path / "s.gguf").write_bytes(b"abd")
    with pytest.raises(ChecksumMismatch) as caught:
        verify_artifact(artifact, tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "s.gguf") in message and artifact.sha256 in message
    assert "athanor export" in message


def test_unknown_manifest_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99, "base": "b", "adapter": "a"}))
    with pytest.raises(ExportError, match="format 99"):
        read_manifest(tmp_path)


def test_config_takes_extra_students_with_distinct_names(tmp_path):
    from appliance.config import parse_config
    from appliance.errors import ConfigError

    config = parse_config({"student": {"name": "a", "path": str(tmp_path)},
                           "students": [{"name": "b", "path": str(tmp_path), "quant": "onnx:int8"}]})
    assert [s.name for s in config.students] == ["b"] and config.student.path == tmp_path  # folders are accepted
    with pytest.raises(ConfigError, match=r"\[\[students\]\]\[0\]\.name: 'a' is already taken"):
        parse_config({"student": {"name": "a"}, "students": [{"name": "a"}]})
