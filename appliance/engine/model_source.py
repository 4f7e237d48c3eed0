"""Where a configured student's model comes from: a GGUF file, an ONNX folder, or an export's manifest.

A manifest names checksummed artifacts; the one chosen is verified byte for byte before it is
loaded, so a corrupted or swapped file is refused with the file, both hashes and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.protocol.manifest import MANIFEST_NAME, choose_artifact, find_manifest, read_manifest, verify_artifact

from .. import paths
from ..config import StudentConfig
from ..defaults import embedded_student_path
from ..errors import AthanorError
from ..fingerprint import file_fingerprint
from .scheduler import Engine

ONNX_MODEL = "model.onnx"


@dataclass(frozen=True)
class StudentSource:
    """A model file ready to load: its format, its path and an identity for cache keys."""

    format: Literal["gguf", "onnx"]
    path: Path
    version: str
    quant: str | None = None


def _split_quant(quant: str | None) -> tuple[str | None, str | None]:
    if quant and ":" in quant:
        fmt, _, name = quant.partition(":")
        return fmt, name
    return None, quant


# How the embedded default (shipped as Q4_1) may be served.
EMBEDDED_QUANTS = ("f16", "q8_0", "q4_1", "q4_0")
_SHIPPED_QUANT = "q4_1"


def embedded_copy_name(shipped: Path, fingerprint: str, quant: str) -> str:
    """File name of the embedded default converted to `quant`; the shipped file's fingerprint in it
    makes a package upgrade convert again instead of serving a stale copy."""
    stem = shipped.name.removesuffix(".gguf").removesuffix(f".{_SHIPPED_QUANT.upper()}")
    return f"{stem}.{fingerprint[:12]}.{quant}.gguf"


def embedded_quant(quant: str | None, parallel: int) -> str:
    """`[student].quant` as it applies to the embedded default, lower case; raises naming the choices
    for one the default cannot take. Empty picks by `parallel`: llama.cpp's CPU kernels compute one
    sequence fastest in Q8_0 but several at once fastest in F16 (see StudentConfig.quant), so f16
    when requests are batched, q8_0 when they are not."""
    return _embedded_choice(quant or ("f16" if parallel > 1 else "q8_0"))


def _embedded_choice(quant: str) -> str:
    quant = quant.lower()
    if quant not in EMBEDDED_QUANTS:
        raise AthanorError(f"[student].quant = {quant!r} does not apply to the embedded default; choose "
                           f"{', '.join(EMBEDDED_QUANTS)}, or set [student].path to an export to serve its types")
    return quant


def embedded_served_path(quant: str, models_dir: Path) -> Path:
    """Where the embedded default as `quant` is served from: the shipped file for q4_1, else its copy
    in `models_dir` (which may not be made yet)."""
    quant = _embedded_choice(quant)
    shipped = embedded_student_path()
    if quant == _SHIPPED_QUANT:
        return shipped
    return models_dir / embedded_copy_name(shipped, file_fingerprint(shipped), quant)


def serve_embedded(quant: str, models_dir: Path) -> Path:
    """The embedded default as `quant`: the shipped file itself for q4_1, else a copy converted once
    into `models_dir` by llama.cpp's quantizer and reused afterwards."""
    quant = _embedded_choice(quant)
    copy = embedded_served_path(quant, models_dir)
    shipped = embedded_student_path()
    if not copy.is_file():
        from ..errors import ExportError
        from .quantize import quantize

        from . import llama_log

        llama_log.install()
        try:
            quantize(shipped, copy, quant, requantize=True)
        except (ExportError, OSError) as exc:
            raise AthanorError(f"could not convert the embedded student to {quant} in {models_dir}: {exc}; "
                               f"free space there, or set [student].quant = \"{_SHIPPED_QUANT}\" to serve it "
                               "as shipped") from exc
    return copy


def is_embedded_default(cfg: StudentConfig) -> bool:
    """Whether `cfg` serves the embedded default (no path set, and no student installed by `retrain`)."""
    return cfg.path is None and find_manifest(paths.retrained_student_dir()) is None


def resolve_student(cfg: StudentConfig, models_dir: Path | None = None) -> StudentSource:
    """The model `cfg.path` points at (manifests are checked against their checksums first), or the
    embedded default as `cfg.quant`, converted into `models_dir` when needed."""
    if cfg.path is None:
        retrained = paths.retrained_student_dir()
        installed = find_manifest(retrained)
        if installed is not None:
            # `athanor retrain` installed a student of its own: it replaces the embedded default.
            return _from_manifest(installed, "gguf", None)
        quant = embedded_quant(cfg.quant, cfg.parallel)
        path = serve_embedded(quant, models_dir or paths.models_dir())
        return StudentSource("gguf", path, file_fingerprint(path), quant)
    path = cfg.path
    if path.is_dir() and (path / ONNX_MODEL).is_file():
        return StudentSource("onnx", path, file_fingerprint(path / ONNX_MODEL))
    manifest = find_manifest(path)
    if manifest is not None:
        return _from_manifest(manifest, *_split_quant(cfg.quant))
    if path.is_file():
        return StudentSource("gguf", path, file_fingerprint(path))
    raise AthanorError(f"no student model at {path} (not a GGUF file, an export folder with {MANIFEST_NAME}, "
                       f"or an ONNX folder with {ONNX_MODEL}); run `athanor export` or fix [student].path")


def _from_manifest(manifest: Path, fmt: str | None, quant: str | None) -> StudentSource:
    """The export's artifact of `fmt`/`quant` (the smallest that passed its gate by default), checksum verified."""
    root = manifest.parent
    artifact = choose_artifact(read_manifest(manifest), fmt, quant)
    located = verify_artifact(artifact, root)
    return StudentSource(artifact.format, located, artifact.sha256[:16], artifact.quant)  # type: ignore[arg-type]


def open_engine(cfg: StudentConfig, source: StudentSource) -> Engine:
    """Load the engine that serves `source` with `cfg`'s settings."""
    if source.format == "onnx":
        from .onnx import OnnxEngine  # onnxruntime loads only for ONNX students

        return OnnxEngine(source.path, cfg.name, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                          provider=cfg.onnx_provider)
    from .llama import LlamaEngine

    return LlamaEngine(
        source.path, cfg.name, n_ctx=cfg.n_ctx, n_batch=cfg.n_batch, n_threads=cfg.n_threads,
        n_gpu_layers=cfg.n_gpu_layers, flash_attn=cfg.flash_attn, parallel=cfg.parallel,
        prompts_first=cfg.prompts_first,
    )
