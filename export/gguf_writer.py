"""Write a merged model as an f16 GGUF, carrying the tokenizer and chat template over from a GGUF.

Used when the base is itself a GGUF file (the embedded SmolLM2, a downloaded Q4 model): its
vocabulary, merges, special tokens, chat template and every model setting are copied key for
key, and only the weights are replaced by the merged ones. transformers' GGUF loader
rearranged some tensors on the way in (llama's Q/K rows, gemma's norm offsets); each is put
back exactly as llama.cpp expects, so the round trip base GGUF -> torch -> GGUF is lossless
up to f16 rounding. An HF-folder base goes through llama.cpp's own converter instead (`convert.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ExportError

# transformers' GGUF tensor processors (modeling_gguf_pytorch_utils.TENSOR_PROCESSORS) per GGUF
# architecture, and how each is undone: "permute_qk" for llama, "norm_plus_one" for gemma2/3.
_INVERSE = {"llama": "permute_qk", "qwen2": None, "qwen3": None, "gemma2": "norm_plus_one", "gemma3": "norm_plus_one"}
_MODEL_TYPE_TO_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                       "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
SUPPORTED_MODEL_TYPES = tuple(_MODEL_TYPE_TO_ARCH)


def gguf_arch(model_type: str) -> str:
    """llama.cpp's architecture name for a transformers `model_type`."""
    try:
        return _MODEL_TYPE_TO_ARCH[model_type]
    except KeyError:
        raise ExportError(f"writing a {model_type!r} model onto a GGUF base is not supported "
                          f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); pass an HF folder as --base "
                          "so llama.cpp's converter handles it") from None


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's row order for Q/K projections (rotary halves interleaved), from HF's order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _hparams(config, arch: str) -> dict[str, tuple[object, str]]:
    """The model-shape keys, from the merged model's config (these win over the template's)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    values = {
        "context_length": (config.max_position_embeddings, "uint32"),
        "embedding_length": (config.hidden_size, "uint32"),
        "block_count": (config.num_hidden_layers, "uint32"),
        "feed_forward_length": (config.intermediate_size, "uint32"),
        "attention.head_count": (config.num_attention_heads, "uint32"),
        "attention.head_count_kv": (getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                                    "uint32"),
        "attention.layer_norm_rms_epsilon": (float(config.rms_norm_eps), "float32"),
        "rope.freq_base": (float(getattr(config, "rope_theta", 10000.0)), "float32"),
        "rope.dimension_count": (head_dim, "uint32"),
        "attention.key_length": (head_dim, "uint32"),
        "attention.value_length": (head_dim, "uint32"),
        "vocab_size": (config.vocab_size, "uint32"),
    }
    return {f"{arch}.{key}": value for key, value in values.items()}


def _tensor_map(model, arch: str) -> list[tuple[str, str]]:
    """(gguf name, state-dict name) pairs in state-dict order."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    gguf_to_hf = get_gguf_hf_weights_map(model, model_type=arch)
    hf_to_gguf = {hf: gg for gg, hf in gguf_to_hf.items()}
    pairs = []
    for hf_name in model.state_dict():
        gguf_name = hf_to_gguf.get(hf_name)
        if gguf_name is None:
            continue
        if gguf_name == "output.weight" and model.config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when output is absent
        pairs.append((gguf_name, hf_name))
    return pairs


def _prepare(name: str, tensor, config, inverse: str | None, dtype: str) -> tuple[np.ndarray, object]:
    from gguf import GGMLQuantizationType

    data = tensor.detach().float().cpu().numpy()
    if inverse == "permute_qk":
        heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
        if ".attn_q." in name:
            data = permute_qk(data, heads, heads)
        elif ".attn_k." in name:
            data = permute_qk(data, heads, kv_heads)
    elif inverse == "norm_plus_one" and name.endswith("norm.weight"):
        data = data + 1.0
    # As llama.cpp's converter does: 1-D tensors (norms, biases) stay f32, matrices take the file type.
    if data.ndim <= 1 or dtype == "f32":
        return np.ascontiguousarray(data, dtype=np.float32), GGMLQuantizationType.F32
    return np.ascontiguousarray(data, dtype=np.float16), GGMLQuantizationType.F16


def _copy_metadata(reader, writer, skip: Callable[[str], bool]) -> None:
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if skip(key) or not field.types:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)


def write_gguf(model, out: Path, template: Path, dtype: str = "f16",
               on_tensor: Callable[[int, int], None] | None = None) -> Path:
    """Write `model` (a transformers causal LM in float32) to `out` as a `dtype` (f16/f32) GGUF.

    Tokenizer, special tokens, chat template and the other metadata come from the GGUF `template`
    (the base); the architecture's shape keys come from the model's config. `on_tensor(done, total)`
    reports progress.
    """
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

    if dtype not in ("f16", "f32"):
        raise ExportError(f"GGUF can be written as f16 or f32, not {dtype!r}; quantize afterwards")
    arch = gguf_arch(model.config.model_type)
    reader = GGUFReader(template)
    template_arch = reader.fields["general.architecture"].contents()
    hparams = _hparams(model.config, arch)

    def skip(key: str) -> bool:
        return (key.startswith("GGUF.") or key in ("general.architecture", "general.file_type",
                                                   "general.quantization_version")
                or key.startswith("split.") or key in hparams
                # Another architecture's settings mean nothing to this one; its tokenizer still does.
                or (template_arch != arch and key.startswith(f"{template_arch}.")))

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = GGUFWriter(partial, arch)
    _copy_metadata(reader, writer, skip)
    types = {"uint32": GGUFValueType.UINT32, "float32": GGUFValueType.FLOAT32}
    for key, (value, kind) in hparams.items():
        writer.add_key_value(key, value, types[kind])
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if dtype == "f16" else LlamaFileType.ALL_F32)
    writer.add_quantization_version(2)

    inverse = _INVERSE.get(arch)
    state = model.state_dict()
    pairs = _tensor_map(model, arch)
    if not any(name == "token_embd.weight" for name, _ in pairs):
        raise ExportError(f"could not map the {arch} model's tensors to GGUF names; "
                          "pass an HF folder as --base so llama.cpp's converter handles it")
    for index, (gguf_name, hf_name) in enumerate(pairs):
        data, raw_dtype = _prepare(gguf_name, state[hf_name], model.config, inverse, dtype)
        writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        if on_tensor:
            on_tensor(index + 1, len(pairs))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out
