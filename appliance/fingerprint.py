"""File identities: the whole file's sha256, and a cheap fingerprint of a model file (so cache entries of a
replaced student are never served)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_EDGE = 1 << 20


def file_fingerprint(path: Path) -> str:
    """sha256 over the size, the first and the last MiB: changes whenever a model file is replaced,
    without reading gigabytes at start-up (manifests carry the full checksum)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_EDGE))
        if size > _EDGE:
            handle.seek(max(_EDGE, size - _EDGE))
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (manifests, training.json's dataset hash, the doctor's model check)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
