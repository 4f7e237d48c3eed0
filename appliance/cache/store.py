"""The semantic cache: SQLite is the durable source of truth, FAISS the in-memory search over it.

Each put is committed to SQLite (WAL, synchronous=FULL) before it returns, so an acknowledged entry
survives kill -9 and power loss; only then is its vector added to the namespace's FAISS index. On open,
the indexes are rebuilt from the stored float32 blobs (a large namespace reuses its IVF layout, saved
beside the file: `layout`). A corrupt file is moved aside, salvaged where
possible, and replaced by a fresh one: the cache is an optimisation and must never stop the daemon.

All public methods are thread-safe behind one lock (the daemon calls them through asyncio.to_thread);
embedding runs outside it, serialised by the embedder's own lock.

This module coordinates; the parts live beside it: `schema` (the SQLite file, migrations, corruption),
`salvage` (rows out of a corrupt file), `index` (per-namespace FAISS), `eviction` (TTL and LRU),
`recent` (the embedding LRU) and `records` (the typed keys and results).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .. import paths
from ..config import CacheConfig
from ..errors import ConfigError
from ..storage.health import StorageHealth
from . import segment
from .embedder import span_similarity
from .eviction import delete_ids, expired, least_recently_used
from .index import NamespaceIndexes
from .layout import layout_folder
from .recent import RecentEmbeddings
from .records import TEACHER_VERSION, CacheHit, CacheKey, Neighbour
from .salvage import move_aside, salvage
from .schema import CorruptDatabase, chunks, connect, is_corruption, migrate, quick_check, transaction
from .verify import MatchCheck, VerifyParams, check_match

__all__ = ["TEACHER_VERSION", "CacheHit", "CacheKey", "Neighbour", "SemanticCache", "cache_path", "migrate"]

log = logging.getLogger(__name__)

_SEARCH_K = 8  # neighbours checked first; widened when all of them are rejected
_MAX_SEARCH_K = 256
_FLUSH_HITS_EVERY = 256  # hit bookkeeping is batched: a hit must not cost an fsync
_FLUSH_HITS_AFTER_S = 30.0


def cache_path(cfg: CacheConfig) -> Path:
    """The SQLite file for `cfg`: `[cache].path`, else `<state>/cache.sqlite3`."""
    return cfg.path if cfg.path is not None else paths.state_dir() / "cache.sqlite3"


class _Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def unknown_share(self, text: str) -> float: ...


# A question whose embedder tokens are more than this share unknown pieces is not understood by it.
_MAX_UNKNOWN_SHARE = 0.2


class SemanticCache:
    """Answers keyed by (namespace, student version, params) and found by question similarity."""

    def __init__(self, db_path: Path, embedder: _Embedder, cfg: CacheConfig,
                 clock: Callable[[], float] = time.time, health: StorageHealth | None = None) -> None:
        self._path = Path(db_path)
        self._health = health
        self._embedder = embedder
        self._cfg = cfg
        self._clock = clock
        self._dim = int(embedder.dim)
        self._lock = threading.Lock()
        self._indexes = NamespaceIndexes(self._dim, cfg, layout_folder(self._path), embedder.name)
        self._pending_hits: dict[int, tuple[int, float]] = {}
        self._last_flush = clock()
        self._embed = RecentEmbeddings(embedder.embed)
        self._count = 0
        self._hits = 0
        self._misses = 0
        self._uncovered = 0
        self._rejected = 0
        self._params = VerifyParams(free_zipf=cfg.free_zipf, span_similarity=cfg.span_similarity)
        self._span_similarity = span_similarity(embedder)
        self._closed = False
        self.salvaged = 0
        """Rows recovered from a corrupt file on open (0 when the file was fine)."""
        self.corrupt_path: Path | None = None
        """Where a corrupt file was moved on open, if it was."""
        self._db = self._open()

    # --- opening --------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db: sqlite3.Connection | None = None
        try:
            db = connect(self._path)
            quick_check(db)
            migrate(db)
            self._adopt_embedder(db)
            self._purge_expired_on_open(db)
            self._rebuild(db)
            return db
        except (sqlite3.DatabaseError, CorruptDatabase) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.DatabaseError) and not is_corruption(exc):
                # Permissions, a full disk, a lock held too long: the file is fine, the setup is not.
                raise ConfigError("[cache].path", f"cannot open the cache database {self._path}: {exc}",
                                  "check the folder's owner, mode and free space, or set [cache].path") from exc
            return self._replace_corrupt(exc)

    def _adopt_embedder(self, db: sqlite3.Connection) -> None:
        stored = dict(db.execute("SELECT key, value FROM settings WHERE key IN ('embedder', 'dim')").fetchall())
        current = {"embedder": self._embedder.name, "dim": str(self._dim)}
        if stored == current:
            return
        with transaction(db):
            if stored:
                # Vectors from another model live in another space: every question is embedded again
                # with the new one, so no answer is lost when the embedder changes.
                moved = self._reembed(db)
                log.warning("cache embedder changed from %s to %s: %d entries embedded again",
                            stored.get("embedder"), current["embedder"], moved)
            db.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", current.items())

    def _reembed(self, db: sqlite3.Connection) -> int:
        rows = db.execute("SELECT id, prompt FROM entries ORDER BY id").fetchall()
        for chunk in chunks(rows, 256):
            vectors = np.ascontiguousarray(self._embedder.embed([prompt for _, prompt in chunk]), dtype=np.float32)
            db.executemany("UPDATE entries SET embedding = ? WHERE id = ?",
                           [(vector.tobytes(), entry_id) for (entry_id, _), vector in zip(chunk, vectors)])
        return len(rows)

    def _purge_expired_on_open(self, db: sqlite3.Connection) -> None:
        with transaction(db):
            db.execute("DELETE FROM entries WHERE created_at < ?", (self._clock() - self._cfg.ttl_s,))

    def _rebuild(self, db: sqlite3.Connection) -> None:
        """Load every stored vector into the FAISS indexes; drop rows whose vectors have the wrong size."""
        count, bad = self._indexes.rebuild(db)
        if bad:
            log.warning("cache: dropping %d entries whose vectors have the wrong size", len(bad))
            with transaction(db):
                delete_ids(db, bad)
        self._count = count

    def _replace_corrupt(self, exc: BaseException) -> sqlite3.Connection:
        aside = move_aside(self._path, self._clock())
        self.corrupt_path = aside
        db = connect(self._path)
        migrate(db)
        self._adopt_embedder(db)
        self.salvaged = salvage(aside, db, self._embedder.name, self._dim, self._clock() - self._cfg.ttl_s)
        self._rebuild(db)
        log.warning("cache database %s was corrupt (%s): moved it to %s, salvaged %d entries, started fresh",
                    self._path, exc, aside, self.salvaged)
        return db

    # --- serving ------------------------------------------------------------------------------------

    def lookup(self, key: CacheKey, prompt: str) -> CacheHit | None:
        """The best stored answer for `prompt` under `key`, or None. Database errors count as a miss.

        A question the cache cannot read (a script its checks do not cover, or mostly pieces unknown to
        the embedder) is always a miss, counted as `uncovered`.
        """
        if self.uncovered_reason(prompt):
            with self._lock:
                self._check_open()
                self._uncovered += 1
                self._misses += 1
            return None
        with self._lock:
            self._check_open()
            index = self._indexes.get(key.namespace)
            if index is None or index.ntotal == 0:
                self._misses += 1
                return None
        vector = self._embed(prompt)
        with self._lock:
            self._check_open()
            try:
                hit = self._lookup_locked(key, prompt, vector)
            except sqlite3.Error as exc:
                log.warning("cache lookup failed, answering without the cache: %s", exc)
                hit = None
            if hit is None:
                self._misses += 1
            else:
                self._hits += 1
            return hit

    def _lookup_locked(self, key: CacheKey, prompt: str, vector: np.ndarray) -> CacheHit | None:
        index = self._indexes.get(key.namespace)
        if index is None or index.ntotal == 0:
            return None
        now = self._clock()
        cutoff = now - self._cfg.ttl_s
        k = min(_SEARCH_K, index.ntotal)
        while True:
            similarities, ids = index.search(vector.reshape(1, -1), k)
            candidates = [(int(i), float(s)) for s, i in zip(similarities[0], ids[0])
                          if i >= 0 and s >= self._cfg.threshold]
            if not candidates:
                return None
            rows = self._rows([i for i, _ in candidates])
            for entry_id, similarity in candidates:
                row = rows.get(entry_id)
                if row is None:
                    continue  # evicted or expired; its vector waits for compaction
                model_version, params_key, cached_prompt, answer, meta, created_at = row
                if (model_version != key.model_version and model_version not in key.also_serves) \
                        or params_key != key.params_key or created_at < cutoff:
                    continue
                if self._cfg.verify:
                    check = check_match(prompt, cached_prompt, self._span_similarity, self._params)
                    if not check.ok:
                        self._rejected += 1
                        log.debug("cache: rejected neighbour %d (%.3f): %s", entry_id, similarity, check.reason)
                        continue
                self._record_hit(entry_id, now)
                return CacheHit(entry_id, answer, similarity, json.loads(meta), created_at, cached_prompt)
            # Every neighbour over the threshold was rejected; more may lie past the first k.
            if len(candidates) < k or k >= index.ntotal or k >= _MAX_SEARCH_K:
                return None
            k = min(k * 4, _MAX_SEARCH_K, index.ntotal)

    def warm_up(self) -> None:
        """Run a lookup's every part once (the embedder, the segmenter and word lists, FAISS's threads on
        the largest namespaces' indexes, the span judge, an SQLite read), so that the first user's hit
        does not pay for what is loaded or started on first use."""
        check_match("如何预热 the cache", "怎么预热 the store", self._span_similarity, self._params)
        self.uncovered_reason("warm-up")
        vector = self._embedder.embed(["warm-up"]).reshape(1, -1)
        with self._lock:
            self._check_open()
            largest = sorted(self._indexes.namespaces(), key=lambda ns: -self._indexes[ns].ntotal)[:4]
            for namespace in largest:
                _, ids = self._indexes[namespace].search(vector, 1)
                found = [int(i) for i in ids[0] if i >= 0]
                if found:
                    self._rows(found)

    def embed(self, text: str) -> np.ndarray:
        """`text`'s unit vector, from the same recent-vectors memory the lookups use."""
        return self._embed(text)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of many texts at once (the router's memory of past questions)."""
        return np.ascontiguousarray(self._embedder.embed(texts), dtype=np.float32)

    def uncovered_reason(self, prompt: str) -> str:
        """Why the cache cannot judge `prompt` (never served from it, never stored), or "" when it can."""
        cover = segment.coverage(prompt)
        if not cover.covered:
            return cover.reason
        share = self._embedder.unknown_share(prompt)
        if share > _MAX_UNKNOWN_SHARE:
            return f"{share:.0%} of the question is unknown to the embedder {self._embedder.name}"
        return ""

    def _rows(self, ids: list[int]) -> dict[int, tuple[Any, ...]]:
        placeholders = ",".join("?" * len(ids))
        cursor = self._db.execute(
            "SELECT id, model_version, params_key, prompt, answer, meta, created_at FROM entries "
            f"WHERE id IN ({placeholders})", ids)
        return {row[0]: row[1:] for row in cursor}

    def _record_hit(self, entry_id: int, now: float) -> None:
        count, _ = self._pending_hits.get(entry_id, (0, now))
        self._pending_hits[entry_id] = (count + 1, now)
        if len(self._pending_hits) >= _FLUSH_HITS_EVERY or now - self._last_flush >= _FLUSH_HITS_AFTER_S:
            try:
                with transaction(self._db):
                    self._flush_hits()
            except sqlite3.Error as exc:
                # Hit counts only steer eviction: a disk that cannot take them must not turn the hit into a miss.
                log.warning("cache: could not record hit counts: %s", exc)
                self._last_flush = now
                self._report(exc)

    def _flush_hits(self) -> None:
        """Write batched hit counts (caller holds the lock and an open transaction)."""
        if self._pending_hits:
            self._db.executemany(
                "UPDATE entries SET hits = hits + ?, last_hit_at = max(coalesce(last_hit_at, 0), ?) WHERE id = ?",
                [(count, at, entry_id) for entry_id, (count, at) in self._pending_hits.items()])
            self._pending_hits.clear()
        self._last_flush = self._clock()

    # --- storing ------------------------------------------------------------------------------------

    def put(self, key: CacheKey, prompt: str, answer: str, meta: dict[str, Any] | None = None) -> int:
        """Store an answer; durable (fsynced) when this returns. Returns the entry id.

        Raises sqlite3.Error when the database cannot be written; the caller logs it and serves on.
        """
        vector = self._embed(prompt)
        meta_json = json.dumps(meta or {}, ensure_ascii=False, default=str)
        with self._lock:
            self._check_open()
            now = self._clock()
            try:
                with transaction(self._db):
                    self._flush_hits()
                    cursor = self._db.execute(
                        "INSERT INTO entries (namespace, model_version, params_key, prompt, answer, meta, embedding, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (key.namespace, key.model_version, key.params_key, prompt, answer, meta_json,
                         vector.tobytes(), now))
                    assert cursor.lastrowid is not None
                    entry_id = int(cursor.lastrowid)
                    removed = self._purge_expired(now)
                    removed += self._evict(self._count + 1 - len(removed) - self._cfg.max_entries, entry_id)
            except sqlite3.Error as exc:
                self._report(exc)
                raise
            self._report(None)
            # Committed: the entry is durable. Only now does it become searchable.
            self._indexes.add(key.namespace, vector.reshape(1, -1), np.array([entry_id], dtype=np.int64))
            self._count += 1 - len(removed)
            self._indexes.discard(removed)
            self._indexes.approximate_if_large(key.namespace)
            return entry_id

    def _report(self, failure: BaseException | None) -> None:
        if self._health is not None:
            if failure is None:
                self._health.wrote("cache")
            else:
                self._health.failed("cache", failure)

    def bulk_insert(self, key: CacheKey, prompts: Sequence[str], answers: Sequence[str],
                    embeddings: np.ndarray) -> list[int]:
        """Insert many precomputed entries in one transaction WITHOUT fsync: benchmarks and tests only.

        Not for the serving path: a crash (power loss) right after it returns may lose the whole batch.
        Rows are L2-normalised here; beyond max_entries the least recently used are evicted.
        """
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self._dim or not len(prompts) == len(answers) == len(vectors):
            raise ValueError(f"bulk_insert needs n prompts, n answers and an (n, {self._dim}) array; got "
                             f"{len(prompts)}, {len(answers)} and {vectors.shape}")
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        keep = min(len(vectors), self._cfg.max_entries)
        prompts, answers, vectors = prompts[-keep:], answers[-keep:], vectors[-keep:] if keep else vectors[:0]
        if not keep:
            return []
        with self._lock:
            self._check_open()
            now = self._clock()
            # The connection is shared: fsync goes off only while this holds the lock, and comes back as it was.
            synchronous = int(self._db.execute("PRAGMA synchronous").fetchone()[0])
            self._db.execute("PRAGMA synchronous=OFF")
            try:
                with transaction(self._db):
                    self._flush_hits()
                    seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
                    first = (seq[0] if seq else 0) + 1
                    ids = np.arange(first, first + keep, dtype=np.int64)
                    self._db.executemany(
                        "INSERT INTO entries (id, namespace, model_version, params_key, prompt, answer, embedding, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        ((int(i), key.namespace, key.model_version, key.params_key, p, a, v.tobytes(), now)
                         for i, p, a, v in zip(ids, prompts, answers, vectors)))
                    removed = self._purge_expired(now)
                    removed += self._evict(self._count + keep - len(removed) - self._cfg.max_entries, first)
            finally:
                self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._indexes.add(key.namespace, vectors, ids)
            self._count += keep - len(removed)
            self._indexes.discard(removed)
            self._indexes.approximate_if_large(key.namespace)
            return [int(i) for i in ids]

    def _purge_expired(self, now: float) -> list[tuple[int, str]]:
        removed = expired(self._db, now - self._cfg.ttl_s)
        self._delete_ids([entry_id for entry_id, _ in removed])
        return removed

    def _evict(self, excess: int, below_id: int) -> list[tuple[int, str]]:
        """Delete the `excess` least recently used entries with ids below `below_id` (the new ones)."""
        removed = least_recently_used(self._db, excess, below_id)
        self._delete_ids([entry_id for entry_id, _ in removed])
        return removed

    def _delete_ids(self, ids: list[int]) -> None:
        """Delete entries (caller holds the lock and an open transaction); their pending hit counts go too."""
        delete_ids(self._db, ids)
        for entry_id in ids:
            self._pending_hits.pop(entry_id, None)

    # --- housekeeping -------------------------------------------------------------------------------

    def retire_model_version(self, version: str) -> int:
        """Delete every entry a retired student produced; returns how many."""
        return self._forget_where("model_version = ?", (version,))

    def forget(self, *, entry_id: int | None = None, namespace: str | None = None,
               question: str | None = None) -> int:
        """Delete one entry, a whole namespace, or every entry whose question is `question` (within
        `namespace` when given); returns how many."""
        if entry_id is not None:
            return self._forget_where("id = ?", (entry_id,))
        if question is not None:
            if namespace is None:
                return self._forget_where("prompt = ?", (question,))
            return self._forget_where("prompt = ? AND namespace = ?", (question, namespace))
        if namespace is not None:
            return self._forget_where("namespace = ? OR namespace LIKE ?", (namespace, namespace + "/%"))
        raise ValueError("forget needs an entry id, a namespace or a question")

    def clear(self) -> int:
        """Delete every entry; returns how many."""
        return self._forget_where("1", ())

    def _forget_where(self, condition: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            self._check_open()
            with transaction(self._db):
                rows = self._db.execute(f"SELECT id, namespace FROM entries WHERE {condition}", args).fetchall()
                self._delete_ids([r[0] for r in rows])
            self._indexes.remove(rows)
            self._count -= len(rows)
            return len(rows)

    def why(self, namespace: str, prompt: str, k: int = 5) -> list[Neighbour]:
        """The `k` nearest entries to `prompt` in `namespace`, each with the verifier's verdict: what
        would hit, and why the others would not."""
        uncovered = self.uncovered_reason(prompt)
        with self._lock:
            self._check_open()
            index = self._indexes.get(namespace)
            if index is None or index.ntotal == 0:
                return []
        vector = self._embed(prompt)
        with self._lock:
            similarities, ids = index.search(vector.reshape(1, -1), min(k, index.ntotal))
            found = [(int(i), float(sim)) for sim, i in zip(similarities[0], ids[0]) if i >= 0]
            rows = self._rows([i for i, _ in found]) if found else {}
        out = []
        for entry_id, similarity in found:
            row = rows.get(entry_id)
            if row is None:
                continue
            model_version, _, cached_prompt, answer, _, _ = row
            if uncovered:
                verdict = MatchCheck(False, uncovered)
            elif similarity < self._cfg.threshold:
                verdict = MatchCheck(False, f"similarity {similarity:.3f} is under [cache].threshold "
                                            f"{self._cfg.threshold}")
            else:
                verdict = check_match(prompt, cached_prompt, self._span_similarity, self._params)
            out.append(Neighbour(entry_id, cached_prompt, answer, similarity, model_version, verdict.ok,
                                 verdict.reason))
        return out

    def delete_namespace(self, namespace: str) -> int:
        """Delete every entry of one namespace; returns how many."""
        with self._lock:
            self._check_open()
            with transaction(self._db):
                ids = [r[0] for r in self._db.execute("SELECT id FROM entries WHERE namespace = ?", (namespace,))]
                self._delete_ids(ids)
            self._indexes.drop(namespace)
            self._count -= len(ids)
            return len(ids)

    @property
    def embedder(self) -> _Embedder:
        """The sentence encoder the cache searches with (also what `/v1/embeddings` serves)."""
        return self._embedder

    def stats(self) -> dict[str, Any]:
        """Entries (total and per namespace), hits and misses since open, lifetime hits, bytes on disk."""
        with self._lock:
            self._check_open()
            namespaces = dict(self._db.execute("SELECT namespace, count(*) FROM entries GROUP BY namespace"))
            stored_hits = self._db.execute("SELECT coalesce(sum(hits), 0) FROM entries").fetchone()[0]
            pending = sum(count for count, _ in self._pending_hits.values())
            size = sum(Path(f"{self._path}{s}").stat().st_size for s in ("", "-wal", "-shm")
                       if Path(f"{self._path}{s}").exists())
            return {
                "entries": sum(namespaces.values()),
                "namespaces": namespaces,
                "hits": self._hits,
                "misses": self._misses,
                "uncovered": self._uncovered,
                "rejected_neighbours": self._rejected,
                "lifetime_hits": int(stored_hits) + pending,
                "bytes_on_disk": size,
                "index_vectors": self._indexes.vectors(),
                "embedder": self._embedder.name,
                "path": str(self._path),
            }

    def close(self) -> None:
        """Write pending hit counts, checkpoint the WAL and close; further calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with transaction(self._db):
                    self._flush_hits()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("cache: could not flush on close: %s", exc)
            finally:
                self._db.close()
                self._indexes.save_layouts()
                self._indexes.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the semantic cache is closed")

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._count
