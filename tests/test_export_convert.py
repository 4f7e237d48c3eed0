"""An HF-folder base goes through llama.cpp's own converter (fetched once with pip into a cache)."""

from __future__ import annotations

import pytest

from appliance.distill.models import load_tokenizer
from export.errors import ExportError
from export.merge import save_merged
from export.pipeline import ExportOptions, run_export
from tests.tiny_student import LESSONS, byte_level_tokenizer, tiny_llama

pytestmark = pytest.mark.e2e  # the first run on a machine downloads llama-cpp-python's source (~75 MB)


def test_hf_folder_base_converts_with_llama_cpp_and_matches(tiny_adapter, tmp_path):
    _, adapter = tiny_adapter
    # The same weights as the GGUF base (same seed), as an HF folder with a genuine HF tokenizer.
    hf_base = save_merged(tiny_llama(), byte_level_tokenizer(), tmp_path / "hf-base")
    manifest = run_export(ExportOptions(adapter=adapter, base=hf_base, out=tmp_path / "export", gguf=["f16"],
                                        prompts=[q for q, _ in LESSONS], max_new_tokens=12))
    [artifact] = manifest.artifacts
    assert artifact.label == "gguf:f16"
    assert artifact.verification["greedy_match"] == 1.0
    assert artifact.verification["tokenizer_match"] == 1.0  # the converter carried the vocabulary over intact
    assert manifest.base == str(hf_base)


def test_a_tokenizer_the_converter_misreads_is_refused_not_crashed(tiny_adapter, tmp_path):
    gguf_base, adapter = tiny_adapter
    # transformers' GGUF-born tokenizer.json looks like SentencePiece to the converter; llama.cpp would
    # abort the process on the result, so the export must stop with advice instead.
    hf_base = save_merged(tiny_llama(), load_tokenizer(gguf_base), tmp_path / "hf-base")
    with pytest.raises(ExportError, match="pass that .gguf file as --base"):
        run_export(ExportOptions(adapter=adapter, base=hf_base, out=tmp_path / "export", gguf=["f16"],
                                 prompts=[LESSONS[0][0]], max_new_tokens=4))
