"""The real daemon as systemd runs it: the listening socket inherited as fd 3 (LISTEN_FDS/LISTEN_PID),
readiness, reload and stop notifications on a fake NOTIFY_SOCKET, a hot reload that drops no answer,
and SIGTERM in the middle of streams that loses no acknowledged answer."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from appliance.protocol.distill_log import read_records

from .conftest import ROOT, gemini_env, start_daemon
from .fakes import FakeGemini

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Exec'd between fork and the daemon, as systemd does: the socket becomes fd 3, and LISTEN_PID is the
# daemon's own pid (exec keeps it), so `inherited_socket()` takes it.
SOCKET_ACTIVATION = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "os.set_inheritable(3, True)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES='athanor.socket')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'appliance.cli', *sys.argv[2:]])\n"
)


def http(path: Path, timeout: float = 120) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://athanor", timeout=timeout)


class Notifications:
    """A fake $NOTIFY_SOCKET: a datagram socket systemd would read sd_notify messages from."""

    def __init__(self, path: Path) -> None:
        assert len(str(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float = 120) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def close(self) -> None:
        self.sock.close()


def wait_busy(path: Path, timeout: float = 60) -> None:
    with http(path, 30) as client:
        deadline = time.monotonic() + timeout
        while not client.get("/healthz").json()["busy"]:
            assert time.monotonic() < deadline, "the answer never started"
            time.sleep(0.01)


def test_socket_activation_readiness_hot_reload_and_stop(tmp_path, student_path):
    sock_path = tmp_path / "athanor.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    notes = Notifications(tmp_path / "notify.sock")
    configured = tmp_path / "never-bound.sock"  # the daemon must use fd 3, not bind this
    config = tmp_path / "athanor.toml"
    config.write_text(f'[server]\nsocket = "{configured}"\n[student]\npath = "{student_path}"\n'
                      '[cache]\nenabled = false\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATHANOR_", "LISTEN_"))}
    env.update(ATHANOR_HOME=str(tmp_path / "home"), ATHANOR_CONFIG=str(config), NOTIFY_SOCKET=str(notes.path))
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-c", SOCKET_ACTIVATION, str(listener.fileno()), "serve", "-v"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   pass_fds=(listener.fileno(),))
    listener.close()  # the daemon holds its own copy, as systemd's stays with systemd
    try:
        ready = notes.next()
        assert ready.get("READY") == "1", ready
        assert "inherited socket" in ready["STATUS"]

        with http(sock_path) as client:
            asked = client.post("/v1/chat/completions", headers={"x-request-id": "e2e-first"},
                                json={"messages": QUESTION, "max_tokens": 8, "temperature": 0})
        assert asked.status_code == 200 and asked.headers["x-request-id"] == "e2e-first"

        # Hot reload to a copy of the model, with an answer in flight on the old one.
        copy = tmp_path / "copy.gguf"
        shutil.copyfile(student_path, copy)
        config.write_text(config.read_text().replace(str(student_path), str(copy)))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            def long_answer():
                with http(sock_path) as client:
                    return client.post("/v1/chat/completions", json={
                        "messages": QUESTION, "max_tokens": 48, "temperature": 0, "stop": ["\u2603\u2603"]})

            in_flight = pool.submit(long_answer)
            wait_busy(sock_path)
            before = time.monotonic_ns() // 1000
            process.send_signal(signal.SIGHUP)
            reloading = notes.next()
            assert reloading.get("RELOADING") == "1", reloading
            assert int(reloading["MONOTONIC_USEC"]) >= before
            reloaded = notes.next()
            assert reloaded.get("READY") == "1" and "reloaded" in reloaded["STATUS"], reloaded
            answer = in_flight.result(120)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
        with http(sock_path) as client:
            assert client.get("/v1/models").json()["data"][0]["athanor"]["path"] == str(copy)

        # A broken config: `athanor reload` says why, the daemon keeps serving the copy.
        config.write_text(config.read_text() + '[routing]\nconfidence_threshold = "high"\n')
        cli_env = {k: v for k, v in env.items() if k not in ("ATHANOR_CONFIG", "NOTIFY_SOCKET")}
        cli = subprocess.run([sys.executable, "-m", "appliance.cli", "reload", "--socket", str(sock_path)],
                             cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=120)
        assert cli.returncode != 0
        assert "reload failed" in cli.stderr and "[routing].confidence_threshold" in cli.stderr
        assert notes.next().get("RELOADING") == "1"
        still = notes.next()
        assert still.get("READY") == "1" and still["STATUS"].startswith("reload failed"), still
        with http(sock_path) as client:
            assert client.get("/v1/models").json()["data"][0]["athanor"]["path"] == str(copy)
            assert client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 4}).status_code == 200

        process.send_signal(signal.SIGTERM)
        assert notes.next().get("STOPPING") == "1"
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notes.close()
    assert sock_path.exists()  # the socket file is systemd's (RemoveOnStop=), not the daemon's to remove
    assert not configured.exists()
    daemon_log = log_path.read_text()
    assert "e2e-first uid=" in daemon_log and "POST /v1/chat/completions 200 route=student" in daemon_log


def test_sigterm_during_streams_loses_no_acknowledged_answer(tmp_path):
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: f"Teacher says: {prompt[-40:]}") as gemini:
        home = tmp_path / "home"
        # Threshold 1.0: every answer goes to the teacher, and so to the cache and the distillation log.
        process, path = start_daemon(home, env=gemini_env(gemini, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0"))
        questions = [f"Name a famous landmark in city number {i}." for i in range(3)]
        started = [threading.Event() for _ in questions]

        def stream(i: int) -> tuple[str, bool, str]:
            payload = {"messages": [{"role": "user", "content": questions[i]}], "max_tokens": 48, "temperature": 0,
                       "stream": True, "stop": ["\u2603\u2603"]}
            with http(path) as client, client.stream("POST", "/v1/chat/completions", json=payload) as response:
                assert response.status_code == 200
                started[i].set()  # the daemon has acknowledged the request
                lines = list(response.iter_lines())
            chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
            return text, "data: [DONE]" in lines, chunks[-1].get("route", "")

        try:
            with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
                futures = [pool.submit(stream, i) for i in range(len(questions))]
                for event in started:
                    assert event.wait(120)
                wait_busy(path)
                process.send_signal(signal.SIGTERM)  # mid-stream: the student is still generating
                results = [future.result(120) for future in futures]
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    for text, done, route in results:
        assert done and route == "teacher" and text.startswith("Teacher says:")
    records = read_records(home / "state" / "distill.jsonl")
    logged = {r["messages"][-1]["content"]: r["teacher"]["text"] for r in records}
    cached = sqlite3.connect(home / "state" / "cache.sqlite3")
    try:
        answers = {row[0] for row in cached.execute("SELECT answer FROM entries")}
    finally:
        cached.close()
    for question, (text, _, _) in zip(questions, results):
        assert logged.get(question) == text  # in the distillation log, for retraining
        assert text in answers                # and in the cache, for the next asker
