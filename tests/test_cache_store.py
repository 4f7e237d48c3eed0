"""SemanticCache behaviour with the real embedder: hits, misses, keys, TTL, LRU, durability, corruption."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.cache import CacheKey, SemanticCache, load_embedder
from appliance.config import CacheConfig

ROOT = Path(__file__).resolve().parent.parent
KEY = CacheKey("1000", "student-v1", "temp=0")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(None)


class Clock:
    """A settable clock: TTL and LRU order without sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def open_cache(tmp_path: Path, embedder, clock=time.time, **settings) -> SemanticCache:
    return SemanticCache(tmp_path / "cache.sqlite3", embedder, CacheConfig(**settings), clock=clock)


def test_paraphrase_hits(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        entry_id = cache.put(KEY, "How do I reset my router?", "Hold the reset button for 10 s.", {"source": "student"})
        hit = cache.lookup(KEY, "How can I reset my router?")
        assert hit is not None
        assert hit.entry_id == entry_id
        assert hit.answer == "Hold the reset button for 10 s."
        assert hit.meta == {"source": "student"}
        assert hit.similarity >= cache._cfg.threshold
        assert cache.stats()["hits"] == 1


@pytest.mark.parametrize(("cached", "asked"), [
    ("Can I eat cheese without a gallbladder?", "Can I eat cheese with a gallbladder?"),
    ("Is Python faster than Java?", "Is Java faster than Python?"),
    ("How much RAM do I need to run a 7B model?", "How much RAM do I need to run a 70B model?"),
    ("Should I turn the thermostat up at night?", "Should I turn the thermostat down at night?"),
    ("Should I stretch before running?", "Should I stretch after running?"),
])
def test_one_word_change_misses_only_because_of_verification(tmp_path, embedder, cached, asked) -> None:
    vectors = embedder.embed([cached, asked])
    similarity = float(vectors[0] @ vectors[1])
    assert similarity >= CacheConfig().threshold  # similarity alone cannot tell these apart...
    with open_cache(tmp_path / "plain", embedder, verify=False) as plain:
        plain.put(KEY, cached, "the cached answer")
        assert plain.lookup(KEY, asked) is not None  # ...so a plain threshold serves the wrong answer
    with open_cache(tmp_path / "verified", embedder) as cache:
        cache.put(KEY, cached, "the cached answer")
        assert cache.lookup(KEY, asked) is None
        assert cache.lookup(KEY, cached) is not None


def test_namespaces_are_isolated(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cache.put(KEY, "What is my account balance?", "You have 12 EUR.")
        other_user = CacheKey("1001", KEY.model_version, KEY.params_key)
        assert cache.lookup(other_user, "What is my account balance?") is None
        assert cache.lookup(KEY, "What is my account balance?") is not None


def test_model_version_and_params_must_match(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cache.put(KEY, "Write a haiku about autumn.", "Leaves fall ...")
        assert cache.lookup(CacheKey(KEY.namespace, "student-v2", KEY.params_key), "Write a haiku about autumn.") is None
        assert cache.lookup(CacheKey(KEY.namespace, KEY.model_version, "temp=0.7"), "Write a haiku about autumn.") is None
        assert cache.lookup(KEY, "Write a haiku about autumn.") is not None
        # The right entry is still found when a mismatching one is nearer.
        newer = CacheKey(KEY.namespace, "student-v2", KEY.params_key)
        cache.put(newer, "Write a haiku about autumn.", "Red maple ...")
        assert cache.lookup(newer, "Write a haiku about autumn.").answer == "Red maple ..."
        assert cache.lookup(KEY, "Write a haiku about autumn.").answer == "Leaves fall ..."
        assert cache.retire_model_version("student-v1") == 1
        assert cache.lookup(KEY, "Write a haiku about autumn.") is None
        assert cache.stats()["entries"] == 1


def test_ttl_expired_entries_are_not_served_and_are_purged(tmp_path, embedder) -> None:
    clock = Clock()
    with open_cache(tmp_path, embedder, clock=clock, ttl_s=100.0) as cache:
        cache.put(KEY, "What is the tallest building in the world?", "Burj Khalifa.")
        clock.tick(99)
        assert cache.lookup(KEY, "What is the tallest building in the world?") is not None
        clock.tick(2)  # 101 s old: expired
        assert cache.lookup(KEY, "What is the tallest building in the world?") is None
        cache.put(KEY, "Who painted the Mona Lisa?", "Leonardo da Vinci.")  # a put purges the expired
        assert cache.stats()["entries"] == 1
    clock.tick(200)
    with open_cache(tmp_path, embedder, clock=clock, ttl_s=100.0) as cache:  # opening purges too
        assert cache.stats()["entries"] == 0


def test_capacity_evicts_least_recently_used(tmp_path, embedder) -> None:
    clock = Clock()
    questions = ["How do I bake sourdough bread?", "What is the capital of Peru?",
                 "How do ocean tides work?", "Who discovered penicillin?"]
    with open_cache(tmp_path, embedder, clock=clock, max_entries=3) as cache:
        for question in questions[:3]:
            cache.put(KEY, question, f"answer to {question}")
            clock.tick()
        assert cache.lookup(KEY, questions[0]) is not None  # the oldest entry is now the most recently used
        clock.tick()
        cache.put(KEY, questions[3], "Alexander Fleming.")
        assert cache.lookup(KEY, questions[1]) is None  # least recently used: evicted
        for question in (questions[0], questions[2], questions[3]):
            assert cache.lookup(KEY, question) is not None, question
        assert cache.stats()["entries"] == 3


def test_entries_and_hit_counts_persist_across_reopen(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        entry_id = cache.put(KEY, "How many bones are in the human body?", "206.")
        assert cache.lookup(KEY, "how many bones are in the human body") is not None
    with open_cache(tmp_path, embedder) as cache:
        hit = cache.lookup(KEY, "How many bones are in the human body?")
        assert hit is not None and hit.entry_id == entry_id and hit.answer == "206."
        stats = cache.stats()
        assert stats["entries"] == 1 and stats["namespaces"] == {"1000": 1}
        assert stats["lifetime_hits"] == 2
        assert stats["bytes_on_disk"] > 0


_CHILD = """
import sys
from pathlib import Path
from appliance.cache import CacheKey, SemanticCache, load_embedder
from appliance.config import CacheConfig
cache = SemanticCache(Path(sys.argv[1]), load_embedder(None), CacheConfig())
key = CacheKey("1000", "student-v1", "temp=0")
print("ready", flush=True)
i = 0
while True:
    entry_id = cache.put(key, f"What is {i} plus {i}?", str(2 * i))
    print(entry_id, i, flush=True)  # acknowledged: put() has returned
    i += 1
"""


def test_acknowledged_puts_survive_kill_9(tmp_path, embedder) -> None:
    db = tmp_path / "cache.sqlite3"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acked: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        assert child.stdout.readline().strip() == "ready"
        while len(acked) < 10 and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line, "child exited early"
            entry_id, i = map(int, line.split())
            acked[entry_id] = i
    finally:
        child.send_signal(signal.SIGKILL)  # mid-put, with no chance to close or checkpoint
        rest = child.stdout.read()
        child.wait(30)
    for line in rest.splitlines():  # printed before the kill: acknowledged too
        entry_id, i = map(int, line.split())
        acked[entry_id] = i
    assert len(acked) >= 10
    with SemanticCache(db, embedder, CacheConfig()) as cache:
        stored = {row[0] for row in cache._db.execute("SELECT id FROM entries")}
        assert set(acked) <= stored
        for i in (0, max(acked.values())):
            hit = cache.lookup(KEY, f"What is {i} plus {i}?")
            assert hit is not None and hit.answer == str(2 * i)


def test_garbage_file_is_moved_aside_and_a_fresh_cache_starts(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cache.put(KEY, "What is the speed of sound?", "343 m/s.")
    db = tmp_path / "cache.sqlite3"
    garbage = os.urandom(64 * 1024)
    db.write_bytes(garbage)
    with open_cache(tmp_path, embedder) as cache:  # must not raise
        assert cache.stats()["entries"] == 0
        assert cache.corrupt_path is not None and cache.corrupt_path.read_bytes() == garbage
        assert cache.corrupt_path.name.startswith("cache.sqlite3.corrupt-")
        assert cache.lookup(KEY, "What is the speed of sound?") is None
        cache.put(KEY, "What is the speed of sound?", "343 m/s.")
        assert cache.lookup(KEY, "What is the speed of sound?") is not None


def test_damaged_pages_are_salvaged(tmp_path, embedder) -> None:
    rng = np.random.default_rng(0)
    with open_cache(tmp_path, embedder) as cache:
        ids = cache.bulk_insert(KEY, [f"filler {i}" for i in range(300)], ["-"] * 300,
                                rng.standard_normal((300, embedder.dim)).astype(np.float32))
        cache.put(KEY, "What is the boiling point of water?", "100 degrees Celsius at sea level.")
    db = tmp_path / "cache.sqlite3"
    size = db.stat().st_size
    with db.open("r+b") as handle:  # two pages of garbage in the middle of the table
        handle.seek(size // 2 // 4096 * 4096)
        handle.write(os.urandom(8192))
    with open_cache(tmp_path, embedder) as cache:
        assert cache.corrupt_path is not None and cache.corrupt_path.exists()
        assert 0 < cache.salvaged <= len(ids) + 1
        assert cache.stats()["entries"] == cache.salvaged
        cache.lookup(KEY, "What is the boiling point of water?")  # serves or misses, never crashes


def test_bulk_insert_namespaces_and_stats(tmp_path, embedder) -> None:
    prompts = ["How do I peel a mango?", "What is a black hole?", "How do vaccines work?"]
    with open_cache(tmp_path, embedder) as cache:
        ids = cache.bulk_insert(KEY, prompts, ["a", "b", "c"], embedder.embed(prompts))
        assert len(ids) == 3 and len(set(ids)) == 3
        other = CacheKey("1001", KEY.model_version, KEY.params_key)
        cache.put(other, "What is a black hole?", "b2")
        assert cache.lookup(KEY, "What is a black hole?").answer == "b"
        assert cache.lookup(other, "What is a black hole?").answer == "b2"
        assert cache.stats()["namespaces"] == {"1000": 3, "1001": 1}
        assert cache.delete_namespace("1000") == 3
        assert cache.lookup(KEY, "What is a black hole?") is None
        stats = cache.stats()
        assert stats["entries"] == 1 and stats["misses"] == 1 and stats["hits"] == 2
        with pytest.raises(ValueError):
            cache.bulk_insert(KEY, ["x"], ["y"], np.zeros((1, 3), dtype=np.float32))


def test_many_evictions_keep_index_and_database_consistent(tmp_path, embedder) -> None:
    rng = np.random.default_rng(1)
    real = ["How do I grow tomatoes?", "What is inflation?"]
    with open_cache(tmp_path, embedder, max_entries=50) as cache:
        for round_ in range(10):
            cache.bulk_insert(KEY, [f"filler {round_} {i}" for i in range(40)], ["-"] * 40,
                              rng.standard_normal((40, embedder.dim)).astype(np.float32))
        cache.put(KEY, real[0], "In full sun.")
        cache.put(KEY, real[1], "Rising prices.")
        assert cache.stats()["entries"] == 50 == len(cache)
        assert cache.stats()["index_vectors"] >= 50  # evicted vectors may wait for compaction
        assert cache.lookup(KEY, real[0]).answer == "In full sun."
    with open_cache(tmp_path, embedder, max_entries=50) as cache:
        assert cache.stats()["index_vectors"] == 50  # rebuilt from SQLite: nothing stale


def test_migrations_are_recorded_once(tmp_path, embedder) -> None:
    for _ in range(2):
        with open_cache(tmp_path, embedder) as cache:
            names = [row[0] for row in cache._db.execute("SELECT name FROM migrations ORDER BY name")]
    assert names == ["m001_entries", "m002_settings"]


def test_a_different_embedder_embeds_every_entry_again(tmp_path, embedder) -> None:
    """Changing the embedder (as the move from MiniLM to the multilingual default did) loses no answer."""
    from appliance.cache.embedder import load_embedder, minilm_path

    old = load_embedder(minilm_path())
    with open_cache(tmp_path, old) as cache:
        cache.put(KEY, "What is the GDP of Japan?", "About 4 trillion USD.")
        cache.put(KEY, "日本的首都是哪里？", "东京。")
    with open_cache(tmp_path, embedder) as cache:
        assert cache.stats()["entries"] == 2
        hit = cache.lookup(KEY, "日本的首都是哪里？")
        assert hit is not None and hit.answer == "东京。" and hit.similarity > 0.99
        assert cache.lookup(KEY, "what is the gdp of japan").answer == "About 4 trillion USD."


def test_a_script_the_cache_cannot_read_always_misses_and_is_counted(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cache.put(KEY, "Как удалить ветку Git?", "git branch -d name")
        assert cache.lookup(KEY, "Как удалить ветку Git?") is None
        stats = cache.stats()
        assert stats["uncovered"] == 1 and stats["misses"] == 1 and stats["hits"] == 0


def test_concurrent_puts_and_lookups(tmp_path, embedder) -> None:
    errors: list[BaseException] = []
    with open_cache(tmp_path, embedder) as cache:
        def work(worker: int) -> None:
            try:
                for i in range(4):
                    question = f"What is the population of city number {worker * 10 + i}?"
                    cache.put(KEY, question, json.dumps([worker, i]))
                    hit = cache.lookup(KEY, question)
                    assert hit is not None and json.loads(hit.answer) == [worker, i]
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert cache.stats()["entries"] == 16


def test_closed_cache_refuses_use(tmp_path, embedder) -> None:
    cache = open_cache(tmp_path, embedder)
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(RuntimeError):
        cache.lookup(KEY, "anything")


def test_unopenable_path_is_a_config_error_and_nothing_is_moved(tmp_path, embedder) -> None:
    from appliance.errors import ConfigError

    folder = tmp_path / "a-folder.sqlite3"
    folder.mkdir()  # a folder where the file should be: a setup problem, not corruption
    with pytest.raises(ConfigError) as info:
        SemanticCache(folder, embedder, CacheConfig())
    assert info.value.setting == "[cache].path"
    assert folder.is_dir() and not list(tmp_path.glob("*.corrupt-*"))


def test_cache_path_defaults_to_the_state_folder(tmp_path) -> None:
    from appliance.cache import cache_path

    assert cache_path(CacheConfig()) == tmp_path / "home" / "state" / "cache.sqlite3"  # conftest's ATHANOR_HOME
    assert cache_path(CacheConfig(path=tmp_path / "x.db")) == tmp_path / "x.db"


def test_missing_embedder_folder_is_a_config_error(tmp_path) -> None:
    from appliance.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_embedder(tmp_path / "no-such-model")
    assert info.value.setting == "[cache].embedder"
    assert "sentence-transformers folder" in str(info.value)


def test_embedder_output_is_normalised_float32(embedder) -> None:
    vectors = embedder.embed(["one", "two words", ""])
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)
    assert embedder.name == "use-multilingual-v3"
    # The same question in Chinese and English lands close; another question does not.
    zh, en, other = embedder.embed(["猫可以吃巧克力吗？", "Can cats eat chocolate?", "How tall is Mount Everest?"])
    assert float(zh @ en) > float(zh @ other) + 0.3


def test_the_embedder_reports_how_much_of_a_text_it_does_not_know(embedder) -> None:
    assert embedder.unknown_share("猫可以吃巧克力吗？") == 0.0
    assert embedder.unknown_share("ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ") > 0.2  # runes: not in its vocabulary


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert cache._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert sqlite3.connect(tmp_path / "cache.sqlite3").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_teacher_answer_survives_the_students_retirement(tmp_path, embedder) -> None:
    from dataclasses import replace

    from appliance.cache.store import TEACHER_VERSION

    v1 = CacheKey("1000", "student-v1", "temp=0", also_serves=(TEACHER_VERSION,))
    with open_cache(tmp_path, embedder) as cache:
        cache.put(replace(v1, model_version=TEACHER_VERSION, also_serves=()), "What is the capital of Peru?", "Lima.")
        cache.put(v1, "How many legs does a spider have?", "Eight.")
        assert cache.retire_model_version("student-v1") == 1
        v2 = replace(v1, model_version="student-v2")
        assert cache.lookup(v2, "What is the capital of Peru?").answer == "Lima."
        assert cache.lookup(v2, "How many legs does a spider have?") is None
        # Without the teacher's version among those it serves, a key sees only its own student's answers.
        assert cache.lookup(CacheKey("1000", "student-v2", "temp=0"), "What is the capital of Peru?") is None


def test_why_shows_the_neighbours_and_the_verdicts(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cat = cache.put(KEY, "猫可以吃巧克力吗？", "不可以。")
        cache.put(KEY, "How tall is Mount Everest?", "8,849 m.")
        near = cache.why(KEY.namespace, "狗可以吃巧克力吗？", k=2)
        assert near[0].entry_id == cat and not near[0].would_hit and "猫" in near[0].reason
        same = cache.why(KEY.namespace, "猫可以吃巧克力吗", k=1)
        assert same[0].would_hit
        assert cache.why("another-namespace", "猫可以吃巧克力吗") == []


def test_forget_by_id_namespace_or_question_and_clear(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        first = cache.put(KEY, "What is the capital of Peru?", "Lima.")
        cache.put(KEY, "How tall is Mount Everest?", "8,849 m.")
        cache.put(CacheKey("1000/work", "student-v1", "temp=0"), "What is a mutex?", "A lock.")
        cache.put(CacheKey("2000", "student-v1", "temp=0"), "What is a mutex?", "A lock.")
        assert cache.forget(entry_id=first) == 1
        assert cache.lookup(KEY, "What is the capital of Peru?") is None
        assert cache.forget(question="What is a mutex?", namespace="2000") == 1
        assert cache.forget(namespace="1000") == 2  # its sub-namespaces too
        assert cache.stats()["entries"] == 0
        cache.put(KEY, "What is the capital of Peru?", "Lima.")
        assert cache.clear() == 1 and cache.lookup(KEY, "What is the capital of Peru?") is None
        with pytest.raises(ValueError):
            cache.forget()


def test_the_cache_endpoints_let_only_the_owner_change_the_cache(tmp_path, embedder) -> None:
    import asyncio

    from appliance.server.cache_api import CacheApi
    from appliance.server.http import HttpRequest, Peer

    async def inner(request):
        raise AssertionError("the cache paths must not reach the OpenAI API")

    def call(api, method, path, body, uid):
        request = HttpRequest(method, path, {}, json.dumps(body).encode(), Peer(1, uid, uid), "r1")
        response = asyncio.run(api(request))
        return response.status, json.loads(response.body)

    with open_cache(tmp_path, embedder) as cache:
        cache.put(CacheKey("1234", "student-v1", "temp=0"), "What is the capital of Peru?", "Lima.")
        api = CacheApi(inner, lambda: cache, owner_uid=999)
        status, body = call(api, "POST", "/v1/cache/why", {"question": "What's the capital of Peru?"}, uid=1234)
        assert status == 200 and body["namespace"] == "1234" and body["neighbours"][0]["would_hit"]
        status, _ = call(api, "POST", "/v1/cache/why", {"question": "x", "namespace": "999"}, uid=1234)
        assert status == 403
        status, body = call(api, "POST", "/v1/admin/cache/clear", {}, uid=1234)
        assert status == 403 and body["error"]["code"] == "forbidden"
        assert call(api, "POST", "/v1/admin/cache/forget", {}, uid=999)[0] == 400
        assert call(api, "POST", "/v1/admin/cache/forget", {"id": "one"}, uid=999)[0] == 400
        assert call(api, "GET", "/v1/admin/cache/clear", {}, uid=999)[0] == 405
        assert call(api, "POST", "/v1/admin/cache/clear", {}, uid=999) == (200, {"removed": 1})
        assert call(api, "GET", "/v1/cache/stats", {}, uid=1234)[1]["entries"] == 0


def test_a_large_namespace_is_searched_approximately_and_still_finds_its_answers(tmp_path, embedder) -> None:
    import faiss

    rng = np.random.default_rng(1)
    filler = rng.standard_normal((3000, embedder.dim)).astype(np.float32)
    with open_cache(tmp_path, embedder, ann_min_entries=2000) as cache:
        cache.bulk_insert(KEY, [f"q{i}" for i in range(3000)], [f"a{i}" for i in range(3000)], filler)
        assert isinstance(cache._indexes[KEY.namespace], faiss.IndexIVFFlat)
        cache.put(KEY, "猫可以吃巧克力吗？", "不可以。")
        assert cache.lookup(KEY, "猫可以吃巧克力吗").answer == "不可以。"
        assert cache.lookup(KEY, "狗可以吃巧克力吗？") is None
        assert cache.forget(question="猫可以吃巧克力吗？") == 1
        assert cache.lookup(KEY, "猫可以吃巧克力吗") is None
    with open_cache(tmp_path, embedder, ann_min_entries=2000) as cache:  # rebuilt on open as IVF too
        assert isinstance(cache._indexes[KEY.namespace], faiss.IndexIVFFlat)
        assert cache.stats()["index_vectors"] == 3000


def test_warming_up_counts_no_lookup_and_changes_nothing(tmp_path, embedder) -> None:
    with open_cache(tmp_path, embedder) as cache:
        cache.warm_up()  # empty: nothing to search yet
        cache.put(KEY, "How do I reset my router?", "Hold the reset button for 10 s.")
        before = cache.stats()
        cache.warm_up()
        after = cache.stats()
        assert (after["hits"], after["misses"], after["entries"]) == (before["hits"], before["misses"], 1)
        assert cache.lookup(KEY, "How can I reset my router?").answer == "Hold the reset button for 10 s."
