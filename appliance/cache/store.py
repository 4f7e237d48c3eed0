"""The semantic cache: SQLite is the durable source of truth, FAISS the in-memory search over it.

Each put is committed to SQLite (WAL, synchronous=FULL) before it returns, so an acknowledged entry
survives kill -9 and power loss; only then is its vector added to the namespace's FAISS index. On open,
the indexes are rebuilt from the stored float32 blobs. A corrupt file is moved aside, salvaged where
possible, and replaced by a fresh one: the cache is an optimisation and must never stop the daemon.

All public methods are thread-safe behind one lock (the daemon calls them through asyncio.to_thread);
embedding runs outside it, serialised by the embedder's own lock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import faiss
import numpy as np

from .. import paths
from ..config import CacheConfig
from ..errors import ConfigError
from ..storage_health import StorageHealth
from . import segment
from .embedder import span_similarity
from .verify import MatchCheck, VerifyParams, check_match

log = logging.getLogger(__name__)

_SEARCH_K = 8  # neighbours checked first; widened when all of them are rejected
_MAX_SEARCH_K = 256
_FLUSH_HITS_EVERY = 256  # hit bookkeeping is batched: a hit must not cost an fsync
_FLUSH_HITS_AFTER_S = 30.0
_RECENT_VECTORS = 64  # lookup-then-put of the same prompt embeds once
_SQL_CHUNK = 500  # ids per IN (...) list, well under SQLite's variable limit
_REBUILD_CHUNK = 65_536
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def cache_path(cfg: CacheConfig) -> Path:
    """The SQLite file for `cfg`: `[cache].path`, else `<state>/cache.sqlite3`."""
    return cfg.path if cfg.path is not None else paths.state_dir() / "cache.sqlite3"


class _Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def unknown_share(self, text: str) -> float: ...


# The version under which teacher answers are stored: no student's, so no retrain retires them.
TEACHER_VERSION = "teacher"

# A question whose embedder tokens are more than this share unknown pieces is not understood by it.
_MAX_UNKNOWN_SHARE = 0.2


@dataclass(frozen=True)
class CacheKey:
    """What must match besides the question: who asks, which student answered, with which settings."""

    namespace: str
    model_version: str
    params_key: str
    also_serves: tuple[str, ...] = ()
    """Other versions whose entries a lookup may serve: the teacher's answers do not depend on the
    student, so they survive a retrain (TEACHER_VERSION)."""


@dataclass(frozen=True)
class Neighbour:
    """A stored entry near a question, and whether the verifier would serve it (`athanor cache why`)."""

    entry_id: int
    question: str
    answer: str
    similarity: float
    model_version: str
    would_hit: bool
    reason: str


@dataclass(frozen=True)
class CacheHit:
    """A served entry: its answer, how close its question was, and the stored metadata."""

    entry_id: int
    answer: str
    similarity: float
    meta: dict[str, Any]
    created_at: float
    prompt: str = field(default="", compare=False)
    """The cached question that matched (for logs)."""


# --- schema: append-only named migrations (never edit or reorder one that has shipped) ------------

def _m001_entries(db: sqlite3.Connection) -> None:
    # AUTOINCREMENT: a rowid is never reused, so a stale FAISS id can never point at a newer row.
    db.execute("""
        CREATE TABLE entries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            namespace TEXT NOT NULL,
            model_version TEXT NOT NULL,
            params_key TEXT NOT NULL,
            prompt TEXT NOT NULL,
            answer TEXT NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}',
            embedding BLOB NOT NULL,
            created_at REAL NOT NULL,
            last_hit_at REAL,
            hits INTEGER NOT NULL DEFAULT 0
        )""")
    db.execute("CREATE INDEX entries_by_namespace ON entries(namespace)")
    db.execute("CREATE INDEX entries_by_created ON entries(created_at)")
    db.execute("CREATE INDEX entries_by_model ON entries(model_version)")
    db.execute("CREATE INDEX entries_by_lru ON entries(coalesce(last_hit_at, created_at))")


def _m002_settings(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


_MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("m001_entries", _m001_entries),
    ("m002_settings", _m002_settings),
)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations not yet recorded in the `migrations` table; return their names."""
    db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row[0] for row in db.execute("SELECT name FROM migrations")}
    done = []
    for name, step in _MIGRATIONS:
        if name in applied:
            continue
        with _transaction(db):
            step(db)
            db.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        done.append(name)
    return done


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (disk full) may leave the transaction open; every later BEGIN
        # would then fail too, long after the space is back.
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _is_corruption(exc: BaseException) -> bool:
    # Locked or unreadable files are not corrupt: moving them aside would throw a good cache away.
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


class _CorruptDatabase(Exception):
    """Integrity check failed; carries the first problem reported."""


def _chunks(items: Sequence[Any], size: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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
        self._indexes: dict[str, faiss.Index] = {}
        self._stale: dict[str, set[int]] = {}  # deleted in SQLite, still in FAISS until compacted
        self._pending_hits: dict[int, tuple[int, float]] = {}
        self._last_flush = clock()
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # an acknowledged put survives power loss, not just kill -9
        return db

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
            if problem != "ok":
                raise _CorruptDatabase(problem)
            migrate(db)
            self._adopt_embedder(db)
            self._purge_expired_on_open(db)
            self._rebuild(db)
            return db
        except (sqlite3.DatabaseError, _CorruptDatabase) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, sqlite3.DatabaseError) and not _is_corruption(exc):
                # Permissions, a full disk, a lock held too long: the file is fine, the setup is not.
                raise ConfigError("[cache].path", f"cannot open the cache database {self._path}: {exc}",
                                  "check the folder's owner, mode and free space, or set [cache].path") from exc
            return self._replace_corrupt(exc)

    def _adopt_embedder(self, db: sqlite3.Connection) -> None:
        stored = dict(db.execute("SELECT key, value FROM settings WHERE key IN ('embedder', 'dim')").fetchall())
        current = {"embedder": self._embedder.name, "dim": str(self._dim)}
        if stored == current:
            return
        with _transaction(db):
            if stored:
                # Vectors from another model live in another space: every question is embedded again
                # with the new one, so no answer is lost when the embedder changes.
                moved = self._reembed(db)
                log.warning("cache embedder changed from %s to %s: %d entries embedded again",
                            stored.get("embedder"), current["embedder"], moved)
            db.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", current.items())

    def _reembed(self, db: sqlite3.Connection) -> int:
        rows = db.execute("SELECT id, prompt FROM entries ORDER BY id").fetchall()
        for chunk in _chunks(rows, 256):
            vectors = np.ascontiguousarray(self._embedder.embed([prompt for _, prompt in chunk]), dtype=np.float32)
            db.executemany("UPDATE entries SET embedding = ? WHERE id = ?",
                           [(vector.tobytes(), entry_id) for (entry_id, _), vector in zip(chunk, vectors)])
        return len(rows)

    def _purge_expired_on_open(self, db: sqlite3.Connection) -> None:
        with _transaction(db):
            db.execute("DELETE FROM entries WHERE created_at < ?", (self._clock() - self._cfg.ttl_s,))

    def _rebuild(self, db: sqlite3.Connection) -> None:
        """Load every stored vector into per-namespace FAISS indexes, reading blobs in chunks."""
        self._indexes.clear()
        self._stale.clear()
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
                    self._index_for(namespace).add_with_ids(vectors, ids)
                    count += len(good)
                start = end
        for namespace in list(self._indexes):
            self._maybe_approximate(namespace)
        if bad:
            log.warning("cache: dropping %d entries whose vectors have the wrong size", len(bad))
            with _transaction(db):
                for chunk in _chunks(bad):
                    db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        self._count = count

    def _replace_corrupt(self, exc: BaseException) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self._path}{suffix}")
            if source.exists():
                source.rename(f"{aside}{suffix}")
        self.corrupt_path = aside
        db = self._connect()
        migrate(db)
        self._adopt_embedder(db)
        self.salvaged = self._salvage(aside, db)
        self._rebuild(db)
        log.warning("cache database %s was corrupt (%s): moved it to %s, salvaged %d entries, started fresh",
                    self._path, exc, aside, self.salvaged)
        return db

    def _salvage(self, source: Path, db: sqlite3.Connection) -> int:
        """Copy the rows that can still be read from a corrupt file into `db`; best effort, never raises."""
        columns = ("id, namespace, model_version, params_key, prompt, answer, meta, embedding, "
                   "created_at, last_hit_at, hits")
        cutoff = self._clock() - self._cfg.ttl_s
        saved = 0
        try:
            old = sqlite3.connect(str(source), isolation_level=None)
        except sqlite3.Error:
            return 0
        try:
            try:
                same_model = dict(old.execute("SELECT key, value FROM settings").fetchall()).get("embedder")
            except sqlite3.Error:
                same_model = None
            if same_model is not None and same_model != self._embedder.name:
                return 0
            select = f"SELECT {columns} FROM entries"
            max_id = self._readable_max_id(old)
            last = 0
            while max_id is None or last < max_id:
                rows: list[tuple[Any, ...]] = []
                try:
                    # Iterate rather than fetchall: the rows before a damaged page are still good.
                    for row in old.execute(f"{select} WHERE id > ? ORDER BY id LIMIT 500", (last,)):
                        rows.append(row)
                    if not rows:
                        break
                    last = rows[-1][0]
                except sqlite3.Error:
                    if rows:
                        last = rows[-1][0]
                    # A damaged page: fetch the next ids one by one, each through its own b-tree path.
                    for entry_id in range(last + 1, last + 501):
                        try:
                            rows.extend(old.execute(f"{select} WHERE id = ?", (entry_id,)).fetchall())
                        except sqlite3.Error:
                            pass
                    last += 500
                    if max_id is None and not rows:
                        break
                keep = [r for r in rows if isinstance(r[7], bytes) and len(r[7]) == self._dim * 4
                        and isinstance(r[8], float) and r[8] >= cutoff]
                with _transaction(db):
                    db.executemany(f"INSERT OR IGNORE INTO entries ({columns}) VALUES "
                                   f"({','.join('?' * 11)})", keep)
                saved += len(keep)
        except sqlite3.Error as exc:
            log.warning("cache salvage stopped early: %s", exc)
        finally:
            old.close()
        return saved

    @staticmethod
    def _readable_max_id(db: sqlite3.Connection) -> int | None:
        for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'entries'", "SELECT max(id) FROM entries"):
            try:
                row = db.execute(query).fetchone()
            except sqlite3.Error:
                continue
            if row and row[0] is not None:
                return int(row[0])
        return None

    # --- FAISS helpers (caller holds the lock) ------------------------------------------------------

    def _index_for(self, namespace: str) -> faiss.Index:
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = faiss.IndexIDMap2(faiss.IndexFlatIP(self._dim))
        return index

    def _maybe_approximate(self, namespace: str) -> None:
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

    def _forget(self, removed: list[tuple[int, str]]) -> None:
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

    def _embed(self, prompt: str) -> np.ndarray:
        with self._lock:
            cached = self._recent.get(prompt)
            if cached is not None:
                self._recent.move_to_end(prompt)
                return cached
        vector = np.ascontiguousarray(self._embedder.embed([prompt])[0], dtype=np.float32)
        with self._lock:
            self._recent[prompt] = vector
            while len(self._recent) > _RECENT_VECTORS:
                self._recent.popitem(last=False)
        return vector

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
                with _transaction(self._db):
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
                with _transaction(self._db):
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
            self._index_for(key.namespace).add_with_ids(vector.reshape(1, -1), np.array([entry_id], dtype=np.int64))
            self._count += 1 - len(removed)
            self._forget(removed)
            self._maybe_approximate(key.namespace)
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
            self._db.execute("PRAGMA synchronous=OFF")
            try:
                with _transaction(self._db):
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
                self._db.execute("PRAGMA synchronous=FULL")
            self._index_for(key.namespace).add_with_ids(vectors, ids)
            self._count += keep - len(removed)
            self._forget(removed)
            self._maybe_approximate(key.namespace)
            return [int(i) for i in ids]

    def _purge_expired(self, now: float) -> list[tuple[int, str]]:
        rows = self._db.execute("SELECT id, namespace FROM entries WHERE created_at < ?",
                                (now - self._cfg.ttl_s,)).fetchall()
        self._delete_ids([r[0] for r in rows])
        return [(int(r[0]), r[1]) for r in rows]

    def _evict(self, excess: int, below_id: int) -> list[tuple[int, str]]:
        """Delete the `excess` least recently used entries with ids below `below_id` (the new ones)."""
        if excess <= 0:
            return []
        rows = self._db.execute(
            "SELECT id, namespace FROM entries WHERE id < ? ORDER BY coalesce(last_hit_at, created_at), id "
            "LIMIT ?", (below_id, excess)).fetchall()
        self._delete_ids([r[0] for r in rows])
        return [(int(r[0]), r[1]) for r in rows]

    def _delete_ids(self, ids: list[int]) -> None:
        for chunk in _chunks(ids):
            self._db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(chunk))})", chunk)
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
            with _transaction(self._db):
                rows = self._db.execute(f"SELECT id, namespace FROM entries WHERE {condition}", args).fetchall()
                self._delete_ids([r[0] for r in rows])
            by_namespace: dict[str, list[int]] = {}
            for entry_id, namespace in rows:
                by_namespace.setdefault(namespace, []).append(entry_id)
            for namespace, ids in by_namespace.items():
                index = self._indexes.get(namespace)
                if index is not None:
                    index.remove_ids(faiss.IDSelectorBatch(np.array(ids, dtype=np.int64)))
                    self._stale.get(namespace, set()).difference_update(ids)
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
            with _transaction(self._db):
                ids = [r[0] for r in self._db.execute("SELECT id FROM entries WHERE namespace = ?", (namespace,))]
                self._delete_ids(ids)
            self._indexes.pop(namespace, None)
            self._stale.pop(namespace, None)
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
                "index_vectors": sum(index.ntotal for index in self._indexes.values()),
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
                with _transaction(self._db):
                    self._flush_hits()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("cache: could not flush on close: %s", exc)
            finally:
                self._db.close()
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
