"""Hot reload without signals (the `Reloader` on fake students), the admin endpoint's permission
check, the per-request log line with its request id, and the journald log format."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import replace

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.routing.router import Router, Student
from appliance.server.access_log import AccessLog
from appliance.server.admin import RELOAD_PATH, AdminApi
from appliance.server.http import HttpRequest, HttpResponse, Peer, json_response, request_id_for
from appliance.server.logs import JournalFormatter, stderr_is_journal
from appliance.server.reload import ReloadOutcome, Reloader


class FakeEngine:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeScheduler:
    """`close` can be held open, as a real one is while its answers in flight finish."""

    def __init__(self, hold: bool = False) -> None:
        self.closed_with: float | None = None
        self.close_started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def close(self, timeout: float) -> None:
        self.close_started.set()
        self.release.wait(10)
        self.closed_with = timeout


def fake_student(name: str = "s", hold: bool = False) -> Student:
    return Student(name, FakeEngine(), FakeScheduler(hold), version=f"v-{id(object())}")  # type: ignore[arg-type]


class Notes(list):
    """A fake sd_notify: records each call's states."""

    def __call__(self, *states: str) -> bool:
        self.append(states)
        return True


def make_reloader(router: Router, read_config, load, notes: Notes, **kwargs) -> Reloader:
    return Reloader(router, parse_config({}), read_config, load, retire_timeout_s=7.0, notify=notes, **kwargs)


def test_reload_swaps_students_retires_the_old_and_notifies():
    old, new = fake_student(), fake_student()
    router = Router({"s": old}, "s")
    notes = Notes()
    new_config = parse_config({"student": {"name": "s", "default_max_tokens": 99},
                               "routing": {"confidence_threshold": 0.5}})
    seen = []
    reloader = make_reloader(router, lambda: new_config, lambda config: {"s": new}, notes, on_config=seen.append)
    before = time.monotonic_ns() // 1000
    outcome = asyncio.run(reloader.reload())
    assert outcome == ReloadOutcome(True, "serving s (reloaded)", ("s",))
    assert router.student(None) is new
    assert old.scheduler.closed_with == 7.0 and old.engine.closed  # type: ignore[attr-defined]
    assert not new.engine.closed  # type: ignore[attr-defined]
    assert router.routing.confidence_threshold == 0.5
    assert seen == [new_config]
    reloading, ready = notes
    assert reloading[0] == "RELOADING=1"
    usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= time.monotonic_ns() // 1000  # CLOCK_MONOTONIC, as systemd reads it
    assert ready == ("READY=1", "STATUS=serving s (reloaded)")


def test_new_requests_go_to_the_new_student_while_the_old_one_finishes():
    old, new = fake_student(hold=True), fake_student()
    router = Router({"s": old}, "s")
    notes = Notes()
    reloader = make_reloader(router, lambda: parse_config({"student": {"name": "s"}}), lambda config: {"s": new}, notes)

    async def scenario():
        task = asyncio.create_task(reloader.reload())
        while not old.scheduler.close_started.is_set():  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        # The old student is still finishing its answers, yet a new request already gets the new one.
        assert router.student(None) is new
        assert not old.engine.closed  # type: ignore[attr-defined]
        assert [n[0] for n in notes] == ["RELOADING=1"]  # READY=1 only once the old one is retired
        old.scheduler.release.set()  # type: ignore[attr-defined]
        return await task

    outcome = asyncio.run(scenario())
    assert outcome.ok and old.engine.closed  # type: ignore[attr-defined]
    assert notes[-1][0] == "READY=1"


@pytest.mark.parametrize("failure, words", [
    # The new config does not validate: the setting is named.
    (ConfigError("[student].n_ctx", "must be at least 64"), ["[student].n_ctx", "must be at least 64"]),
    # The model does not load (a truncated GGUF makes llama.cpp fail in its own way).
    (RuntimeError("llama_model_load: truncated file"), ["RuntimeError", "truncated file"]),
])
def test_a_failed_reload_keeps_the_old_students_serving(failure, words):
    old = fake_student()
    router = Router({"s": old}, "s")
    notes = Notes()

    def read_config():
        if isinstance(failure, ConfigError):
            raise failure
        return parse_config({"student": {"name": "s"}})

    def load(config):
        raise failure

    outcome = asyncio.run(make_reloader(router, read_config, load, notes).reload())
    assert not outcome.ok and outcome.students == ("s",)
    assert outcome.message.startswith("reload failed, still serving s: ")
    for word in words:
        assert word in outcome.message
    assert router.student(None) is old and not old.engine.closed  # type: ignore[attr-defined]
    assert notes[0][0] == "RELOADING=1"
    assert notes[-1] == ("READY=1", f"STATUS={outcome.message}")


def test_changes_a_reload_cannot_apply_are_named(caplog):
    router = Router({"s": fake_student()}, "s")
    changed = parse_config({"student": {"name": "s"}, "cache": {"enabled": False}})
    reloader = make_reloader(router, lambda: changed, lambda config: {"s": fake_student()}, Notes())
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(reloader.reload()).ok
    assert "[cache]" in caplog.text and "restart" in caplog.text


def test_reloads_run_one_at_a_time():
    router = Router({"s": fake_student()}, "s")
    running, most = 0, 0
    lock = threading.Lock()

    def load(config):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return {"s": fake_student()}

    reloader = make_reloader(router, lambda: parse_config({"student": {"name": "s"}}), load, Notes())

    async def both():
        return await asyncio.gather(reloader.reload(), reloader.reload())

    assert all(outcome.ok for outcome in asyncio.run(both()))
    assert most == 1


# --- POST /v1/admin/reload ------------------------------------------------------------------------

class StubReloader:
    def __init__(self, outcome: ReloadOutcome) -> None:
        self.outcome = outcome
        self.calls = 0

    async def reload(self) -> ReloadOutcome:
        self.calls += 1
        return self.outcome


async def inner(request: HttpRequest) -> HttpResponse:
    return json_response(200, {"inner": True})


def request(method: str, path: str, uid: int | None, headers: dict | None = None) -> HttpRequest:
    peer = Peer(pid=1234, uid=uid, gid=uid) if uid is not None else None
    return HttpRequest(method, path, headers or {}, b"", peer, "rid-1")


@pytest.mark.parametrize("method, uid, status, reloads", [
    ("POST", 1000, 200, 1),   # the daemon's own user
    ("POST", 0, 200, 1),      # root
    ("POST", 1001, 403, 0),   # anyone else in the socket's group may ask questions, not reload
    ("POST", None, 403, 0),   # no peer credentials at all: refuse
    ("GET", 1000, 405, 0),    # reloading changes state: POST only
])
def test_only_the_daemons_user_or_root_may_reload(method, uid, status, reloads):
    stub = StubReloader(ReloadOutcome(True, "serving s (reloaded)", ("s",)))
    admin = AdminApi(inner, stub, owner_uid=1000)  # type: ignore[arg-type]
    response = asyncio.run(admin(request(method, RELOAD_PATH, uid)))
    assert response.status == status and stub.calls == reloads
    if status == 403:
        assert b"sudo athanor reload" in response.body


def test_a_failed_reload_is_a_500_with_the_reason_and_other_paths_pass_through():
    stub = StubReloader(ReloadOutcome(False, "reload failed, still serving s: bad", ("s",)))
    admin = AdminApi(inner, stub, owner_uid=os.getuid())  # type: ignore[arg-type]
    failed = asyncio.run(admin(request("POST", RELOAD_PATH, os.getuid())))
    assert failed.status == 500 and b"reload_failed" in failed.body and b"still serving s" in failed.body
    passed = asyncio.run(admin(request("GET", "/healthz", 1001)))
    assert passed.body == b'{"inner":true}'


# --- request ids and the access log ---------------------------------------------------------------

@pytest.mark.parametrize("given, kept", [
    ("3f9c2a1e-77aa-4c1b-9a53-0d3c0d2c1f10", True),  # a UUID, as proxies send
    ("client:batch/7+retry=2@host", True),
    ("", False),                                    # absent
    ("x" * 65, False),                              # too long for a log line
    ("two words", False),                           # spaces would split the log fields
    ("evil\nFAKE LOG LINE", False),                 # log injection
    ("caf\u00e9", False),                           # not ASCII
])
def test_incoming_request_ids_are_kept_only_when_sane(given, kept):
    rid = request_id_for({"x-request-id": given} if given else {})
    if kept:
        assert rid == given
    else:
        assert rid != given and len(rid) == 16 and int(rid, 16) >= 0
    assert request_id_for({}) != request_id_for({})


def test_one_log_line_per_request_with_id_status_route_and_duration(caplog):
    async def plain(req: HttpRequest) -> HttpResponse:
        req.notes.route = "cache"
        return json_response(200, {})

    with caplog.at_level(logging.INFO, logger="athanor.access"):
        asyncio.run(AccessLog(plain)(request("POST", "/v1/chat/completions", 1000, {"x-request-id": "abc"})))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "athanor.access"]
    assert line.startswith("rid-1 uid=1000 POST /v1/chat/completions 200 route=cache ")
    assert line.endswith("s") and float(line.rsplit(" ", 1)[1][:-1]) >= 0


def test_a_streamed_answer_is_logged_when_its_last_chunk_is_out(caplog):
    async def chunks(req: HttpRequest):
        yield b"a"
        req.notes.route = "teacher"  # known only once the router has decided
        yield b"b"

    async def streaming(req: HttpRequest) -> HttpResponse:
        # A middleware's copy of the request (KeyAuth sets the caller this way) shares the original's notes.
        return HttpResponse(200, stream=chunks(replace(req, client="key:alice")))

    async def consume():
        response = await AccessLog(streaming)(request("POST", "/v1/chat/completions", 1000))
        assert not [r for r in caplog.records if r.name == "athanor.access"]  # not yet
        return [chunk async for chunk in response.stream]

    with caplog.at_level(logging.INFO, logger="athanor.access"):
        assert asyncio.run(consume()) == [b"a", b"b"]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "athanor.access"]
    assert " 200 route=teacher " in line


# --- journald ---------------------------------------------------------------------------------------

def test_journal_lines_carry_syslog_priorities():
    formatter = JournalFormatter()
    warning = logging.LogRecord("athanor", logging.WARNING, __file__, 1, "disk %s", ("low",), None)
    assert formatter.format(warning) == "<4>athanor: disk low"
    try:
        raise ValueError("boom")
    except ValueError:
        error = logging.LogRecord("athanor", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(error).splitlines()
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)  # the traceback too


def test_stderr_is_the_journal_only_when_journal_stream_names_it():
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        pytest.skip("stderr has no file descriptor under this capture mode")
    assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
    assert not stderr_is_journal({})
