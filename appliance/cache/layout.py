"""A namespace's IVF layout (its centroids, and which list each entry sits in), saved beside the cache
database so that opening a large cache neither retrains the centroids nor reassigns every vector.

The layout is a hint, never a source of truth: entries and their vectors are always read from SQLite.
An entry the layout does not know (added after it was saved, say before a kill -9) is assigned to its
nearest centroid; ids it names that SQLite no longer holds are simply never added. A layout from
another embedder or of another dimension, for another database file (a cache file deleted and made
anew numbers its entries from 1 again), or a file that cannot be read, is dropped and the index is
trained again. It holds no vectors, so it costs a few bytes per entry on disk, not a second copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger("appliance.cache.store")

# Centroids trained on n entries still describe a namespace that has grown a few times over (new
# entries go to their nearest list); past this growth the lists get long and uneven, so it is retrained.
RETRAIN_GROWTH = 4


@dataclass(frozen=True)
class IvfLayout:
    namespace: str
    embedder: str
    database: str
    """The token of the database file it was made for (`index_token` in its settings table)."""
    centroids: np.ndarray
    """(lists, dim) float32: the coarse quantizer's centroids."""
    ids: np.ndarray
    """Entry ids, int64, ascending."""
    lists: np.ndarray
    """The list each of `ids` sits in, int64."""
    trained_on: int
    """How many entries the centroids were trained from."""

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])


def layout_of(index: faiss.IndexIVFFlat, namespace: str, embedder: str, database: str,
              trained_on: int) -> IvfLayout:
    """Read the centroids and every list's ids out of a built index."""
    invlists = index.invlists
    if invlists is None:
        raise ValueError("this IVF index has no inverted lists to read a layout from")
    ids_parts, list_parts = [], []
    for list_no in range(index.nlist):
        size = invlists.list_size(list_no)
        if size:
            ids_parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
            list_parts.append(np.full(size, list_no, dtype=np.int64))
    ids = np.concatenate(ids_parts).astype(np.int64) if ids_parts else np.zeros(0, dtype=np.int64)
    lists = np.concatenate(list_parts) if list_parts else np.zeros(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    centroids = faiss.downcast_index(index.quantizer).reconstruct_n(0, index.nlist)
    return IvfLayout(namespace, embedder, database, np.ascontiguousarray(centroids, dtype=np.float32),
                     ids[order], lists[order], int(trained_on))


def empty_index(layout: IvfLayout, nprobe: int) -> faiss.IndexIVFFlat:
    """An IVF index with the layout's centroids and no entries yet: trained, nothing to learn."""
    quantizer = faiss.IndexFlatIP(layout.dim)
    quantizer.add(layout.centroids)
    index = faiss.IndexIVFFlat(quantizer, layout.dim, len(layout.centroids), faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    index.nprobe = nprobe
    return index


def assignments(layout: IvfLayout, ids: np.ndarray) -> np.ndarray:
    """The list of each id according to the layout; -1 for ids it does not know."""
    if not len(layout.ids):
        return np.full(len(ids), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(layout.ids, ids), len(layout.ids) - 1)
    return np.where(layout.ids[at] == ids, layout.lists[at], -1).astype(np.int64)


def still_fits(layout: IvfLayout, entries: int, ann_min_entries: int) -> bool:
    """Whether a namespace of `entries` entries should be searched with these centroids."""
    return ann_min_entries <= entries <= RETRAIN_GROWTH * max(layout.trained_on, 1)


# --- files --------------------------------------------------------------------------------------------

def layout_folder(db_path: Path) -> Path:
    """Where the layouts of the cache at `db_path` live: `<db>.ivf/`, beside it."""
    return db_path.with_name(db_path.name + ".ivf")


def _file(folder: Path, namespace: str) -> Path:
    # Namespaces are key names and uids, which may hold any character: the file is named by a hash.
    return folder / (hashlib.sha256(namespace.encode()).hexdigest()[:32] + ".npz")


def save_layout(folder: Path, layout: IvfLayout) -> None:
    """Write atomically: a crash leaves the old layout or the new one, never half of one."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _file(folder, layout.namespace)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        np.savez(out, namespace=np.array(layout.namespace), embedder=np.array(layout.embedder),
                 database=np.array(layout.database), centroids=layout.centroids, ids=layout.ids, lists=layout.lists,
                 trained_on=np.array(layout.trained_on, dtype=np.int64))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def delete_layout(folder: Path, namespace: str) -> None:
    _file(folder, namespace).unlink(missing_ok=True)


def load_layouts(folder: Path, embedder: str, dim: int, database: str) -> dict[str, IvfLayout]:
    """Every usable layout in `folder` by namespace; unusable files are removed with a warning."""
    layouts: dict[str, IvfLayout] = {}
    if not folder.is_dir():
        return layouts
    for path in sorted(folder.glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                layout = IvfLayout(str(data["namespace"]), str(data["embedder"]), str(data["database"]),
                                   np.ascontiguousarray(data["centroids"], dtype=np.float32),
                                   data["ids"].astype(np.int64), data["lists"].astype(np.int64),
                                   int(data["trained_on"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            log.warning("cache: the IVF layout %s cannot be read (%s); removed, the index will be trained again",
                        path, exc)
            path.unlink(missing_ok=True)
            continue
        problem = _problem(layout, path, embedder, dim, database)
        if problem:
            log.info("cache: IVF layout %s not used: %s", path.name, problem)
            path.unlink(missing_ok=True)
            continue
        layouts[layout.namespace] = layout
    return layouts


def _problem(layout: IvfLayout, path: Path, embedder: str, dim: int, database: str) -> str:
    if layout.embedder != embedder:
        return f"it was built with the embedder {layout.embedder}, not {embedder}"
    if layout.database != database:
        return "it was made for another database file (its entries' ids name other entries here)"
    if layout.centroids.ndim != 2 or layout.dim != dim or not len(layout.centroids):
        return f"its centroids are {layout.centroids.shape}, not (lists, {dim})"
    if layout.ids.shape != layout.lists.shape or (len(layout.lists) and (
            layout.lists.min() < 0 or layout.lists.max() >= len(layout.centroids))):
        return "its ids and lists do not match its centroids"
    if len(layout.ids) > 1 and not bool(np.all(np.diff(layout.ids) > 0)):
        return "its ids are not in ascending order"
    if path != _file(path.parent, layout.namespace):
        return "its file name does not match its namespace"
    return ""
