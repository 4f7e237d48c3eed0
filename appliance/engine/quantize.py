"""Quantize an f16 GGUF with llama.cpp's own quantizer (`llama_model_quantize`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ExportError

# Requested names -> llama.cpp's ftype constant names. f16 is the converter's own output.
_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}
GGUF_TYPES = ("f16", *_FTYPES)
# Only as the target of re-quantizing an already quantized file (the embedded default).
_REQUANT_ONLY = {"f16": "LLAMA_FTYPE_MOSTLY_F16"}


def check_gguf_types(types: list[str]) -> list[str]:
    """Normalise and validate requested GGUF types; raises naming the accepted ones."""
    normalised = [t.strip().lower() for t in types if t.strip()]
    unknown = [t for t in normalised if t not in GGUF_TYPES]
    if unknown:
        raise ExportError(f"unknown GGUF type {', '.join(unknown)}; choose from {', '.join(GGUF_TYPES)}")
    return normalised


def quantize(source: Path, out: Path, quant: str, threads: int = 0, requantize: bool = False) -> Path:
    """Write `source` (f16 GGUF, or any GGUF with `requantize`) quantized to `quant` at `out`.

    Tensors whose rows do not fit a k-quant's 256-wide blocks are given a compatible type by
    llama.cpp itself (it logs the fallback), so tiny models quantize too.
    """
    import llama_cpp

    name = {**_FTYPES, **(_REQUANT_ONLY if requantize else {})}.get(quant)
    if name is None:
        raise ExportError(f"cannot quantize to {quant!r}; choose from {', '.join(_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, name)
    params.allow_requantize = requantize
    params.nthread = threads or os.cpu_count() or 1
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")  # two daemons may convert at once
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp could not quantize {source} to {quant} (status {status}); "
                          f"check that {source.name} is a complete GGUF file and that the disk has room")
    partial.replace(out)
    return out
