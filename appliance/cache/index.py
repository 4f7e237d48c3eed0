"""Per-namespace FAISS search over entry ids: exact inner product, then inverted-file (IVF) past `[cache].ann_min_entries`.

SQLite is the source of truth; these indexes are rebuilt from it on open and only ever hold ids it has
committed. Not thread-safe: the cache calls in under its own lock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Sequence

import faiss
import numpy as np

from ..config import CacheConfig

# Under the store's name: the daemon's log lines name their logger, and these are the cache's.
log = logging.getLogger("appliance.cache.store")

_REBUILD_CHUNK = 65_536


class NamespaceIndexes:
    """One FAISS index per namespace, keyed by entry id; `indexes[namespace]` is the index itself."""

    def __init__(self, dim: int, cfg: CacheConfig) -> None:
        self._dim = dim
        self._cfg = cfg
        self._indexes: dict[str, faiss.Index] = {}
        self._stale: dict[str, set[int]] = {}  # deleted in SQLite, still in FAISS until compacted

    def get(self, namespace: str) -> faiss.Index | None:
        return self._indexes.get(namespace)

    def __getitem__(self, namespace: str) -> faiss.Index:
        return self._indexes[namespace]

    def vectors(self) -> int:
        """Vectors held across all namespaces (stale ones included until compacted)."""
        return int(sum(index.ntotal for index in self._indexes.values()))

    def clear(self) -> None:
        self._indexes.clear()
        self._stale.clear()

    def rebuild(self, db: sqlite3.Connection) -> tuple[int, list[int]]:
        """Load every stored vector into per-namespace indexes, reading blobs in chunks.

        Returns how many were loaded and the ids whose vectors have the wrong size (for the caller to delete).
        """
        self.clear()
        row_bytes = self._dim * 4
        bad: list[int] = []
        count = 0
        cursor = db.execute("SELECT namespace, id, embedding FROM entries ORDER BY namespace, id")
        while rows := cursor.fetchmany(_REBUILD_CHUNK):
            start = 0
            while start < len(rows):
                namespace = rows[start][0]
                end = start
                while end < len(rows) and rows[end][0] == namespace:
                    end += 1
                group = rows[start:end]
                good = [r for r in group if len(r[2]) == row_bytes]
                bad.extend(r[1] for r in group if len(r[2]) != row_bytes)
                if good:
                    ids = np.fromiter((r[1] for r in good), dtype=np.int64, count=len(good))
                    vectors = np.frombuffer(b"".join(r[2] for r in good), dtype=np.float32).reshape(-1, self._dim)
                    self.add(namespace, vectors, ids)
                    count += len(good)
                start = end
        for namespace in list(self._indexes):
            self.approximate_if_large(namespace)
        return count, bad

    def add(self, namespace: str, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add committed entries' vectors (one row per id) to their namespace's index."""
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        index.add_with_ids(vectors, ids)

    def approximate_if_large(self, namespace: str) -> None:
        """Past `[cache].ann_min_entries`, a namespace's exact index becomes an inverted-file one.

        An exact search reads every vector (1M x 512 floats is 2 GB per lookup); IVF reads the
        `ann_nprobe` lists nearest the query. Its recall against exact search is measured by
        scripts/bench_cache_e2e.py. Centroids come from the vectors at hand; later additions go to
        their nearest list.
        """
        index = self._indexes.get(namespace)
        if not isinstance(index, faiss.IndexIDMap2) or index.ntotal < self._cfg.ann_min_entries:
            return
        started = time.monotonic()
        n = index.ntotal
        vectors = faiss.downcast_index(index.index).reconstruct_n(0, n)
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        lists = int(min(8192, max(64, 4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(self._dim)
        ivf = faiss.IndexIVFFlat(quantizer, self._dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, size=min(n, 40 * lists), replace=False)
        ivf.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        ivf.add_with_ids(vectors, ids)
        ivf.nprobe = self._cfg.ann_nprobe
        self._indexes[namespace] = ivf
        self._stale.pop(namespace, None)
        log.info("cache: namespace %s has %d entries; built an IVF index of %d lists in %.1f s",
                 namespace, n, lists, time.monotonic() - started)

    def discard(self, removed: Sequence[tuple[int, str]]) -> None:
        """Entries (id, namespace) evicted or expired in SQLite: dropped from FAISS lazily."""
        # Removing from a flat index shifts every vector after it (O(n)); ids whose SQLite row is gone
        # are skipped at search time anyway, so compact only once they are a noticeable share.
        for entry_id, namespace in removed:
            self._stale.setdefault(namespace, set()).add(entry_id)
        for namespace in {namespace for _, namespace in removed}:
            stale = self._stale[namespace]
            index = self._indexes.get(namespace)
            if index is not None and stale and len(stale) > max(64, index.ntotal // 10):
                index.remove_ids(faiss.IDSelectorBatch(np.fromiter(stale, dtype=np.int64, count=len(stale))))
                stale.clear()

    def remove(self, removed: Sequence[tuple[int, str]]) -> None:
        """Entries (id, namespace) deleted on request: dropped from FAISS now."""
        by_namespace: dict[str, list[int]] = {}
        for entry_id, namespace in removed:
            by_namespace.setdefault(namespace, []).append(entry_id)
        for namespace, ids in by_namespace.items():
            index = self._indexes.get(namespace)
            if index is not None:
                index.remove_ids(faiss.IDSelectorBatch(np.array(ids, dtype=np.int64)))
                self._stale.get(namespace, set()).difference_update(ids)

    def drop(self, namespace: str) -> None:
        """Forget a whole namespace's index."""
        self._indexes.pop(namespace, None)
        self._stale.pop(namespace, None)
