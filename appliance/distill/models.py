"""The one loader of base models and tokenizers, for training, evaluation and export: a Hugging Face
folder, or a GGUF file (transformers dequantizes it to float32). Imports torch and transformers lazily.

A GGUF's tokenizer is made to agree with llama.cpp, the engine the daemon serves with: its special
tokens come from the file's own metadata (transformers' GGUF conversion gets them wrong for some
models: SmolLM2's eos comes out as `<|im_start|>`), and `end_of_generation` gives the token ids
llama.cpp stops at, so an evaluated or verified answer ends where the daemon's would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import DistillError

ADAPTER_CONFIG = "adapter_config.json"

# llama.cpp's own tables (src/llama-vocab.cpp, `load`): tokens that end generation by their text,
# whatever the file declares, and the FIM tokens it finds by text when the file declares none
# (each FIM pad/repo/file-separator token ends generation too).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
})
FIM_TEXTS = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
# Declared ids that end generation (GGUF keys `tokenizer.ggml.<kind>_token_id`).
EOG_KINDS = ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep")
_TOKENIZER_NAMES = {"bos": "bos_token", "eos": "eos_token", "padding": "pad_token", "unknown": "unk_token"}
_EOG_ATTR = "athanor_eog_ids"  # where load_tokenizer leaves a GGUF's set on the tokenizer


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


@dataclass(frozen=True)
class GGUFVocab:
    """What a GGUF says about its tokens: their texts and the special ids it declares."""

    tokens: tuple[str, ...]
    declared: Mapping[str, int]
    """kind ("bos", "eos", "eot", "padding", ...) -> token id, from `tokenizer.ggml.<kind>_token_id`."""


def read_gguf_vocab(path: Path) -> GGUFVocab:
    """The token texts and declared special ids of a GGUF file (its metadata only; ~4 s for SmolLM2)."""
    from gguf import GGUFReader

    fields = GGUFReader(Path(path)).fields
    tokens = fields.get("tokenizer.ggml.tokens")
    declared = {}
    for key, field in fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
            declared[key.removeprefix("tokenizer.ggml.").removesuffix("_token_id")] = int(field.contents())
    return GGUFVocab(tuple(tokens.contents()) if tokens is not None else (), declared)


def end_of_generation_ids(texts: Mapping[str, int], declared: Mapping[str, int], vocab_size: int) -> frozenset[int]:
    """The ids llama.cpp ends generation at (pure; its `special_eog_ids`).

    `texts`: token text -> id for the tokens that may end generation by their text (a GGUF: all of
    them; a transformers tokenizer: its special tokens). `declared`: kind -> id, as GGUF metadata
    names them (eos, eot, eom, fim_pad, fim_rep, fim_sep; others are ignored).
    """
    # llama.cpp drops a declared id outside the vocabulary.
    ids = {kind: i for kind, i in declared.items() if 0 <= i < vocab_size}
    for kind, candidates in FIM_TEXTS.items():
        found = next((texts[t] for t in candidates if t in texts), None)
        if kind not in ids and found is not None:
            ids[kind] = found
    eog = {ids[kind] for kind in EOG_KINDS if kind in ids}
    eog |= {i for text, i in texts.items() if text in EOG_TEXTS}
    if "<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts) and "<|end|>" in texts:
        # llama.cpp's gpt-oss rule: there `<|end|>` closes a message inside a turn, not the reply.
        eog.discard(texts["<|end|>"])
    return frozenset(eog)


def gguf_end_of_generation(vocab: GGUFVocab) -> frozenset[int]:
    return end_of_generation_ids({t: i for i, t in enumerate(vocab.tokens)}, vocab.declared, len(vocab.tokens))


def load_tokenizer(path: Path, need_chat_template: bool = True) -> Any:
    """The tokenizer of a model folder, an adapter folder or a GGUF file.

    For a GGUF its bos/eos/pad/unk are the file's own and its end-of-generation set is llama.cpp's
    (see `end_of_generation`). Training and evaluation format chats, so by default a tokenizer
    without a chat template is refused; the export stage can do without one.
    """
    _offline()
    from transformers import AutoTokenizer

    # An adapter folder carries its tokenizer but no config.json.
    is_tokenizer_folder = Path(path).is_dir() and (Path(path) / "tokenizer_config.json").is_file()
    where, extra = (str(path), {}) if is_tokenizer_folder else _where(path)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if "gguf_file" in extra:
        vocab = read_gguf_vocab(Path(path))
        for kind, name in _TOKENIZER_NAMES.items():
            if kind in vocab.declared and 0 <= vocab.declared[kind] < len(tokenizer):
                setattr(tokenizer, name, tokenizer.convert_ids_to_tokens(vocab.declared[kind]))
        setattr(tokenizer, _EOG_ATTR, gguf_end_of_generation(vocab))
    if need_chat_template and not tokenizer.chat_template:
        raise DistillError(f"the tokenizer of {path} has no chat template; training needs one to format the chats")
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss; any id works, and EOS always exists.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_of_generation(tokenizer: Any) -> frozenset[int]:
    """The token ids that end an answer, as llama.cpp would stop: a GGUF's set when `load_tokenizer`
    read one, else the eos plus the special tokens llama.cpp ends at by their text (`<|im_end|>`, ...;
    its converter makes a transformers special token a control token)."""
    known = getattr(tokenizer, _EOG_ATTR, None)
    if known is not None:
        return known
    specials = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    declared = {"eos": tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else {}
    return end_of_generation_ids(specials, declared, len(tokenizer))


def end_of_turn(tokenizer: Any) -> str:
    """The token the chat template closes an assistant turn with (`<|im_end|>`, `<|eot_id|>`, ...):
    the first end-of-generation token the template writes after an answer; else the eos."""
    sentinel = "ATHANOR-ANSWER-SENTINEL"
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    tail = text[text.rfind(sentinel) + len(sentinel):] if sentinel in text else ""
    eog = end_of_generation(tokenizer)
    for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if token in eog:
            return tokenizer.convert_ids_to_tokens(token)
    return tokenizer.eos_token or ""


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Precision name -> torch dtype name."""


def load_model(path: Path, device: str = "cpu", *, dtype: str = "fp32", four_bit: bool = False) -> Any:
    """A causal LM from a model folder or a GGUF file, on `device`, in eval mode.

    `dtype` ("fp32", "bf16", "fp16"): the weights' precision (a GGUF is dequantized, then cast).
    `four_bit`: linear weights in bitsandbytes NF4 (QLoRA), computing in `dtype`; needs CUDA and bitsandbytes.
    """
    _offline()
    import torch
    from transformers import AutoModelForCausalLM

    where, extra = _where(path)
    torch_dtype = getattr(torch, DTYPES[dtype])
    if four_bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype)
        # A 4-bit model is placed while it loads; it cannot be moved afterwards.
        extra["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **extra)
    except (OSError, ValueError, NotImplementedError) as exc:
        raise DistillError(f"cannot load a model from {path}: {exc}") from None
    if not model.config.architectures:
        # A GGUF base leaves this empty; the export's converters and optimum need it.
        model.config.architectures = [type(model).__name__]
    return (model if four_bit else model.to(device)).eval()


def device() -> str:
    """CUDA when this torch build sees a GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_adapter(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / ADAPTER_CONFIG).is_file()
