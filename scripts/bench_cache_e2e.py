#!/usr/bin/env python3
"""A cache hit's end-to-end latency through the daemon's socket, with the cache pre-filled to N entries.

For each size: fill the cache file with N filler entries (random unit vectors) plus one real
question in the caller's namespace, start the daemon on it, and time a request that hits, next to
`/healthz` (the socket round trip with no work) and a student answer of one token as baselines.

    python scripts/bench_cache_e2e.py [--sizes 1000,100000,1000000] [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import os
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
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.fingerprint import file_fingerprint  # noqa: E402
from appliance.router import params_key  # noqa: E402
from appliance.server.api import to_chat_request  # noqa: E402
from appliance.server.openai_schema import parse_chat_request  # noqa: E402

QUESTION = [{"role": "user", "content": "How many moons does Mars have?"}]
PARAMS = {"max_tokens": 32, "temperature": 0}


def fill(db: Path, size: int, embedder, console: Console) -> None:
    version = file_fingerprint(embedded_student_path())
    # The key the daemon will compute for this request, through the same parsing path.
    wire = parse_chat_request(json.dumps({"messages": QUESTION, **PARAMS}).encode())
    key = CacheKey(str(os.getuid()), version, params_key(to_chat_request(wire, 512).params))
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


def timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.request(method, path, **kwargs)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed * 1000, response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cache_e2e.json")
    args = parser.parse_args()
    console = Console()
    embedder = load_embedder(None)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as home:
            console.print(f"[bold]{size:,} entries[/]")
            fill(Path(home) / "state" / "cache.sqlite3", size, embedder, console)
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
            return statistics.quantiles(values, n=20)[18] if p == 95 else statistics.median(values)

        rows.append({"entries": size, "daemon_start_s": startup_s,
                     "hit_ms_p50": q(hits, 50), "hit_ms_p95": q(hits, 95),
                     "healthz_ms_p50": q(health, 50), "student_1tok_ms_p50": q(student, 50)})
    table = Table(title="cache hit through the socket (ms)")
    for column in ("entries", "daemon start s", "hit p50", "hit p95", "/healthz p50", "1-token student p50"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['entries']:,}", f"{r['daemon_start_s']:.1f}", f"{r['hit_ms_p50']:.1f}",
                      f"{r['hit_ms_p95']:.1f}", f"{r['healthz_ms_p50']:.2f}", f"{r['student_1tok_ms_p50']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
