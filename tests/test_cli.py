"""CLI habits, through click's CliRunner and a stand-in daemon on a real Unix socket: `config` prints
JSON alone on stdout, `health` fails when the daemon is degraded, `ask` reads standard input."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler

import pytest
from click.testing import CliRunner

from appliance.cli import main

HEALTHY = {"status": "ok", "storage": {"ok": True, "stores": {}}, "students": ["s"]}
DEGRADED = {"status": "degraded", "students": ["s"], "storage": {"ok": False, "stores": {
    "cache": {"writes": 3, "write_failures": 1, "failing": True, "last_error": "disk full"},
    "distill_log": {"writes": 3, "write_failures": 0, "failing": False, "last_error": None}}}}


class StandIn:
    """Answers /healthz with `health` and chat completions with "ok", keeping the chat bodies it got."""

    def __init__(self) -> None:
        self.health = HEALTHY
        self.chats: list[dict] = []
        self.provenance: dict = {"route": "student", "degraded": False}
        """What the answer's last chunk (or the whole answer) says of itself."""


def _handler(state: StandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # a Unix socket has no client address to log
            pass

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(json.dumps(state.health).encode(), "application/json")

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            state.chats.append(request)
            if request.get("stream"):
                chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}}], "route": "student"}
                last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **state.provenance}
                self._send(f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode(),
                           "text/event-stream")
            else:
                self._send(json.dumps({"choices": [{"message": {"content": "ok"}}], **state.provenance}).encode(),
                           "application/json")

    return Handler


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    state = StandIn()
    path = tmp_path / "athanor.sock"
    server = socketserver.ThreadingUnixStreamServer(str(path), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ATHANOR_SERVER__SOCKET", str(path))
    yield state
    server.shutdown()
    server.server_close()


def test_config_prints_json_alone_on_stdout():
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)  # what `athanor config | jq` reads
    assert config["student"]["n_ctx"] > 0
    assert result.stderr.startswith("# from ")


def test_health_exits_0_when_ok_and_1_when_degraded(daemon):
    ok = CliRunner().invoke(main, ["health"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["status"] == "ok" and not ok.stderr
    daemon.health = DEGRADED
    degraded = CliRunner().invoke(main, ["health"])
    assert degraded.exit_code == 1
    assert json.loads(degraded.stdout)["status"] == "degraded"  # the report is still printed
    assert "degraded: cannot write cache" in degraded.stderr and "distill_log" not in degraded.stderr


def test_health_without_a_daemon_exits_3(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHANOR_SERVER__SOCKET", str(tmp_path / "none.sock"))
    result = CliRunner().invoke(main, ["health"])
    assert result.exit_code == 3 and "athanor serve" in result.stderr


@pytest.mark.parametrize("args", [[], ["-"]])
def test_ask_reads_the_question_from_standard_input(daemon, args):
    result = CliRunner().invoke(main, ["ask", *args, "--max-tokens", "4"], input="What is 2+2?\nAnswer briefly.\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok\n"
    assert daemon.chats[-1]["messages"] == [{"role": "user", "content": "What is 2+2?\nAnswer briefly."}]
    assert daemon.chats[-1]["max_tokens"] == 4


def test_ask_takes_the_question_as_an_argument_after_any_piped_text(daemon):
    result = CliRunner().invoke(main, ["ask", "hi there", "--no-stream"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok\n" and daemon.chats[-1]["messages"][-1]["content"] == "hi there"
    # `cat notes.txt | athanor ask "summarise"`: the piped text, then the question.
    piped = CliRunner().invoke(main, ["ask", "summarise", "--no-stream"], input="the notes\n")
    assert piped.exit_code == 0, piped.output
    assert daemon.chats[-1]["messages"][-1]["content"] == "the notes\n\nsummarise"


def test_ask_with_nothing_on_standard_input_is_a_usage_error(daemon):
    result = CliRunner().invoke(main, ["ask"], input="  \n")
    assert result.exit_code == 2 and "no question" in result.stderr
    assert not daemon.chats


def test_shell_completion_names_the_commands():
    import os
    import subprocess
    import sys

    from pathlib import Path

    # The console script: click names the completion variable after the program (_ATHANOR_COMPLETE).
    athanor = Path(sys.executable).parent / "athanor"
    env = {**os.environ, "_ATHANOR_COMPLETE": "bash_complete", "COMP_WORDS": "athanor ro", "COMP_CWORD": "1"}
    done = subprocess.run([str(athanor)], env=env, capture_output=True, text=True, timeout=60)
    assert "plain,router" in done.stdout.splitlines()


@pytest.mark.parametrize("args", [[], ["--no-stream"]])
def test_ask_says_on_stderr_when_the_daemon_flagged_the_answer(daemon, args):
    sure = CliRunner().invoke(main, ["ask", "What is 2+2?", *args])
    assert sure.exit_code == 0 and sure.stdout == "ok\n" and "may be wrong" not in sure.stderr
    daemon.provenance = {"route": "student", "degraded": True,
                         "degraded_reason": "the student is unsure and no teacher is configured"}
    unsure = CliRunner().invoke(main, ["ask", "What is 2+2?", *args])
    assert unsure.exit_code == 0 and unsure.stdout == "ok\n"  # stdout stays the answer alone
    assert "may be wrong: the student is unsure and no teacher is configured" in unsure.stderr


def test_chat_says_on_stderr_when_an_answer_was_flagged(daemon):
    daemon.provenance = {"route": "student", "degraded": True, "degraded_reason": "the teacher failed: 503"}
    talk = CliRunner().invoke(main, ["chat"], input="What is 2+2?\n/exit\n")
    assert talk.exit_code == 0, talk.output
    assert "may be wrong: the teacher failed: 503" in talk.stderr
