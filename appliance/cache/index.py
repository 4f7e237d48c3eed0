"""Per-namespace FAISS search over entry ids: exact inner product, then inverted-file (IVF) past `[cache].ann_min_entries`.

SQLite is the source of truth; these indexes are rebuilt from it on open and only ever hold ids it has
committed. An IVF index's layout (centroids and list assignments, `layout`) is saved beside the database
when it is trained and on close, so that reopening a large cache only reads the vectors back.
Not thread-safe: the cache calls in under its own lock.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
from faiss.contrib.ivf_tools import add_preassigned

from ..config import CacheConfig
from .layout import (IvfLayout, assignments, delete_layout, empty_index, layout_of, load_layouts, save_layout,
                     still_fits)
from .schema import database_token

# Under the store's name: the daemon's log lines name their logger, and these are the cache's.
log = logging.getLogger("appliance.cache.store")

_REBUILD_CHUNK = 65_536


class NamespaceIndexes:
    """One FAISS index per namespace, keyed by entry id; `indexes[namespace]` is the index itself."""

    def __init__(self, dim: int, cfg: CacheConfig, layouts: Path | None = None, embedder: str = "") -> None:
        self._dim = dim
        self._cfg = cfg
        self._layout_dir = layouts
        self._embedder = embedder
        self._indexes: dict[str, faiss.Index] = {}
        self._stale: dict[str, set[int]] = {}  # deleted in SQLite, still in FAISS until compacted
        self._trained_on: dict[str, int] = {}  # per IVF namespace: entries its centroids came from
        self._changed: set[str] = set()  # IVF namespaces whose lists moved since their layout was saved
        self.reused_layouts = 0
        """IVF indexes the last rebuild took from saved layouts instead of training."""
        self._database = ""  # the open database's token, read by rebuild

    def get(self, namespace: str) -> faiss.Index | None:
        return self._indexes.get(namespace)

    def __getitem__(self, namespace: str) -> faiss.Index:
        return self._indexes[namespace]

    def namespaces(self) -> list[str]:
        return list(self._indexes)

    def vectors(self) -> int:
        """Vectors held across all namespaces (stale ones included until compacted)."""
        return int(sum(index.ntotal for index in self._indexes.values()))

    def clear(self) -> None:
        self._indexes.clear()
        self._stale.clear()
        self._trained_on.clear()
        self._changed.clear()

    def rebuild(self, db: sqlite3.Connection) -> tuple[int, list[int]]:
        """Load every stored vector into per-namespace indexes, reading blobs in chunks.

        A namespace with a saved layout that still fits its size goes straight into an IVF index with
        those centroids; the others are loaded exactly, then made approximate if large.
        Returns how many were loaded and the ids whose vectors have the wrong size (for the caller to delete).
        """
        self.clear()
        self.reused_layouts = 0
        self._database = database_token(db)
        layouts = self._usable_layouts(db)
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
                    layout = layouts.get(namespace)
                    if layout is not None:
                        self._add_laid_out(namespace, layout, vectors, ids)
                    else:
                        self.add(namespace, vectors, ids)
                    count += len(good)
                start = end
        for namespace in list(self._indexes):
            self.approximate_if_large(namespace)
        return count, bad

    def _usable_layouts(self, db: sqlite3.Connection) -> dict[str, IvfLayout]:
        if self._layout_dir is None:
            return {}
        saved = load_layouts(self._layout_dir, self._embedder, self._dim, self._database)
        if not saved:
            return {}
        sizes = dict(db.execute("SELECT namespace, count(*) FROM entries GROUP BY namespace").fetchall())
        usable = {}
        for namespace, layout in saved.items():
            if still_fits(layout, int(sizes.get(namespace, 0)), self._cfg.ann_min_entries):
                usable[namespace] = layout
                self._indexes[namespace] = empty_index(layout, self._cfg.ann_nprobe)
                self._trained_on[namespace] = layout.trained_on
                self.reused_layouts += 1
            else:
                log.info("cache: namespace %s has %d entries, its IVF layout was trained on %d: training again",
                         namespace, sizes.get(namespace, 0), layout.trained_on)
        return usable

    def _add_laid_out(self, namespace: str, layout: IvfLayout, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add to the list the layout names for each id; ids it does not know go to their nearest centroid."""
        index = self._indexes[namespace]
        assert isinstance(index, faiss.IndexIVFFlat)  # made so by _usable_layouts
        lists = assignments(layout, ids)
        unknown = lists < 0
        if unknown.any():
            _, nearest = index.quantizer.search(np.ascontiguousarray(vectors[unknown]), 1)
            lists[unknown] = nearest[:, 0]
            self._changed.add(namespace)
        add_preassigned(index, np.ascontiguousarray(vectors), lists, np.ascontiguousarray(ids))  # type: ignore[no-untyped-call]

    def add(self, namespace: str, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add committed entries' vectors (one row per id) to their namespace's index."""
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        index.add_with_ids(vectors, ids)
        if namespace in self._trained_on:
            self._changed.add(namespace)

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
        self._trained_on[namespace] = n
        log.info("cache: namespace %s has %d entries; built an IVF index of %d lists in %.1f s",
                 namespace, n, lists, time.monotonic() - started)
        # Saved now, not only on close: training is the slow part, and a crash must not lose it.
        self._changed.add(namespace)
        self.save_layouts()

    def save_layouts(self) -> None:
        """Save the layout of every IVF index that changed since it was last saved (best effort)."""
        if self._layout_dir is None:
            return
        for namespace in sorted(self._changed):
            index = self._indexes.get(namespace)
            if not isinstance(index, faiss.IndexIVFFlat):
                continue
            try:
                save_layout(self._layout_dir, layout_of(index, namespace, self._embedder, self._database,
                                                        self._trained_on.get(namespace, index.ntotal)))
            except OSError as exc:
                # Only a slower next start is at stake: the entries themselves are in SQLite.
                log.warning("cache: could not save the IVF layout of namespace %s to %s: %s",
                            namespace, self._layout_dir, exc)
        self._changed.clear()

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
                if namespace in self._trained_on:
                    self._changed.add(namespace)

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
                if namespace in self._trained_on:
                    self._changed.add(namespace)

    def drop(self, namespace: str) -> None:
        """Forget a whole namespace's index, and its saved layout."""
        self._indexes.pop(namespace, None)
        self._stale.pop(namespace, None)
        self._trained_on.pop(namespace, None)
        self._changed.discard(namespace)
        if self._layout_dir is not None:
            delete_layout(self._layout_dir, namespace)
