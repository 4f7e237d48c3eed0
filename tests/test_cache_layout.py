"""The IVF layout saved beside the cache: reopening reuses it, and it can never cost an entry."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from appliance.cache import CacheKey, SemanticCache, load_embedder
from appliance.cache.layout import (RETRAIN_GROWTH, IvfLayout, assignments, empty_index, layout_folder, layout_of,
                                    load_layouts, save_layout, still_fits)
from appliance.config import CacheConfig
from faiss.contrib.ivf_tools import add_preassigned

KEY = CacheKey("1000", "student-v1", "temp=0")
DIM = 32


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(None)


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def trained_ivf(vectors: np.ndarray, ids: np.ndarray, lists: int = 16) -> faiss.IndexIVFFlat:
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], lists,
                               faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    index.nprobe = 2
    return index


def test_an_index_rebuilt_from_its_layout_answers_exactly_as_the_original() -> None:
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, 2000, DIM)
    ids = rng.permutation(np.arange(10, 4010))[:2000].astype(np.int64)
    original = trained_ivf(vectors, ids)
    layout = layout_of(original, "ns", "enc", "db1", trained_on=2000)
    assert layout.centroids.shape == (16, DIM) and np.all(np.diff(layout.ids) > 0)
    assert sorted(layout.ids.tolist()) == sorted(ids.tolist())

    rebuilt = empty_index(layout, nprobe=2)
    add_preassigned(rebuilt, vectors, assignments(layout, ids), ids)
    queries = unit_rows(rng, 50, DIM)
    for index_pair in ((original, rebuilt),):
        (d1, i1), (d2, i2) = (index.search(queries, 5) for index in index_pair)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(d1, d2, rtol=1e-6)


def test_assignments_name_known_ids_and_mark_the_rest_unknown() -> None:
    layout = IvfLayout("ns", "enc", "db1", np.zeros((3, DIM), np.float32), np.array([2, 5, 9], np.int64),
                       np.array([1, 0, 2], np.int64), trained_on=3)
    assert assignments(layout, np.array([9, 2, 3, 5, 100], np.int64)).tolist() == [2, 1, -1, 0, -1]
    empty = IvfLayout("ns", "enc", "db1", np.zeros((3, DIM), np.float32), np.zeros(0, np.int64),
                      np.zeros(0, np.int64), 0)
    assert assignments(empty, np.array([1], np.int64)).tolist() == [-1]


def test_a_layout_fits_until_the_namespace_has_grown_past_its_retrain_point() -> None:
    layout = IvfLayout("ns", "enc", "db1", np.zeros((3, DIM), np.float32), np.zeros(0, np.int64),
                       np.zeros(0, np.int64), trained_on=1000)
    assert still_fits(layout, 1000, ann_min_entries=1000)
    assert still_fits(layout, RETRAIN_GROWTH * 1000, ann_min_entries=1000)
    assert not still_fits(layout, RETRAIN_GROWTH * 1000 + 1, ann_min_entries=1000)
    assert not still_fits(layout, 999, ann_min_entries=1000)  # shrunk below the approximate size


def test_layout_files_round_trip_and_bad_ones_are_removed(tmp_path, caplog) -> None:
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng, 500, DIM)
    layout = layout_of(trained_ivf(vectors, np.arange(500, dtype=np.int64)), "键/ns 1", "enc", "db1", 500)
    folder = tmp_path / "cache.sqlite3.ivf"
    save_layout(folder, layout)
    loaded = load_layouts(folder, "enc", DIM, "db1")["键/ns 1"]
    np.testing.assert_array_equal(loaded.centroids, layout.centroids)
    np.testing.assert_array_equal(loaded.ids, layout.ids)
    np.testing.assert_array_equal(loaded.lists, layout.lists)
    assert loaded.trained_on == 500

    assert load_layouts(folder, "another-encoder", DIM, "db1") == {}  # vectors of another space: useless
    assert not list(folder.glob("*.npz"))
    save_layout(folder, layout)
    assert load_layouts(folder, "enc", DIM + 1, "db1") == {}
    save_layout(folder, layout)
    assert load_layouts(folder, "enc", DIM, "db2") == {}  # another database file: its ids name other entries
    save_layout(folder, layout)
    path = next(folder.glob("*.npz"))
    path.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="appliance.cache.store"):
        assert load_layouts(folder, "enc", DIM, "db1") == {}
    assert "cannot be read" in caplog.text and not path.exists()
    assert load_layouts(tmp_path / "absent", "enc", DIM, "db1") == {}


def open_cache(path: Path, embedder, **settings) -> SemanticCache:
    return SemanticCache(path, embedder, CacheConfig(**{"ann_min_entries": 2000, "max_entries": 100_000, **settings}))


def own_top1(cache: SemanticCache, namespace: str, vectors: np.ndarray, ids: list[int]) -> float:
    _, found = cache._indexes[namespace].search(np.ascontiguousarray(vectors), 1)
    return float(np.mean(found[:, 0] == np.array(ids)))


def test_reopening_a_large_cache_reuses_the_saved_layout_and_finds_every_entry(tmp_path, embedder) -> None:
    rng = np.random.default_rng(2)
    db = tmp_path / "cache.sqlite3"
    vectors = unit_rows(rng, 3000, embedder.dim)
    with open_cache(db, embedder) as cache:
        ids = cache.bulk_insert(KEY, [f"q{i}" for i in range(3000)], [f"a{i}" for i in range(3000)], vectors)
        first = cache._indexes[KEY.namespace]
        trained = faiss.downcast_index(first.quantizer).reconstruct_n(0, first.nlist)
        # Saved as soon as it is trained, not only on close: a crash must not lose the training.
        assert len(list(layout_folder(db).glob("*.npz"))) == 1
    with open_cache(db, embedder) as cache:
        index = cache._indexes[KEY.namespace]
        assert cache._indexes.reused_layouts == 1 and isinstance(index, faiss.IndexIVFFlat)
        np.testing.assert_array_equal(faiss.downcast_index(index.quantizer).reconstruct_n(0, index.nlist), trained)
        assert own_top1(cache, KEY.namespace, vectors, ids) == 1.0
        cache.put(KEY, "猫可以吃巧克力吗？", "不可以。")
        assert cache.lookup(KEY, "猫可以吃巧克力吗").answer == "不可以。"
        assert cache.lookup(KEY, "狗可以吃巧克力吗？") is None


def test_a_stale_layout_after_a_crash_loses_nothing_and_serves_nothing_deleted(tmp_path, embedder) -> None:
    rng = np.random.default_rng(3)
    db = tmp_path / "cache.sqlite3"
    vectors = unit_rows(rng, 3000, embedder.dim)
    later = unit_rows(rng, 400, embedder.dim)
    with open_cache(db, embedder) as cache:
        ids = cache.bulk_insert(KEY, [f"q{i}" for i in range(3000)], [f"a{i}" for i in range(3000)], vectors)
        at_training = tmp_path / "layout-at-training"
        shutil.copytree(layout_folder(db), at_training)
        later_ids = cache.bulk_insert(KEY, [f"l{i}" for i in range(400)], [f"b{i}" for i in range(400)], later)
        cache.put(KEY, "How many moons does Mars have?", "Two: Phobos and Deimos.")
        assert cache.forget(entry_id=ids[0]) == 1
    # As if the daemon had been killed before close: the layout on disk predates the last 401 entries
    # and the deletion.
    shutil.rmtree(layout_folder(db))
    shutil.copytree(at_training, layout_folder(db))
    with open_cache(db, embedder) as cache:
        assert cache._indexes.reused_layouts == 1
        assert len(cache) == 3000 - 1 + 400 + 1 == cache.stats()["index_vectors"]
        assert own_top1(cache, KEY.namespace, later, later_ids) == 1.0
        assert own_top1(cache, KEY.namespace, vectors[1:], ids[1:]) == 1.0
        _, found = cache._indexes[KEY.namespace].search(vectors[:1], 1)
        assert found[0, 0] != ids[0]
        assert cache.lookup(KEY, "How many moons does Mars have").answer == "Two: Phobos and Deimos."


def test_a_namespace_that_outgrew_its_layout_is_trained_again(tmp_path, embedder) -> None:
    rng = np.random.default_rng(4)
    db = tmp_path / "cache.sqlite3"
    with open_cache(db, embedder) as cache:
        cache.bulk_insert(KEY, [f"q{i}" for i in range(2000)], ["a"] * 2000, unit_rows(rng, 2000, embedder.dim))
    grown = RETRAIN_GROWTH * 2000 + 1 - 2000
    with open_cache(db, embedder) as cache:
        cache.bulk_insert(KEY, [f"g{i}" for i in range(grown)], ["b"] * grown, unit_rows(rng, grown, embedder.dim))
    with open_cache(db, embedder) as cache:
        index = cache._indexes[KEY.namespace]
        assert cache._indexes.reused_layouts == 0
        assert index.nlist == int(4 * np.sqrt(RETRAIN_GROWTH * 2000 + 1))  # lists sized for what it holds now
    with open_cache(db, embedder) as cache:  # and that training was saved in turn
        assert cache._indexes.reused_layouts == 1


def test_a_cache_file_made_anew_does_not_take_the_old_files_layout(tmp_path, embedder) -> None:
    """Deleting the cache file starts its ids from 1 again: the old layout's ids would name other entries."""
    rng = np.random.default_rng(5)
    db = tmp_path / "cache.sqlite3"
    with open_cache(db, embedder) as cache:
        cache.bulk_insert(KEY, [f"q{i}" for i in range(3000)], ["a"] * 3000, unit_rows(rng, 3000, embedder.dim))
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    assert list(layout_folder(db).glob("*.npz"))  # left behind
    vectors = unit_rows(rng, 2500, embedder.dim)
    with open_cache(db, embedder, ann_min_entries=3000) as cache:  # stays exact while it fills
        ids = cache.bulk_insert(KEY, [f"n{i}" for i in range(2500)], ["b"] * 2500, vectors)
    with open_cache(db, embedder) as cache:
        assert cache._indexes.reused_layouts == 0
        assert own_top1(cache, KEY.namespace, vectors, ids) == 1.0
