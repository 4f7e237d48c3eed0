"""The `llm` plugin (appliance/clients/llm_plugin.py) as llm itself calls it: through its entry point, its Python API
and its CLI, against the real daemon on the embedded student, and against a recording stand-in where the
exact request matters."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import llm
import pytest

from appliance.clients.llm_plugin import Athanor

from .conftest import ROOT

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"
LLM_CLI = Path(sys.executable).with_name("llm")


@pytest.fixture(autouse=True)
def _llm_user_dir(tmp_path, monkeypatch):
    """llm keeps its log, keys and aliases here instead of ~/.config/io.datasette.llm."""
    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path / "llm"))


@pytest.fixture
def athanor(daemon, monkeypatch) -> llm.Model:
    monkeypatch.setenv("ATHANOR_SOCKET", str(daemon))
    return llm.get_model("athanor")


def cli_env(socket_path: Path, user_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATHANOR_", "LLM_"))}
    return {**env, "ATHANOR_SOCKET": str(socket_path), "LLM_USER_PATH": str(user_dir)}


# --- the real daemon ---------------------------------------------------------------------------------------

def test_llm_finds_the_model_through_the_entry_point(athanor):
    assert isinstance(athanor, Athanor) and athanor.can_stream
    assert "athanor" in [model.model_id for model in llm.get_models()]


def test_a_plain_prompt_gets_the_students_answer_and_its_provenance(athanor):
    response = athanor.prompt(QUESTION, stream=False, temperature=0, max_tokens=16)
    assert response.text().strip()
    provenance = response.response_json
    assert provenance["route"] == "student"
    # No teacher in the test daemon: an unsure student's answer is served, marked degraded with the reason.
    assert provenance["degraded"] is ("degraded_reason" in provenance)
    assert 0 < provenance["confidence"] <= 1 and provenance["finish_reason"] in ("stop", "length")
    assert provenance["model"] == "smollm2-135m-instruct"
    assert response.input_tokens > 5 and 0 < response.output_tokens <= 16


def test_streaming_yields_the_answer_piece_by_piece(athanor):
    plain = athanor.prompt(QUESTION, stream=False, temperature=0, max_tokens=16).text()
    response = athanor.prompt(QUESTION, temperature=0, max_tokens=16)
    chunks = list(response)
    assert len(chunks) > 3
    assert "".join(chunks) == response.text() == plain
    assert response.response_json["route"] == "student" and "confidence" in response.response_json
    assert 0 < response.output_tokens <= 16


def test_a_conversation_sends_the_earlier_turns(athanor):
    conversation = athanor.conversation()
    first = conversation.prompt("My name is Ada.", temperature=0, max_tokens=8)
    first.text()
    second = conversation.prompt("What is my name?", temperature=0, max_tokens=8)
    second.text()
    alone = athanor.prompt("What is my name?", temperature=0, max_tokens=8)
    alone.text()
    # The daemon's own count of the prompt: the first question and its answer ride along.
    assert second.input_tokens > alone.input_tokens + first.output_tokens


def test_the_daemons_refusal_is_a_model_error(athanor):
    with pytest.raises(llm.ModelError, match=r"refused the request \(404\).*no-such-student"):
        athanor.prompt("Hi", model="no-such-student", max_tokens=4).text()


def test_the_llm_cli_answers_and_logs_the_route(daemon, tmp_path):
    env = cli_env(daemon, tmp_path / "cli")
    done = subprocess.run([str(LLM_CLI), "-m", "athanor", "-o", "max_tokens", "8", "Say hi"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    logs = subprocess.run([str(LLM_CLI), "logs", "-n", "1", "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert logs.returncode == 0, logs.stderr
    [logged] = json.loads(logs.stdout)
    assert logged["response_json"]["route"] == "student"
    assert logged["input_tokens"] > 0 and 0 < logged["output_tokens"] <= 8


# --- no daemon ---------------------------------------------------------------------------------------------

def test_no_daemon_says_how_to_start_one(tmp_path, monkeypatch):
    missing = tmp_path / "none.sock"
    monkeypatch.setenv("ATHANOR_SOCKET", str(missing))
    with pytest.raises(llm.ModelError, match="athanor serve") as raised:
        llm.get_model("athanor").prompt("Hi").text()
    assert str(missing) in str(raised.value) and "systemctl start athanor.socket" in str(raised.value)


def test_without_ATHANOR_SOCKET_the_configs_socket_is_tried(tmp_path):
    # conftest points ATHANOR_HOME at tmp_path/home, whose config puts the socket in home/run.
    with pytest.raises(llm.ModelError, match="athanor serve") as raised:
        llm.get_model("athanor").prompt("Hi", stream=False).text()
    assert str(tmp_path / "home" / "run" / "athanor.sock") in str(raised.value)


def test_a_stale_socket_is_named_as_such(tmp_path, monkeypatch):
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as bound:  # bound, never listening: what a crashed daemon leaves
        bound.bind(str(stale))
        monkeypatch.setenv("ATHANOR_SOCKET", str(stale))
        with pytest.raises(llm.ModelError, match="stale socket.*athanor serve"):
            llm.get_model("athanor").prompt("Hi").text()


# --- a recording stand-in for the daemon -------------------------------------------------------------------

PROVENANCE = {"route": "teacher", "confidence": 0.41, "cache_similarity": None, "degraded": True,
              "degraded_reason": "teacher over budget"}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"  # a Unix socket's peer has no host for the default to print

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append(request)  # type: ignore[attr-defined]
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fake-student"}
        if request["stream"]:
            body = "".join([
                ": keep-alive\n\n",
                _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "route": "teacher"}),
                *(_sse({**head, "choices": [{"index": 0, "delta": {"content": piece}}], "route": "teacher"})
                  for piece in ("Hel", "lo", " there")),
                ": keep-alive\n\n",
                # No space after the colon is as valid as one.
                "data:" + json.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **PROVENANCE}) + "\n\n",
                _sse({**head, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                      **PROVENANCE}),
                _sse("[DONE]"),
                _sse({**head, "choices": [{"index": 0, "delta": {"content": "AFTER DONE"}}]}),
            ]).encode()
            content_type = "text/event-stream"
        else:
            body = json.dumps({
                "id": "chatcmpl-2", "object": "chat.completion", "created": 1, "model": "fake-student",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {len(self.server.requests)}"},  # type: ignore[attr-defined]
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}, **PROVENANCE,
            }).encode()
            content_type = "application/json"
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Recorder(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        super().__init__(path, _Handler)
        self.requests: list[dict] = []


@pytest.fixture
def recorder(monkeypatch):
    folder = tempfile.mkdtemp(prefix="athanor-llm-")  # short: a socket's path holds at most 107 bytes
    server = _Recorder(os.path.join(folder, "fake.sock"))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("ATHANOR_SOCKET", server.server_address)
    yield server
    server.shutdown()
    server.server_close()
    shutil.rmtree(folder, ignore_errors=True)


def test_the_request_carries_history_system_prompt_and_options(recorder):
    conversation = llm.get_model("athanor").conversation()
    assert conversation.prompt("one", system="Be brief.", stream=False).text() == "answer 1"
    conversation.prompt("two", stream=False, temperature=0.5, seed=7, top_p=0.9, max_tokens=5, model="fake").text()
    first, second = recorder.requests
    assert first == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}],
                     "stream": False}
    assert second == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"},
                     {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "two"}],
        "stream": False, "temperature": 0.5, "seed": 7, "top_p": 0.9, "max_tokens": 5, "model": "fake",
    }


def test_a_new_system_prompt_mid_conversation_still_reaches_the_model(recorder):
    conversation = llm.get_model("athanor").conversation()
    conversation.prompt("one", system="Be brief.", stream=False).text()
    conversation.prompt("two", system="Answer in French.", stream=False).text()
    assert recorder.requests[1]["messages"][-2:] == [{"role": "system", "content": "Answer in French."},
                                                     {"role": "user", "content": "two"}]


def test_the_stream_skips_comments_and_stops_at_done(recorder):
    response = llm.get_model("athanor").prompt("Hi")
    assert list(response) == ["Hel", "lo", " there"]
    assert recorder.requests[0]["stream_options"] == {"include_usage": True}
    assert response.response_json == {"id": "chatcmpl-1", "model": "fake-student", "finish_reason": "stop", **PROVENANCE}
    assert (response.input_tokens, response.output_tokens) == (11, 3)


def test_the_socket_option_beats_the_environment(recorder, monkeypatch):
    monkeypatch.setenv("ATHANOR_SOCKET", "/nonexistent/athanor.sock")
    answer = llm.get_model("athanor").prompt("Hi", stream=False, socket=recorder.server_address)
    assert answer.text() == "answer 1"


def test_llm_c_continues_from_llms_log(recorder, tmp_path):
    # `llm -c` reads the earlier turns back from its log: they are in prompt.messages, not conversation.responses.
    env = cli_env(Path(recorder.server_address), tmp_path / "cli")
    for args in (["-m", "athanor", "--no-stream", "one"], ["-c", "--no-stream", "two"]):
        done = subprocess.run([str(LLM_CLI), *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert recorder.requests[1]["messages"] == [{"role": "user", "content": "one"},
                                                {"role": "assistant", "content": "answer 1"},
                                                {"role": "user", "content": "two"}]
