"""Faults a home server meets, through the real daemon: kill -9 in the middle of writes, a teacher
that times out or talks nonsense, and a state folder whose disk is full."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.protocol.distill_log import read_records

from .conftest import ROOT, gemini_env, shared_models_dir, start_daemon, stop_daemon, wait_for_socket
from .fakes import FakeGemini

pytestmark = pytest.mark.e2e

KILL_ROUNDS = 4


def teacher_env(fake: FakeGemini, **extra: str) -> dict[str, str]:
    # Every cache miss goes on to the teacher, so every answer is written to the log and the cache.
    return gemini_env(fake, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0", **extra)


def client(path: Path, timeout: float = 120) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=timeout)


def ask(c: httpx.Client, question: str, max_tokens: int = 8) -> dict:
    response = c.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def gemini():
    with FakeGemini(api_key="fault-key", answer=lambda prompt: f"Teacher says: {prompt[-60:]}") as fake:
        yield fake


# --- kill -9 -------------------------------------------------------------------------------------------


def _questions(round_no: int, worker: int):
    words = ["otters", "comets", "basalt", "violins", "glaciers", "lanterns", "orchids", "tides", "falcons", "cedar"]
    for n in range(10_000):
        yield f"Round {round_no}, worker {worker}, item {n}: write one line about {random.choice(words)} and {n * 7 + worker}."


def test_kill_9_while_writing_loses_no_acknowledged_answer(tmp_path, gemini):
    """Clients keep asking while the daemon is killed -9 at random moments, again and again. Every answer a
    client received must be in the distillation log and the cache afterwards, and every file must be whole."""
    home = tmp_path / "kill9"
    env = teacher_env(gemini)
    acknowledged: list[tuple[str, dict]] = []
    lock = threading.Lock()
    rng = random.Random(8)
    for round_no in range(KILL_ROUNDS):
        process, path = start_daemon(home, env=env)
        stop = threading.Event()

        def worker(n: int) -> None:
            with client(path, timeout=30) as c:
                for question in _questions(round_no, n):
                    if stop.is_set():
                        return
                    try:
                        answer = ask(c, question)
                    except (httpx.TransportError, AssertionError):
                        return  # the daemon died under this request: not acknowledged
                    with lock:
                        acknowledged.append((question, answer))

        before = len(acknowledged)
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        # The kill comes at a random moment once answers flow: on a loaded machine the first answer
        # can take longer than the whole window, and a round killed before it proves nothing.
        deadline = time.monotonic() + 60
        while len(acknowledged) == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(1.5, 3.5))
        process.kill()  # SIGKILL: no handler runs, no buffer is flushed
        process.wait()
        stop.set()
        for thread in threads:
            thread.join(60)
    print(f"{KILL_ROUNDS} kills, {len(acknowledged)} acknowledged answers")  # for -s runs and reports
    assert len(acknowledged) >= 4 * KILL_ROUNDS, "the clients barely got answers; the test proves nothing"
    assert all(answer["route"] == "teacher" for _, answer in acknowledged)

    state = home / "state"
    # Every line of the log is a whole record: a write is one append of one line, fsynced before the answer.
    raw_lines = (state / "distill.jsonl").read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in raw_lines)
    records = list(read_records(state / "distill.jsonl"))
    assert len(records) == len(raw_lines)
    logged = {r["messages"][-1]["content"] for r in records}
    missing = [q for q, _ in acknowledged if q not in logged]
    assert not missing, f"{len(missing)} acknowledged answers missing from the distillation log: {missing[:3]}"

    # The cache database is intact and holds every acknowledged answer; the spend ledger has them all.
    with sqlite3.connect(state / "cache.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    spent = sum(answer["cost_usd"] for _, answer in acknowledged)
    process, path = start_daemon(home, env=env)
    try:
        with client(path) as c:
            assert c.get("/v1/stats").json()["teacher"]["spent_today"] >= spent - 1e-9
            before = len(gemini.requests)
            for question, answer in acknowledged:
                again = ask(c, question)
                assert again["route"] == "cache", question
                assert again["choices"][0]["message"]["content"] == answer["choices"][0]["message"]["content"]
            assert len(gemini.requests) == before
    finally:
        stop_daemon(process)


# --- a teacher that fails ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory, gemini):
    """A daemon whose teacher gives up fast: 1 s timeout, one retry."""
    home = tmp_path_factory.mktemp("impatient")
    process, path = start_daemon(home, env=teacher_env(gemini, ATHANOR_TEACHER__TIMEOUT_S="1",
                                                       ATHANOR_TEACHER__MAX_RETRIES="1"))
    yield path
    stop_daemon(process)


@pytest.mark.parametrize("fault, reason_words", [
    ({"delay": 3.0}, ("did not answer within", "timed out")),
    ({"status": 500}, ("500", "internal")),
    ({"status": 503}, ("503", "unavailable", "overloaded")),
    ({"status": 429}, ("429", "quota", "rate")),
    ({"garbage": "json"}, ("json", "garbage", "not")),
    ({"garbage": "empty"}, ("no answer", "empty", "candidates")),
    ({"garbage": "blocked"}, ("block", "refus", "safety")),
])
def test_a_failing_teacher_still_gives_the_client_an_answer(impatient, gemini, fault, reason_words):
    gemini.fail_times(4, **fault)
    question = f"Explain fault case {json.dumps(fault)} in a few words."
    try:
        with client(impatient) as c:
            answer = ask(c, question)
            health = c.get("/healthz").json()
    finally:
        gemini.faults.clear()
    assert answer["route"] == "student" and answer["degraded"] is True
    assert answer["choices"][0]["message"]["content"]
    reason = answer["degraded_reason"].lower()
    assert any(word in reason for word in reason_words), reason
    assert health["status"] == "ok"  # a teacher outage is not a broken daemon
    # The hard question is kept for `harvest --from-log`, with why the teacher did not answer it.
    log = Path(impatient).parent.parent / "state" / "distill.jsonl"
    kept = [e for e in read_records(log) if e.get("pending") and e["messages"][-1]["content"] == question]
    assert [e["pending"]["reason"] for e in kept] == [answer["degraded_reason"]]


# --- disk full -----------------------------------------------------------------------------------------


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "-o",
                             "size=64k", "tmpfs", str(probe)], capture_output=True)
    return result.returncode == 0


def _fill(folder: Path) -> Path:
    """Write a file until the disk under `folder` is full; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: close() has nothing left to fail on
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_disk_costs_no_answer_and_shows_in_health(tmp_path, gemini):
    """The state folder lives on a 4 MiB tmpfs in the daemon's own mount namespace (a real ENOSPC from the
    kernel); with the disk full, answers still come, /healthz and /v1/stats name the stores that cannot be
    written, and once space is free again the daemon writes again by itself."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("needs `unshare --user --mount` to give the daemon a small disk of its own")
    home = tmp_path / "full"
    state = home / "state"
    state.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATHANOR_")}
    env.update({"ATHANOR_HOME": str(home), "ATHANOR_MODELS_DIR": str(shared_models_dir()), **teacher_env(gemini)})
    script = f'mount -t tmpfs -o size=4m tmpfs "{state}" && exec "$0" -m appliance.cli serve'
    with (tmp_path / "daemon.log").open("w") as log:
        process = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                                    sys.executable], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log_path = tmp_path / "daemon.log"
    socket_path = home / "run" / "athanor.sock"
    try:
        wait_for_socket(socket_path, process)
        # The daemon's view of its state folder: the tmpfs, reached through its root in /proc.
        seen = Path(f"/proc/{process.pid}/root") / state.relative_to("/")
        with client(socket_path) as c:
            assert ask(c, "What colour is the sky on a clear day?")["route"] == "teacher"
            assert c.get("/healthz").json()["status"] == "ok"

            filler = _fill(seen)
            # Files keep the slack of their last 4 KiB page, so a few records may still fit: ask until
            # both the cache and the log have hit the wall.
            answers = []
            for n in range(40):
                answers.append(ask(c, f"Name a river in country number {n}."))
                health = c.get("/healthz").json()
                stores = health["storage"]["stores"]
                if all(stores.get(name, {}).get("failing") for name in ("cache", "distill_log")):
                    break
            assert all(a["route"] == "teacher" and a["choices"][0]["message"]["content"] for a in answers)
            assert health["status"] == "degraded"
            for name in ("cache", "distill_log"):
                assert stores[name]["failing"] is True, (name, stores)
                assert "free space" in stores[name]["last_error"]
            # The spend ledger is not asserted: it rewrites pages its WAL already owns and may well go on
            # writing. Its failure path is tested in test_storage_health.py.
            assert c.get("/v1/stats").json()["storage"]["ok"] is False
            # A repeated question is still answered (by the teacher again: its first answer could not be cached).
            assert ask(c, "Name a river in country number 0.")["route"] == "teacher"

            filler.unlink()
            recovered = ask(c, "What is the boiling point of water at sea level?")
            assert recovered["route"] == "teacher"
            # The answer ledger commits from its own thread about once a second: health turns back to ok
            # with its next write after the space is freed.
            deadline = time.monotonic() + 10
            while (health := c.get("/healthz").json())["status"] != "ok" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert health["status"] == "ok", health
            assert ask(c, "What is the boiling point of water at sea level?")["route"] == "cache"
        lines = (seen / "distill.jsonl").read_bytes().splitlines(keepends=True)
        records = list(read_records(seen / "distill.jsonl"))
        assert len(records) == len(lines)  # no torn line from the writes that did not fit
        logged = [r["messages"][-1]["content"] for r in records]
        assert logged[0] == "What colour is the sky on a clear day?"
        assert logged[-1] == "What is the boiling point of water at sea level?"
        assert len(logged) < len(answers) + 2  # some answers could not be logged: the disk really was full
        with sqlite3.connect(seen / "cache.sqlite3") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        stop_daemon(process)
