"""Access: who may reach the socket, whose cache answers whom, and where the teacher's key must never show.

Acting as another user needs root (tests and CI run as root): a forked child drops to another
uid/gid and talks to the real socket with the standard library. Every place the daemon lets text
out (its log, its state files, every HTTP answer, `athanor config` and `athanor doctor`) is
collected by a `Witness` and searched for the key, for its first 8 characters and for a piece
of its middle.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import itertools
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.config import TeacherConfig, load_config
from appliance.errors import AthanorError, ConfigError
from appliance.server.daemon import bind_socket
from appliance.teacher import make_teacher
from appliance.teacher.base import TeacherError, TeacherParams
from appliance.teacher.keys import redact

from .conftest import ROOT, shared_models_dir, stop_daemon, wait_for_socket
from .fakes import Fault, FakeGemini, FakeOpenAI

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")

NOBODY = 65534
MEMBER_UID = 4242  # a uid no account has: a cache namespace of its own
GEMINI_KEY = f"sk-SECRET-{secrets.token_hex(16)}"  # new on every run, so no leftover can pass for a leak
_questions = itertools.count()


def question(topic: str) -> list[dict[str, str]]:
    """A question no other test asked (the cache would answer a repeat)."""
    return [{"role": "user", "content": f"Question {next(_questions)}: tell me about {topic}."}]


# --- the key, and where it must not be ---------------------------------------------------------

def key_forms(key: str) -> set[str]:
    """What of `key` must never show: all of it, its first 8 characters, a piece of its middle, URL-escaped."""
    return {key, key[:8], key[10:22], quote(key, safe="")}


class Witness:
    """Everything let out, by where it was seen, to be searched for the key at the end."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def saw(self, where: str, text: str) -> None:
        self.seen.append((where, text))

    def response(self, response: httpx.Response) -> httpx.Response:
        where = f"{response.request.method} {response.request.url.path} -> {response.status_code}"
        self.saw(where, f"{response.status_code} {response.reason_phrase}\n{response.headers.multi_items()}\n"
                        f"{response.text}")
        return response

    def files(self, home: Path) -> None:
        for path in sorted(home.rglob("*")):
            if path.is_file():
                self.saw(str(path), path.read_bytes().decode("latin-1"))

    def command(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        self.saw(f"athanor {' '.join(args)}", done.stdout + done.stderr)
        return done

    def assert_clean(self, key: str) -> int:
        """No form of `key` anywhere seen; returns how many places were searched."""
        for where, text in self.seen:
            found = sorted(form for form in key_forms(key) if form in text)
            assert not found, f"the key shows in {where}: {found}"
        return len(self.seen)


# --- a daemon whose home other users can reach --------------------------------------------------

@dataclass
class Daemon:
    home: Path
    socket: Path
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def client(self, namespace: str | None = None) -> httpx.Client:
        headers = {"x-athanor-namespace": namespace} if namespace else {}
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://a", timeout=120,
                            headers=headers)

    def ask(self, messages: list[dict[str, str]], namespace: str | None = None, witness: Witness | None = None,
            **params: Any) -> dict:
        with self.client(namespace) as c:
            response = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 24, "temperature": 0,
                                                            **params})
        if witness is not None:
            witness.response(response)
        assert response.status_code == 200, response.text
        return response.json()


@contextlib.contextmanager
def reachable_home() -> Iterator[Path]:
    """A home under /tmp that other users may search (pytest's tmp_path is 0700 root's)."""
    top = Path(tempfile.mkdtemp(prefix="athanor-access-"))
    try:
        top.chmod(0o755)
        (top / "home").mkdir(mode=0o755)
        yield top / "home"
    finally:
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def running(home: Path, env: dict[str, str]) -> Iterator[Daemon]:
    """`athanor serve --verbose` on `home`, its stdout and stderr in a file beside it (read at any time)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATHANOR_")}
    full_env.update({"ATHANOR_HOME": str(home), "ATHANOR_MODELS_DIR": str(shared_models_dir()), **env})
    log = home.parent / "daemon.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--verbose"], cwd=ROOT,
                                   env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        socket_path = home / "run" / "athanor.sock"
        try:
            wait_for_socket(socket_path, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{log.read_text()}") from None
        yield Daemon(home, socket_path, process, log, full_env)
    finally:
        stop_daemon(process)


def teacher_env(provider: str, fake: FakeGemini | FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        "ATHANOR_TEACHER__PROVIDER": provider,
        "ATHANOR_TEACHER__MODEL": "gemini-2.5-flash" if provider == "gemini" else "gpt-4o-mini",
        "ATHANOR_TEACHER__BASE_URL": fake.base_url,
        "ATHANOR_TEACHER__TIMEOUT_S": "1",
        "ATHANOR_TEACHER__MAX_RETRIES": "1",
        "ATHANOR_ROUTING__CONFIDENCE_THRESHOLD": "1.0",  # every miss goes to the teacher
        "ATHANOR_ROUTING__ROUTER": "off",
        **extra,
    }


def echo_message(url: str, key: str) -> str:
    """What a proxy repeating the request might say: the URL with `?key=`, the headers, a key cut short."""
    return (f"upstream refused POST {url}/v1beta/models/x:generateContent?key={quote(key, safe='')}&alt=json "
            f"with headers {{'x-goog-api-key': '{key}'}} (key {key[:-5]}...)")


class EchoingGemini(FakeGemini):
    """Gemini whose `Fault(error_code="echo")` answers with an error repeating the request's key."""

    presented = ""

    def check_auth(self, headers: dict[str, str], query: dict[str, str]):
        self.presented = headers.get("x-goog-api-key") or query.get("key") or ""
        return super().check_auth(headers, query)

    def error_reply(self, status: int, fault: Fault):
        if fault.error_code != "echo":
            return super().error_reply(status, fault)
        return self.error(status, echo_message(self.url, self.presented))


class EchoingOpenAI(FakeOpenAI):
    """OpenAI whose `Fault(error_code="echo")` answers with an error repeating the request's key."""

    presented = ""

    def check_auth(self, headers: dict[str, str], query: dict[str, str]):
        self.presented = headers.get("authorization", "").partition(" ")[2].strip()
        return super().check_auth(headers, query)

    def error_reply(self, status: int, fault: Fault):
        if fault.error_code != "echo":
            return super().error_reply(status, fault)
        return self.error(status, echo_message(self.url, self.presented), "invalid_request_error")


# --- acting as another user ---------------------------------------------------------------------

def as_user(uid: int, gid: int, groups: list[int], work: Callable[..., Any], *args: Any) -> dict:
    """`work(*args)` in a forked child that has become uid/gid with `groups`: {"result": ...}, or the
    OSError it met as {"errno": ...}."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only the standard library from here, and never back into pytest
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                outcome: dict = {"result": work(*args)}
            except OSError as exc:
                outcome = {"errno": exc.errno}
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                outcome = {"crash": repr(exc)}
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    outcome = json.loads(data)
    assert "crash" not in outcome, outcome["crash"]
    return outcome


def connect(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
    return "connected"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def request(path: str, method: str, target: str, body: dict | None = None, headers: dict | None = None) -> dict:
    connection = _UnixConnection(path)
    try:
        connection.request(method, target, body=json.dumps(body) if body is not None else None,
                           headers={"content-type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return {"status": response.status, "body": response.read().decode()}
    finally:
        connection.close()


def member(daemon: Daemon) -> tuple[int, int, list[int]]:
    """A user who is in the socket's group (as `usermod -aG athanor` makes one) and nothing more."""
    return MEMBER_UID, NOBODY, [daemon.socket.stat().st_gid]


def ask_as(who: tuple[int, int, list[int]], daemon: Daemon, messages: list[dict[str, str]],
           namespace: str | None = None) -> dict:
    headers = {"x-athanor-namespace": namespace} if namespace else {}
    body = {"messages": messages, "max_tokens": 24, "temperature": 0}
    outcome = as_user(*who, request, str(daemon.socket), "POST", "/v1/chat/completions", body, headers)
    return outcome["result"]


def route_of(answer: dict) -> str:
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])["route"]


# --- the socket's folder (no daemon) -------------------------------------------------------------

@pytest.mark.parametrize("socket_mode, folder_mode", [
    (0o660, 0o750),  # the default: the group searches the folder, others cannot even look
    (0o600, 0o700),  # the owner alone
    (0o666, 0o755),  # whoever asked for a socket open to all gets a folder open to all
])
def test_a_new_socket_folder_is_searchable_by_those_the_socket_admits(tmp_path, socket_mode, folder_mode):
    path = tmp_path / "a" / "run" / "s.sock"
    bind_socket(path, socket_mode).close()
    for folder in (path.parent, path.parent.parent):  # the folders it had to make, each of them
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    assert stat.S_IMODE(path.stat().st_mode) == socket_mode


@as_root
def test_a_socket_folder_another_user_owns_is_refused(tmp_path):
    # Made by someone else before the daemon (a guessed /tmp/athanor-<uid>): they could swap the socket.
    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(AthanorError, match=f"belongs to uid {NOBODY}"):
        bind_socket(folder / "athanor.sock", 0o660)
    assert not (folder / "athanor.sock").exists()


def test_a_socket_folder_everyone_may_write_is_refused_unless_sticky(tmp_path):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    with pytest.raises(AthanorError, match="writable by every user"):
        bind_socket(folder / "athanor.sock", 0o660)
    folder.chmod(0o1777)  # like /tmp: others may not remove or rename what is ours
    bind_socket(folder / "athanor.sock", 0o660).close()


# --- who reaches the daemon, and whose cache answers ---------------------------------------------

@pytest.fixture(scope="module")
def gemini():
    with EchoingGemini(api_key=GEMINI_KEY, answer=lambda prompt: f"Teacher says: {prompt[-40:]}") as fake:
        yield fake


@pytest.fixture(scope="module")
def gemini_daemon(gemini):
    """A daemon asking the Gemini fake about every miss, its key in an environment variable."""
    env = teacher_env("gemini", gemini, ATHANOR_TEACHER__API_KEY_ENV="ATHANOR_TEST_ACCESS_KEY",
                      ATHANOR_TEST_ACCESS_KEY=GEMINI_KEY)
    with reachable_home() as home, running(home, env) as daemon:
        yield daemon


@as_root
@pytest.mark.e2e
def test_users_outside_the_sockets_group_cannot_connect(gemini_daemon):
    path = gemini_daemon.socket
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    outsider = (NOBODY, NOBODY, [])
    assert as_user(*outsider, connect, str(path)) == {"errno": errno.EACCES}
    # The folder aside, the socket's own mode keeps them out too.
    path.parent.chmod(0o755)
    try:
        assert as_user(*outsider, connect, str(path)) == {"errno": errno.EACCES}
    finally:
        path.parent.chmod(0o750)
    # While a member of the group is let in.
    assert as_user(*member(gemini_daemon), connect, str(path)) == {"result": "connected"}


@as_root
@pytest.mark.e2e
def test_a_member_of_the_group_is_served_from_a_cache_of_its_own(gemini_daemon):
    daemon, them = gemini_daemon, member(gemini_daemon)
    mine, theirs = question("root's secrets"), question("the member's secrets")
    assert daemon.ask(mine)["route"] == "teacher"
    assert daemon.ask(mine)["route"] == "cache"
    # Root's cached answer is not served to the member, who gets (and then keeps) one of its own...
    assert route_of(ask_as(them, daemon, mine)) == "teacher"
    assert route_of(ask_as(them, daemon, mine)) == "cache"
    # ...and the member's is not served to root.
    assert route_of(ask_as(them, daemon, theirs)) == "teacher"
    assert daemon.ask(theirs)["route"] == "teacher"
    with daemon.client() as c:
        namespaces = c.get("/v1/stats").json()["cache"]["namespaces"]
    assert {"0", str(MEMBER_UID)} <= set(namespaces)
    # Serving it is all a member may do: reloading is for the daemon's own user and root.
    reload = as_user(*them, request, str(daemon.socket), "POST", "/v1/admin/reload")["result"]
    assert reload["status"] == 403


@as_root
@pytest.mark.e2e
def test_the_namespace_header_only_narrows_the_callers_own_namespace(gemini_daemon):
    daemon, them = gemini_daemon, member(gemini_daemon)
    theirs, mine = question("the member's plans"), question("root's plans")
    assert route_of(ask_as(them, daemon, theirs)) == "teacher"
    assert route_of(ask_as(them, daemon, theirs)) == "cache"
    # Root naming the member's uid gets a sub-namespace of its own ("0/4242"), not the member's answers.
    assert daemon.ask(theirs, namespace=str(MEMBER_UID))["route"] == "teacher"
    assert daemon.ask(mine)["route"] == "teacher"
    # Nor can the member name root's ("4242/0" is the member's own), or climb out of its own.
    assert route_of(ask_as(them, daemon, mine, namespace="0")) == "teacher"
    for bad in ("../0", "0/x", "/0", "x" * 65):
        assert ask_as(them, daemon, mine, namespace=bad)["status"] == 400, bad


@pytest.mark.e2e
def test_state_files_are_readable_by_the_daemons_user_alone(gemini_daemon):
    # They hold every caller's questions and answers; the socket's group is for asking, not reading.
    daemon = gemini_daemon
    daemon.ask(question("file modes"))
    state = daemon.home / "state"
    files = list(state.rglob("*"))
    assert any(p.name == "distill.jsonl" for p in files) and any(p.suffix == ".sqlite3" for p in files)
    for path in [state, *files]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is {stat.S_IMODE(path.stat().st_mode):04o}"


# --- the key never shows ---------------------------------------------------------------------------

# Each: what the teacher does, as faults queued on the fake (max_retries is 1: a retried fault twice).
FAILURES = [
    ("401", [Fault(status=401)]),
    ("403, the key missing", [Fault(status=403)]),
    ("400 API_KEY_INVALID, Gemini's wrong key", [Fault(status=400, error_code="API_KEY_INVALID")]),
    ("400 repeating the key", [Fault(status=400, error_code="echo")]),
    ("503 repeating the key, retried", [Fault(status=503, error_code="echo")] * 2),
    ("500, retried", [Fault(status=500)] * 2),
    ("timeouts", [Fault(delay=2.0)] * 2),
    ("a body that is not JSON", [Fault(garbage="json")]),
    ("an answer without one", [Fault(garbage="empty")]),
    ("a refusal", [Fault(garbage="blocked")]),
]


def drive_failures(daemon: Daemon, fake: FakeGemini | FakeOpenAI, witness: Witness) -> None:
    """An answer, every failure in FAILURES, a wrong key for real, and a failure while streaming."""
    assert daemon.ask(question("a good day"), witness=witness)["route"] == "teacher"
    for name, faults in FAILURES:
        fake.faults.clear()
        fake.fail(*faults)
        answer = daemon.ask(question(name), witness=witness)
        assert answer["route"] == "student" and answer["degraded"], name
    fake.faults.clear()
    right, fake.api_key = fake.api_key, "someone-else-entirely"  # the provider's own wrong-key answer
    try:
        assert daemon.ask(question("a wrong key"), witness=witness)["degraded"]
    finally:
        fake.api_key = right
    fake.fail(*[Fault(status=503, error_code="echo")] * 2)
    with daemon.client() as c:
        witness.response(c.post("/v1/chat/completions", json={"messages": question("streams"), "max_tokens": 16,
                                                             "stream": True}))
    fake.faults.clear()


def visit_endpoints(daemon: Daemon, witness: Witness) -> dict:
    """Every endpoint and some error answers; returns /v1/stats."""
    with daemon.client() as c:
        stats = witness.response(c.get("/v1/stats")).json()
        for method, target, body in [
            ("GET", "/v1/models", None), ("GET", "/healthz", None),
            ("GET", "/v1/nothing", None),  # 404
            ("GET", "/v1/chat/completions", None),  # 405
            ("POST", "/v1/chat/completions", b"{not json"),  # 400
            ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}'),  # 400/422
        ]:
            witness.response(c.request(method, target, content=body))
    return stats


@pytest.mark.e2e
def test_a_key_from_the_environment_never_shows(gemini_daemon, gemini):
    daemon, witness = gemini_daemon, Witness()
    drive_failures(daemon, gemini, witness)
    stats = visit_endpoints(daemon, witness)
    assert stats["degraded"] >= len(FAILURES)  # the failures really happened
    assert witness.command(["config"], daemon.env).returncode == 0
    witness.command(["doctor"], daemon.env)
    witness.files(daemon.home)
    log = daemon.log.read_text()
    assert "teacher failed" in log and "upstream refused" in log  # the echoes reached the log, scrubbed
    witness.saw("the daemon's stdout and stderr", log)
    assert witness.assert_clean(GEMINI_KEY) >= 25


@pytest.mark.e2e
def test_a_key_from_a_file_never_shows_even_past_the_budget():
    key = f"sk-SECRET-{secrets.token_hex(16)}"
    witness = Witness()
    with EchoingOpenAI(api_key=key) as fake, reachable_home() as home:
        key_file = home.parent / "teacher.key"  # beside the home: every file in it is searched
        key_file.write_text(f"{key}\n")
        key_file.chmod(0o600)
        # A teacher answer costs about 0.035 USD at this price (0.07 reserved first): the budget lasts a few.
        env = teacher_env("openai", fake, ATHANOR_TEACHER__API_KEY_FILE=str(key_file),
                          ATHANOR_TEACHER__PRICE_INPUT_PER_MTOK="2000", ATHANOR_TEACHER__PRICE_OUTPUT_PER_MTOK="2000",
                          ATHANOR_TEACHER__DAILY_BUDGET_USD="0.12")
        with running(home, env) as daemon:
            drive_failures(daemon, fake, witness)
            for _ in range(20):
                answer = daemon.ask(question("spending"), witness=witness)
                if "budget" in answer.get("degraded_reason", "").lower():
                    break
            else:
                pytest.fail("the budget was never exhausted")
            visit_endpoints(daemon, witness)
            assert witness.command(["config"], daemon.env).returncode == 0
            witness.command(["doctor"], daemon.env)
        witness.files(home)
        log = daemon.log.read_text()  # now with what it said while shutting down
        assert "teacher failed" in log
        witness.saw("the daemon's stdout and stderr", log)
        assert witness.assert_clean(key) >= 25


# --- exception messages, the config and its dump (no daemon) -------------------------------------

UNIT_KEY = "sk-SECRET-5e1f/0a9c+77d="  # "/", "+" and "=" change when URL-escaped

# Each: text a provider, a proxy or an HTTP library might produce, and what must be left of it.
REDACTIONS = [
    # The key itself, anywhere.
    (f"bad key {UNIT_KEY}!", "bad key ***!"),
    # URL-escaped, as in an echoed URL.
    (f"for url '/v1?x={quote(UNIT_KEY, safe='')}'", "for url '/v1?x=***'"),
    # Cut short (messages are cut at 300 characters): 8 leading characters are already too many.
    (f"the key {UNIT_KEY[:12]}", "the key ***"),
    # ...but 7 say nothing.
    (f"the prefix {UNIT_KEY[:7]}", f"the prefix {UNIT_KEY[:7]}"),
    # Gemini's REST form carries a key in the query, whoever's it is.
    ("POST https://g.example/v1beta/m:generateContent?key=AIzaOther&alt=sse",
     "POST https://g.example/v1beta/m:generateContent?key=***&alt=sse"),
    ("GET /x?a=1&api_key=abc123", "GET /x?a=1&api_key=***"),
    # Headers: as text, as a Python dict's repr, as JSON.
    ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
    ("{'x-goog-api-key': 'AIzaOther'}", "{'x-goog-api-key': '***'}"),
    ('{"authorization": "Bearer zzz", "n": 1}', '{"authorization": "Bearer ***", "n": 1}'),
    # A password in a proxy's URL.
    ("https://user:hunter22@proxy.example/v1", "https://user:***@proxy.example/v1"),
    # Look-alikes stay: a word ending in "key", a parameter named *_key, a URL without a password.
    ("monkey=3 cache_key=4 keyboard https://proxy.example:8080/v1", "monkey=3 cache_key=4 keyboard "
                                                                    "https://proxy.example:8080/v1"),
]


@pytest.mark.parametrize("text, expected", REDACTIONS)
def test_redact(text, expected):
    assert redact(text, UNIT_KEY) == expected


def test_an_httpx_error_that_echoes_the_url_is_scrubbed():
    url = f"https://generativelanguage.googleapis.com/v1beta/models/m:generateContent?key={quote(UNIT_KEY, safe='')}"
    with pytest.raises(httpx.HTTPStatusError) as caught:
        httpx.Response(400, request=httpx.Request("POST", url)).raise_for_status()
    for text in (str(caught.value), repr(caught.value.request)):
        assert quote(UNIT_KEY, safe="") in text  # the library does repeat it...
        assert not {f for f in key_forms(UNIT_KEY) if f in redact(text, UNIT_KEY)}  # ...and we do not


def _teacher(provider: str, base_url: str, monkeypatch, tmp_path):
    monkeypatch.setenv("T_ACCESS_KEY", UNIT_KEY)
    cfg = TeacherConfig(provider=provider, model="gemini-2.5-flash" if provider == "gemini" else "gpt-4o-mini",
                        base_url=base_url, api_key_env="T_ACCESS_KEY", timeout_s=2, max_retries=0)
    return make_teacher(cfg, tmp_path)


async def _complete(teacher) -> TeacherError:
    try:
        with pytest.raises(TeacherError) as caught:
            await teacher.complete(question("keys"), TeacherParams(max_tokens=8))
        return caught.value
    finally:
        await teacher.aclose()


@pytest.mark.parametrize("provider, fake_class", [("gemini", EchoingGemini), ("openai", EchoingOpenAI)])
@pytest.mark.parametrize("fault", [Fault(status=400, error_code="echo"), Fault(status=503, error_code="echo")])
def test_a_provider_error_repeating_the_key_is_scrubbed(provider, fake_class, fault, monkeypatch, tmp_path):
    with fake_class(api_key=UNIT_KEY) as fake:
        fake.fail(fault)
        error = asyncio.run(_complete(_teacher(provider, fake.base_url, monkeypatch, tmp_path)))
    assert "upstream refused" in str(error)  # the provider's message is kept...
    assert not {f for f in key_forms(UNIT_KEY) if f in str(error)}  # ...without the key


@pytest.mark.parametrize("provider", ["gemini", "openai"])
@pytest.mark.parametrize("base_url", [
    f"htp://user:{UNIT_KEY}@proxy.example/v1",  # a scheme no client speaks
    f"http://user:{quote(UNIT_KEY, safe='')}@127.0.0.1:1/v1?key={UNIT_KEY}",  # nothing listens there
])
def test_a_teacher_url_carrying_a_key_is_not_repeated(provider, base_url, monkeypatch, tmp_path):
    teacher = _teacher(provider, base_url, monkeypatch, tmp_path)
    shown = repr(teacher)
    error = asyncio.run(_complete(teacher))
    for text in (shown, str(error)):
        assert not {f for f in key_forms(UNIT_KEY) if f in text}, text


def test_a_key_put_where_its_variables_name_goes_is_refused_and_not_repeated(tmp_path, monkeypatch):
    # The usual slip: the key itself in api_key_env, where every "no key in $..." message would repeat it.
    for key in (UNIT_KEY, "AIzaSyA1b2C3d4E5f6G7h8I9j0KLmnOPqrSTuv"):
        with pytest.raises(ConfigError) as caught:
            load_config(environ={"ATHANOR_TEACHER__API_KEY_ENV": key})
        assert caught.value.setting == "[teacher].api_key_env"
        assert not {f for f in key_forms(key) if f in str(caught.value)}
    config = tmp_path / "athanor.toml"
    config.write_text(f'[teacher]\nprovider = "gemini"\napi_key_env = "{UNIT_KEY}"\n')
    monkeypatch.setenv("ATHANOR_CONFIG", str(config))
    for command in (["config"], ["doctor"]):
        result = CliRunner().invoke(main, command)
        assert "api_key_env" in result.output, result.output
        assert not {f for f in key_forms(UNIT_KEY) if f in result.output}, command
    # A variable's name is still fine.
    named = load_config(environ={"ATHANOR_TEACHER__API_KEY_ENV": "MY_TEACHER_KEY"})
    assert named.teacher.api_key_env == "MY_TEACHER_KEY"


def test_the_config_dump_hides_a_key_in_the_teachers_url(monkeypatch):
    escaped = quote(UNIT_KEY, safe="")  # as a URL must carry it
    monkeypatch.setenv("ATHANOR_TEACHER__BASE_URL", f"https://me:{escaped}@proxy.example/v1?key={escaped}")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["teacher"]["base_url"] == \
        "https://me:***@proxy.example/v1?key=***"


@as_root
@pytest.mark.e2e
def test_one_users_connection_flood_leaves_room_for_another(gemini_daemon):
    """Root holds every connection one user may open ([server].max_connections_per_user, 128 by default);
    its next one gets the 503, while a member of the group is still served."""
    path = str(gemini_daemon.socket)
    held = []
    try:
        for _ in range(128):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head begun, never finished
            held.append(sock)
        refused = request(path, "GET", "/healthz")
        assert refused["status"] == 503, refused
        assert "max_connections_per_user" in json.loads(refused["body"])["error"]["message"]
        answer = as_user(*member(gemini_daemon), request, path, "GET", "/healthz")["result"]
        assert answer["status"] == 200, answer
    finally:
        for sock in held:
            sock.close()
