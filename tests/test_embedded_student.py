"""The embedded default is served as a copy converted once from the shipped Q4_1: F16 when requests
are batched (llama.cpp's CPU kernels batch F16 best), Q8_0 when they are not (its fastest single
stream)."""

from pathlib import Path

import httpx
import llama_cpp
import pytest

from appliance.config import StudentConfig
from appliance.defaults import embedded_student_path
from appliance.errors import AthanorError
from appliance.engine.model_source import embedded_copy_name, embedded_quant, resolve_student, serve_embedded


def gguf_file_type(path: Path) -> int:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields["general.file_type"]
    return int(field.parts[field.data[0]][0])


def test_the_copy_is_named_for_the_shipped_file_and_the_type():
    shipped = Path("/pkg/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert embedded_copy_name(shipped, "0123456789abcdef", "q8_0") == "SmolLM2-135M-Instruct.0123456789ab.q8_0.gguf"
    # An upgraded package (another fingerprint) gets a copy of its own, not the stale one.
    assert embedded_copy_name(shipped, "fedcba9876543210", "q8_0") != embedded_copy_name(shipped, "0123456789abcdef",
                                                                                          "q8_0")


@pytest.mark.parametrize(("parallel", "quant", "ftype"), [
    (8, "f16", llama_cpp.LLAMA_FTYPE_MOSTLY_F16),
    (2, "f16", llama_cpp.LLAMA_FTYPE_MOSTLY_F16),
    (1, "q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
])
def test_the_default_copy_follows_parallel(parallel, quant, ftype):
    assert embedded_quant(None, parallel) == quant
    assert embedded_quant("Q4_1", parallel) == "q4_1"  # a quant that is set wins
    served = resolve_student(StudentConfig(parallel=parallel)).path
    assert served.name.endswith(f".{quant}.gguf") and gguf_file_type(served) == ftype


def test_a_copy_is_converted_once_and_then_reused(tmp_path):
    served = serve_embedded("q8_0", tmp_path)
    assert served.parent == tmp_path and served.name.endswith(".q8_0.gguf")
    assert gguf_file_type(served) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert gguf_file_type(embedded_student_path()) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
    written = served.stat().st_mtime_ns
    assert serve_embedded("Q8_0", tmp_path) == served and served.stat().st_mtime_ns == written
    assert [p.name for p in tmp_path.iterdir()] == [served.name]  # no partial file left behind
    source = resolve_student(StudentConfig(parallel=1), tmp_path)
    assert (source.path, source.quant) == (served, "q8_0")


def test_q4_1_serves_the_shipped_file_itself(tmp_path):
    assert serve_embedded("q4_1", tmp_path) == embedded_student_path()
    assert not any(tmp_path.iterdir())


def test_a_quant_the_embedded_default_cannot_take_is_refused_with_the_choices(tmp_path):
    with pytest.raises(AthanorError, match=r"'q5_k_m'.*f16, q8_0, q4_1, q4_0.*\[student\]\.path"):
        serve_embedded("q5_k_m", tmp_path)


def test_a_models_folder_that_cannot_be_written_names_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AthanorError, match=r'could not convert.*\[student\]\.quant = "q4_1"'):
        serve_embedded("q8_0", blocker / "models")


def test_the_daemon_serves_the_f16_copy_by_default(daemon):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon)), base_url="http://a", timeout=60) as client:
        model = client.get("/v1/models").json()["data"][0]["athanor"]
        assert model["quant"] == "F16" and model["path"].endswith(".f16.gguf")
        answer = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            "max_tokens": 16,
            "temperature": 0,
        }).json()
        assert "Paris" in answer["choices"][0]["message"]["content"]
