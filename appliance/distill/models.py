"""Loading a base model for training or evaluation: a Hugging Face folder, or a GGUF file
(transformers dequantizes it to float32). Imports torch and transformers lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import DistillError

ADAPTER_CONFIG = "adapter_config.json"


def _offline() -> None:
    # The appliance runs offline; a stray hub lookup would hang or fail late.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _where(path: Path) -> tuple[str, dict[str, Any]]:
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), {}
    raise DistillError(
        f"no base model at {path}: give a Hugging Face model folder (with config.json) or a .gguf file "
        "(e.g. the embedded SmolLM2, `python -c 'from appliance.defaults import embedded_student_path as p; print(p())'`)"
    )


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model folder or GGUF file; it must have a chat template."""
    _offline()
    from transformers import AutoTokenizer

    # An adapter folder carries its tokenizer but no config.json.
    is_tokenizer_folder = Path(path).is_dir() and (Path(path) / "tokenizer_config.json").is_file()
    where, extra = (str(path), {}) if is_tokenizer_folder else _where(path)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if not tokenizer.chat_template:
        raise DistillError(f"the tokenizer of {path} has no chat template; training needs one to format the chats")
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss; any id works, and EOS always exists.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, device: str = "cpu") -> Any:
    """A causal LM from a model folder or a GGUF file, in float32 on `device`."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM

    where, extra = _where(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    except (OSError, ValueError) as exc:
        raise DistillError(f"cannot load a model from {path}: {exc}") from None
    return model.to(device)


def device() -> str:
    """CUDA when this torch build sees a GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_adapter(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()
