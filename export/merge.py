"""Apply the LoRA adapter to the base in full precision and merge it into the weights.

The base is a Hugging Face model folder or a GGUF file, loaded (model and tokenizer) by the loader
training and evaluation use, `appliance.distill.models`, so a GGUF base's special tokens and
end-of-generation set are llama.cpp's in every stage. A GGUF base is dequantized to float32 by
transformers: the adapter is always merged into full-precision weights, never into a quantized base
(that would bake the quantization error of the base into every later build).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.protocol.training import TRAINING_FILE, TrainingMeta, read_training_meta

from .errors import ExportError


@dataclass(frozen=True)
class BaseRef:
    """Where the base model lives: an HF folder, or a GGUF file inside `folder`."""

    folder: Path
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_base(path: Path) -> BaseRef:
    """Recognise a base model path; raises `ExportError` naming what was expected."""
    if path.is_file() and path.suffix == ".gguf":
        return BaseRef(path.parent, path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            return BaseRef(path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseRef(path, ggufs[0].name)
    raise ExportError(f"no base model at {path}; pass --base a Hugging Face model folder (with config.json) "
                      "or a .gguf file")


def check_adapter(adapter: Path) -> None:
    if not (adapter / "adapter_config.json").is_file():
        raise ExportError(f"no adapter at {adapter} (no adapter_config.json); run `athanor train` first")


def read_training_info(adapter: Path) -> TrainingMeta:
    """`training.json` beside the adapter (base model, dataset hash); an empty record if absent."""
    try:
        return read_training_meta(adapter) or TrainingMeta()
    except ValueError as exc:
        raise ExportError(f"{adapter / TRAINING_FILE} is not valid JSON ({exc}); fix or remove it") from None


def merge_adapter(model, adapter: Path):
    """Apply the peft adapter at `adapter` to `model` and fold it into the weights."""
    from peft import PeftModel

    check_adapter(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ExportError(f"the adapter at {adapter} does not fit this base: {exc}; "
                          "pass the --base it was trained on") from None
    return peft_model.merge_and_unload().eval()


def save_merged(model, tokenizer, folder: Path) -> Path:
    """Write the merged model and its tokenizer as a Hugging Face folder (safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # transformers writes a bogus tokenizer.model for GGUF-born BPE tokenizers; tokenizer.json is the real one.
    bogus = folder / "tokenizer.model"
    if bogus.exists() and (folder / "tokenizer.json").exists() and _not_sentencepiece(bogus):
        bogus.unlink()
    return folder


def _not_sentencepiece(path: Path) -> bool:
    try:
        import sentencepiece

        sentencepiece.SentencePieceProcessor(model_file=str(path))
        return False
    except Exception:
        return True
