"""ONNX students: export with past key values through optimum, fp16 and int8 weights through onnxruntime."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import ExportError

ONNX_TYPES = ("fp32", "fp16", "int8")
MODEL_FILE = "model.onnx"


def check_onnx_types(types: list[str]) -> list[str]:
    normalised = [t.strip().lower() for t in types if t.strip()]
    unknown = [t for t in normalised if t not in ONNX_TYPES]
    if unknown:
        raise ExportError(f"unknown ONNX type {', '.join(unknown)}; choose from {', '.join(ONNX_TYPES)}")
    return normalised


def export_fp32(merged: Path, out: Path) -> Path:
    """Export the merged HF folder to `out` (model.onnx + config + tokenizer), decoder with past key values."""
    from optimum.exporters.onnx import main_export

    # The exporter's tracer warnings say nothing actionable about a plain decoder export.
    logging.getLogger("optimum").setLevel(logging.ERROR)
    try:
        main_export(str(merged), output=str(out), task="text-generation-with-past", device="cpu",
                    do_validation=False)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ExportError(f"optimum cannot export this model to ONNX: {exc}") from None
    if not (out / MODEL_FILE).is_file():
        raise ExportError(f"optimum wrote no {MODEL_FILE} into {out}")
    return out


def _start_derived(fp32: Path, out: Path) -> bool:
    """Copy the fp32 folder's config and tokenizer into `out`; True when its weights are external data."""
    out.mkdir(parents=True, exist_ok=True)
    for item in fp32.iterdir():
        if item.is_file() and not item.name.startswith(MODEL_FILE):
            shutil.copy2(item, out / item.name)
    # optimum moves weights into model.onnx_data past protobuf's 2 GB limit; the derived build must too.
    return any(p.name != MODEL_FILE for p in fp32.glob(MODEL_FILE + "*"))


def convert_fp16(fp32: Path, out: Path) -> Path:
    """float16 weights and activations; the graph's inputs and outputs (past key values included) stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    external = _start_derived(fp32, out)
    # keep_io_types: the engine and the verifier feed and read float32 whatever the build, and the
    # casts it adds at the edges cost nothing next to the matmuls. Given a path, the converter infers
    # shapes through a file, which works past 2 GB where an in-memory model cannot.
    model = convert_float_to_float16(str(fp32 / MODEL_FILE), keep_io_types=True)
    onnx.save_model(model, str(out / MODEL_FILE), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=MODEL_FILE + "_data")
    return out


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the weights (activations stay float, quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = _start_derived(fp32, out)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic advises pre-processing on the root logger; not needed here
    try:
        quantize_dynamic(str(fp32 / MODEL_FILE), str(out / MODEL_FILE), weight_type=QuantType.QInt8,
                         use_external_data_format=external)
    finally:
        root.setLevel(level)
    return out


def artifact_files(folder: Path) -> list[Path]:
    """Every file an ONNX student folder needs."""
    return [p for p in folder.iterdir() if p.is_file()]
