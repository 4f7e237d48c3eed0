#!/usr/bin/env python3
"""The cache at 1k / 100k / 1M entries: a hit through the daemon's socket, a miss's lookup, and the
approximate index's recall against exact search.

For each size: fill the cache file with N filler entries (random unit vectors) plus one real
question in the caller's namespace. In process, time opening the file with no saved IVF layout
(training the index from every entry), `lookup` of new questions that miss (embedding
included), and measure recall@1 of the index the store built (IVF past `[cache].ann_min_entries`)
against exact search, for queries near stored vectors (cosine ~0.9 to their source; random vectors
are the hardest case for IVF's clustering). Then start the daemon on the file (it reuses the layout
that open saved) and time a request
that hits, next to `/healthz` (the socket round trip with no work) and a one-token student answer.

    python scripts/bench_cache_e2e.py [--sizes 1000,100000,1000000] [--reps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache import CacheKey, SemanticCache, load_embedder, normalize_prompt  # noqa: E402
from appliance.config import CacheConfig  # noqa: E402
from appliance.cache.layout import layout_folder  # noqa: E402
from appliance.cache.store import TEACHER_VERSION  # noqa: E402
from appliance.routing.router import params_key  # noqa: E402
from appliance.server.api import to_chat_request  # noqa: E402
from appliance.server.openai_schema import parse_chat_request  # noqa: E402

QUESTION = [{"role": "user", "content": "How many moons does Mars have?"}]
PARAMS = {"max_tokens": 32, "temperature": 0}


def fill(db: Path, size: int, embedder, console: Console) -> None:
    # Stored as a teacher's answer, which any student serves, under the key the daemon will compute
    # for this request (through the same parsing path).
    wire = parse_chat_request(json.dumps({"messages": QUESTION, **PARAMS}).encode())
    key = CacheKey(str(os.getuid()), TEACHER_VERSION, params_key(to_chat_request(wire, 512).params))
    cache = SemanticCache(db, embedder, CacheConfig(max_entries=size + 10))
    rng = np.random.default_rng(0)
    chunk = 50_000
    for start in range(0, size, chunk):
        n = min(chunk, size - start)
        vectors = rng.standard_normal((n, embedder.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        cache.bulk_insert(key, [f"filler {start + i}" for i in range(n)], ["filler"] * n, vectors)
        console.print(f"  filled {start + n:,}/{size:,}", end="\r")
    cache.put(key, normalize_prompt(QUESTION), "Mars has two moons, Phobos and Deimos.", {"completion_tokens": 9})
    cache.close()


def in_process(db: Path, embedder, size: int) -> dict[str, float]:
    """Miss latency (embedding + search + verification) and the index's recall@1 against exact search."""
    import faiss

    # Opened with no saved IVF layout (as the first start after an upgrade, or after the namespace
    # outgrew its layout): the index is trained from every entry. The daemon, started next, reuses it.
    shutil.rmtree(layout_folder(db), ignore_errors=True)
    started = time.perf_counter()
    cache = SemanticCache(db, embedder, CacheConfig(max_entries=size + 10))
    open_s = time.perf_counter() - started
    key = CacheKey(str(os.getuid()), "bench", "bench")
    misses = []
    for i in range(60):
        started = time.perf_counter()
        cache.lookup(key, f"What is the boiling point of compound number {i} at {i + 3} atmospheres?")
        misses.append((time.perf_counter() - started) * 1000)
    namespace = str(os.getuid())
    index = cache._indexes[namespace]
    exact = faiss.IndexFlatIP(embedder.dim)
    rng = np.random.default_rng(1)
    rows = cache._db.execute("SELECT embedding FROM entries WHERE namespace = ? ORDER BY random() LIMIT 200",
                             (namespace,)).fetchall()
    stored = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])
    queries = stored + rng.standard_normal(stored.shape).astype(np.float32) * 0.02
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    all_rows = cache._db.execute("SELECT id, embedding FROM entries WHERE namespace = ? ORDER BY id",
                                 (namespace,)).fetchall()
    ids = np.array([r[0] for r in all_rows])
    exact.add(np.stack([np.frombuffer(r[1], dtype=np.float32) for r in all_rows]))
    _, truth = exact.search(queries, 1)
    _, found = index.search(queries, 1)
    recall = float(np.mean(ids[truth[:, 0]] == found[:, 0]))
    cache.close()
    return {"miss_lookup_ms_p50": statistics.median(misses), "recall_at_1": recall,
            "index": type(index).__name__, "open_without_layout_s": open_s}


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.request(method, path, **kwargs)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cache_e2e.json")
    args = parser.parse_args()
    console = Console()
    embedder = load_embedder(None)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as home:
            console.print(f"[bold]{size:,} entries[/]")
            fill(Path(home) / "state" / "cache.sqlite3", size, embedder, console)
            local = in_process(Path(home) / "state" / "cache.sqlite3", embedder, size)
            env = {**os.environ, "ATHANOR_HOME": home, "ATHANOR_CACHE__MAX_ENTRIES": str(size + 10)}
            started = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve"], cwd=ROOT, env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            sock = Path(home) / "run" / "athanor.sock"
            client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://a", timeout=600)
            while True:
                try:
                    client.get("/healthz")
                    break
                except (httpx.TransportError, FileNotFoundError):
                    if process.poll() is not None:
                        raise SystemExit("daemon exited")
                    time.sleep(0.1)
            startup_s = time.perf_counter() - started
            try:
                hits, health, student = [], [], []
                for i in range(args.reps):
                    ms, body = timed(client, "POST", "/v1/chat/completions", json={"messages": QUESTION, **PARAMS})
                    assert body["route"] == "cache", body
                    hits.append(ms)
                    health.append(timed(client, "GET", "/healthz")[0])
                    ms, body = timed(client, "POST", "/v1/chat/completions",
                                     json={"messages": [{"role": "user", "content": f"Say the number {i}."}],
                                           "max_tokens": 1, "temperature": 0},
                                     headers={"cache-control": "no-cache, no-store"})
                    student.append(ms)
            finally:
                client.close()
                process.terminate()
                process.wait(60)

        def q(values, p):
            return statistics.quantiles(values, n=100)[p - 1] if p != 50 else statistics.median(values)

        rows.append({"entries": size, "daemon_start_s": startup_s, **local,
                     "hit_ms_p50": q(hits, 50), "hit_ms_p99": q(hits, 99),
                     "healthz_ms_p50": q(health, 50), "student_1tok_ms_p50": q(student, 50)})
    table = Table(title="the cache at scale (ms)")
    for column in ("entries", "index", "recall@1", "open, no layout s", "daemon start s", "miss lookup p50", "hit p50", "hit p99",
                   "/healthz p50", "1-token student p50"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['entries']:,}", r["index"], f"{r['recall_at_1']:.3f}",
                      f"{r['open_without_layout_s']:.1f}", f"{r['daemon_start_s']:.1f}",
                      f"{r['miss_lookup_ms_p50']:.1f}", f"{r['hit_ms_p50']:.1f}", f"{r['hit_ms_p99']:.1f}",
                      f"{r['healthz_ms_p50']:.2f}", f"{r['student_1tok_ms_p50']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
