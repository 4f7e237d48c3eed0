"""ONNX students: export with past key values through optimum, int8 weights through onnxruntime."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .errors import ExportError

ONNX_TYPES = ("fp32", "int8")
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


def quantize_int8(fp32: Path, out: Path) -> Path:
    """Dynamic int8 quantization of the weights (activations stay float, quantized on the fly)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True, exist_ok=True)
    for item in fp32.iterdir():
        if item.is_file() and not item.name.startswith(MODEL_FILE):
            shutil.copy2(item, out / item.name)
    external = any(p.name != MODEL_FILE for p in fp32.glob(MODEL_FILE + "*"))
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
