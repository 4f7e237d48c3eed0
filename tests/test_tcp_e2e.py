"""The optional TCP listener: the official SDK with a key, 401 without one, no admin over TCP, the same limits."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from appliance.server.api_keys import add_key
from tests.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tcp(tmp_path_factory):
    home = tmp_path_factory.mktemp("tcp-home")
    port = _free_port()
    home.mkdir(exist_ok=True)
    key = add_key(home / "api-keys", "webui")
    (home / "athanor.toml").write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\ncors_origins = ["http://webui.local:3000"]\nmax_body_bytes = 4096\n'
        '[cache]\nenabled = false\n')
    process, _ = start_daemon(home)
    yield f"http://127.0.0.1:{port}", key
    stop_daemon(process)


def test_the_official_sdk_works_over_tcp_with_a_key(tcp):
    base, key = tcp
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    answer = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=6, temperature=0,
                                            messages=[{"role": "user", "content": "Say hello."}])
    assert answer.choices[0].message.content and answer.model_extra["route"] == "student"
    streamed = list(client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=6, temperature=0,
                                                   messages=[{"role": "user", "content": "Say hello."}],
                                                   stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer.choices[0].message.content
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="athk-wrong", max_retries=0).models.list()


def test_without_a_key_nothing_is_served_and_admin_is_never_reachable(tcp):
    base, key = tcp
    with httpx.Client(base_url=base, timeout=60) as http:
        for method, path in (("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/v1/models")):
            assert http.request(method, path).status_code == 401
        # A key is not the daemon's uid: admin stays on the socket.
        reload = http.post("/v1/admin/reload", headers={"authorization": f"Bearer {key}"})
        assert reload.status_code == 403
        # The socket's limits hold over TCP too.
        big = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, content=b"x" * 8192)
        assert big.status_code == 413
        bad = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
        preflight = http.options("/v1/chat/completions", headers={"origin": "http://webui.local:3000",
                                                                    "access-control-request-method": "POST"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://webui.local:3000"


def test_the_sdk_checks_of_the_socket_hold_over_tcp(tcp):
    """JSON mode, a schema, tools, text completions, embeddings and a seed, as an Open WebUI-style client
    configured with nothing but a base URL and a key would use them."""
    import json

    base, key = tcp
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
    model = "smollm2-135m-instruct"
    schema = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]}},
              "required": ["sentiment"], "additionalProperties": False}
    held = client.chat.completions.create(
        model=model, max_tokens=24, temperature=0, messages=[{"role": "user", "content": "Review: lovely stay."}],
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    assert json.loads(held.choices[0].message.content)["sentiment"] in ("positive", "negative")
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "maxLength": 20}}, "required": ["zone"]}}}
    called = client.chat.completions.create(model=model, max_tokens=30, temperature=0, tools=[tool],
                                            tool_choice="required",
                                            messages=[{"role": "user", "content": "What time is it in Tokyo?"}])
    assert called.choices[0].message.tool_calls[0].function.name == "get_time"
    text = client.completions.create(model=model, prompt="One, two, three,", max_tokens=4, temperature=0)
    assert text.choices[0].text and text.object == "text_completion"
    vectors = client.embeddings.create(model="use-multilingual-v3", input=["你好", "hello"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 512
    seeded = {client.chat.completions.create(model=model, max_tokens=12, temperature=1.0, seed=5,
                                             messages=[{"role": "user", "content": "Name a fruit, TCP seed test."}]
                                             ).choices[0].message.content for _ in range(2)}
    assert len(seeded) == 1


@pytest.fixture(scope="module")
def tcp_with_teacher(tmp_path_factory):
    """The TCP listener with a (fake) Gemini teacher that answers every question: the student is never sure."""
    from tests.conftest import gemini_env
    from tests.fakes import FakeGemini

    home = tmp_path_factory.mktemp("tcp-teacher")
    port = _free_port()
    keys = {"tight": add_key(home / "api-keys", "tight", daily_usd=0.0),
            "roomy": add_key(home / "api-keys", "roomy", daily_usd=1.0),
            "open": add_key(home / "api-keys", "open")}
    (home / "athanor.toml").write_text(f'[server]\nlisten = "127.0.0.1:{port}"\n[cache]\nenabled = false\n')
    with FakeGemini(api_key="fake-key", answer=lambda prompt: "Teacher says hello.") as fake:
        process, socket_path = start_daemon(home, env=gemini_env(fake, ATHANOR_ROUTING__ROUTER="off",
                                                                 ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0"))
        yield f"http://127.0.0.1:{port}", keys, home, fake
        stop_daemon(process)


def _ask_tcp(base: str, key: str, question: str) -> dict:
    with httpx.Client(base_url=base, timeout=120) as http:
        reply = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"messages": [{"role": "user", "content": question}], "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_each_key_keeps_to_its_own_daily_teacher_budget(tcp_with_teacher):
    import json

    from click.testing import CliRunner

    from appliance.cli import main
    from appliance.server.api_keys import set_budget

    base, keys, home, fake = tcp_with_teacher
    asked = len(fake.requests)
    # A key with no teacher budget left: the teacher is not asked; the student answers, flagged.
    tight = _ask_tcp(base, keys["tight"], "Why is the sky blue?")
    assert tight["route"] == "student" and tight["degraded"] is True
    assert "API key 'tight'" in tight["degraded_reason"] and "athanor keys budget tight" in tight["degraded_reason"]
    assert len(fake.requests) == asked
    # Keys with room, or with no budget of their own, reach the teacher.
    for name in ("roomy", "open"):
        answer = _ask_tcp(base, keys[name], f"Why is the sea salty, {name}?")
        assert answer["route"] == "teacher" and answer["cost_usd"] > 0
    assert len(fake.requests) == asked + 2
    # What each key spent is kept per UTC day, in the state folder, and `keys list` reports it.
    env = {"ATHANOR_HOME": str(home)}
    listed = CliRunner().invoke(main, ["--config", str(home / "athanor.toml"), "keys", "list", "--json"], env=env)
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["roomy"]["daily_budget_usd"] == 1.0 and rows["roomy"]["spent_today_usd"] > 0
    assert rows["tight"]["spent_today_usd"] in (None, 0.0) and rows["open"]["daily_budget_usd"] is None
    # A budget raised in the key file holds from the next request, without a restart.
    set_budget(home / "api-keys", "tight", 1.0)
    assert _ask_tcp(base, keys["tight"], "Why is grass green?")["route"] == "teacher"
