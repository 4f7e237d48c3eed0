"""The real daemon on the embedded student, through the socket, with the official openai client and curl."""

import concurrent.futures
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time

import httpx
import openai
import pytest

from appliance.clients.daemon_client import AthanorClient

from .conftest import ROOT, start_daemon, stop_daemon

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(daemon):
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon)), timeout=120)
    client = openai.OpenAI(base_url="http://athanor/v1", api_key="unused", http_client=http, max_retries=0)
    yield client
    http.close()


@pytest.fixture(scope="module")
def raw(daemon):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon)), base_url="http://athanor", timeout=120) as c:
        yield c


def test_socket_is_group_only(daemon):
    assert stat.S_ISSOCK(os.stat(daemon).st_mode)
    assert os.stat(daemon).st_mode & 0o777 == 0o660


def test_chat_completion_with_usage_route_and_logprobs(oai):
    answer = oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=12,
                                         temperature=0, logprobs=True, top_logprobs=2)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert answer.usage.completion_tokens == len(choice.logprobs.content) <= 12
    assert answer.usage.prompt_tokens > 5
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert choice.finish_reason in ("stop", "length")
    assert answer.model_extra["route"] == "student"
    first = choice.logprobs.content[0]
    assert first.logprob < 0 and len(first.top_logprobs) == 2
    assert "".join(t.token for t in choice.logprobs.content).startswith(choice.message.content[:3])


def test_streaming_gives_the_same_text_as_a_plain_answer(oai):
    plain = oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=20,
                                        temperature=0).choices[0].message.content
    chunks = list(oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=20,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # really incremental
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens <= 20
    assert all(c.model_extra["route"] == "student" for c in chunks)


def test_stop_sequences_and_seed(oai):
    base = oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=30,
                                       temperature=0).choices[0].message.content
    word = base.split()[2]
    cut = oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=30,
                                      temperature=0, stop=[word])
    assert cut.choices[0].message.content == base[: base.index(word)]
    assert cut.choices[0].finish_reason == "stop"
    seeded = [oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=15,
                                          temperature=1.0, seed=7).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    # A question never asked before: the first request computes its prompt, the later ones could reuse those
    # KV cells; with a seed they do not, so the first answer is the same as the rest.
    fresh = [{"role": "user", "content": f"Invent a name for a seeded test run {time.time_ns()}."}]
    runs = [oai.chat.completions.create(model="smollm2-135m-instruct", messages=fresh, max_tokens=24,
                                        temperature=1.0, seed=11).choices[0].message.content for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]


def test_models_and_health(oai, raw):
    models = oai.models.list().data
    assert [m.id for m in models] == ["smollm2-135m-instruct"]
    assert models[0].model_extra["athanor"]["size_bytes"] > 50_000_000
    health = raw.get("/healthz").json()
    assert health["status"] == "ok" and health["students"] == ["smollm2-135m-instruct"]


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"model": "gpt-9", "messages": QUESTION}, 404, "model_not_found"),
        ({"messages": []}, 400, "invalid_value"),
        ({"messages": QUESTION, "max_tokens": 999999}, 400, "context_length_exceeded"),
        ({"messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context_length_exceeded"),
        ({"messages": QUESTION, "temperature": "hot"}, 400, "invalid_value"),
    ],
)
def test_bad_requests_get_openai_errors(oai, payload, status, code):
    with pytest.raises(openai.APIStatusError) as raised:
        oai.chat.completions.create(**{"model": "smollm2-135m-instruct", **payload})
    assert raised.value.status_code == status
    assert raised.value.body["code"] == code
    assert raised.value.body["message"]


def test_malformed_json_unknown_path_and_wrong_method(raw):
    bad = raw.post("/v1/chat/completions", content=b'{"messages": [')
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]["message"]
    assert raw.get("/v1/nothing").status_code == 404
    assert raw.get("/v1/chat/completions").status_code == 405
    assert raw.get("/healthz").status_code == 200  # still serving


def test_curl_works_unchanged(daemon):
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    out = subprocess.run(
        ["curl", "-sN", "--unix-socket", str(daemon), "http://localhost/v1/chat/completions",
         "-d", json.dumps({"messages": QUESTION, "max_tokens": 5, "stream": True})],
        capture_output=True, text=True, timeout=60,
    ).stdout
    events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["object"] == "chat.completion.chunk"


def test_clients_at_once_are_batched_and_get_the_answers_they_would_get_alone(daemon, raw):
    questions = [f"Count to {i}, then name a fruit." for i in range(3, 9)]

    def ask(question):
        with AthanorClient(daemon) as client:
            answer = client.chat([{"role": "user", "content": question}], max_tokens=24, temperature=0)
        return answer["choices"][0]["message"]["content"]

    alone = [ask(q) for q in questions]
    before = raw.get("/v1/stats").json()
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        together = list(pool.map(ask, questions))
    assert together == alone
    stats = raw.get("/v1/stats").json()
    batching = stats["students"][0]["batching"]
    assert batching["parallel"] >= 2
    # More than one sequence shared a decode step while the six were being answered.
    assert batching["max_batch"] >= 2
    assert stats["by_route"]["student"] - before["by_route"]["student"] == len(questions)


def test_a_client_leaving_mid_stream_frees_its_slot(daemon, raw):
    payload = json.dumps({"messages": QUESTION, "max_tokens": 1500, "temperature": 1.0, "stream": True,
                          "stop": ["\u2603\u2603"]}).encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon))
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(payload)
                     + payload)
        received = b""
        while received.count(b"data: ") < 3:
            received += sock.recv(4096)
    # 1500 tokens would take ~20 s; once the client is gone the student must be free within a moment.
    deadline = time.monotonic() + 5
    while raw.get("/healthz").json()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert raw.get("/healthz").json()["busy"] == 0
    assert raw.get("/v1/stats").json()["cancelled"] >= 1


def test_ask_and_models_commands(daemon):
    env = {**os.environ, "ATHANOR_SERVER__SOCKET": str(daemon)}
    ask = subprocess.run([sys.executable, "-m", "appliance.cli", "ask", "What is 2+2?", "--max-tokens", "8",
                          "--temperature", "0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ask.returncode == 0, ask.stderr
    assert ask.stdout.strip()
    models = subprocess.run([sys.executable, "-m", "appliance.cli", "models"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "smollm2-135m-instruct" in models.stdout


def test_ask_without_a_daemon_says_how_to_start_one(tmp_path):
    env = {**os.environ, "ATHANOR_SERVER__SOCKET": str(tmp_path / "none.sock")}
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "ask", "hi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "athanor serve" in result.stderr


def test_queue_overflow_is_503_with_retry_after(tmp_path):
    process, path = start_daemon(tmp_path / "small", env={"ATHANOR_SERVER__MAX_QUEUE": "1",
                                                          "ATHANOR_STUDENT__PARALLEL": "1",
                                                          "ATHANOR_CACHE__ENABLED": "false"})
    try:
        def ask(_):
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120) as c:
                return c.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 40, "temperature": 0})

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(ask, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and 503 in codes
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "overloaded"
    finally:
        stop_daemon(process)


def test_sigterm_finishes_the_answer_in_flight(tmp_path):
    process, path = start_daemon(tmp_path / "term", env={"ATHANOR_CACHE__ENABLED": "false"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        def ask():
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120) as c:
                return c.post("/v1/chat/completions",
                              json={"messages": QUESTION, "max_tokens": 60, "temperature": 0,
                                    "stop": ["\u2603\u2603"]})

        future = pool.submit(ask)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=30) as c:
            deadline = time.monotonic() + 30
            while not c.get("/healthz").json()["busy"] and time.monotonic() < deadline:
                time.sleep(0.01)  # terminate only once the answer is really in flight
        process.terminate()
        response = future.result(60)
    assert process.wait(60) == 0
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] > 0
    assert not path.exists()  # the daemon removed its socket


def test_every_answer_reaches_the_ledger_that_athanor_report_reads(daemon):
    from appliance.storage.ledger import LEDGER_FILE, read_rows

    ledger = daemon.parent.parent / "state" / LEDGER_FILE
    started = time.time()
    with AthanorClient(daemon) as client:
        answer = client.chat([{"role": "user", "content": "Name one colour of the sky, ledger test."}],
                             max_tokens=4, temperature=0)
    deadline = time.monotonic() + 10  # the writer commits within a second or so
    while not (rows := list(read_rows(ledger, since=started))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(r.route, r.completion_tokens) for r in rows] == [
        (answer["route"], answer["usage"]["completion_tokens"])]


def test_json_mode_answers_parse_and_a_schema_holds_the_answer(oai):
    ask = [{"role": "user", "content": "Describe Paris as JSON with a name and a country."}]
    loose = oai.chat.completions.create(model="smollm2-135m-instruct", messages=ask, max_tokens=60, temperature=0,
                                        response_format={"type": "json_object"})
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(loose.choices[0].message.content), dict)
    else:  # cut at max_tokens: still JSON as far as it went
        assert loose.choices[0].message.content.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"sentiment": {"enum": ["positive", "negative"]}},
              "required": ["sentiment"], "additionalProperties": False}
    for review in ("The food was wonderful and the staff kind.", "酒店房间很脏，服务也很差。"):
        held = oai.chat.completions.create(
            model="smollm2-135m-instruct", max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": f"Sentiment of this review: {review}"}],
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
        assert held.choices[0].finish_reason == "stop"
        assert json.loads(held.choices[0].message.content)["sentiment"] in ("positive", "negative")


def test_embeddings_come_from_the_caches_encoder_through_the_official_client(oai, raw):
    import numpy as np

    from appliance.cache.embedder import load_embedder

    texts = ["猫可以吃巧克力吗？", "Can cats eat chocolate?", "How do I delete a git branch?"]
    # The SDK asks for base64 by default and decodes it; plain floats are the other format.
    packed = oai.embeddings.create(model="use-multilingual-v3", input=texts)
    floats = raw.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"}).json()
    assert packed.model == "use-multilingual-v3" and packed.usage.prompt_tokens > len(texts)
    a = np.array([d.embedding for d in packed.data])
    b = np.array([d["embedding"] for d in floats["data"]])
    assert a.shape == (3, 512) and np.allclose(a, b, atol=1e-6)
    assert np.allclose(a, load_embedder().embed(texts), atol=1e-5)  # the cache's own vectors
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2  # the same question across languages, nearer than another one
    for payload, param in (({"input": []}, "input"), ({"input": [1, 2, 3]}, "input"),
                           ({"input": "hi", "dimensions": 256}, "dimensions"), ({"input": "hi", "model": "ada"}, "model"),
                           ({"input": "x" * 9000}, "input"), ({"input": "hi", "extra": 1}, "extra")):
        response = raw.post("/v1/embeddings", json=payload)
        assert response.status_code in (400, 404) and response.json()["error"]["param"] == param, payload


def test_metrics_in_prometheus_format_count_answers_and_show_queues(oai, raw):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        response = raw.get("/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.text) for s in family.samples}

    before = scrape()
    list(oai.chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, max_tokens=4, temperature=0,
                                     stream=True))
    after = scrape()
    answers = ("athanor:answers_total", (("route", "student"),))
    assert after[answers] == before.get(answers, 0) + 1
    ttft = ("athanor:time_to_first_token_seconds_count", ())
    assert after[ttft] == before.get(ttft, 0) + 1
    assert after[("athanor:generation_tokens_total", ())] > before.get(("athanor:generation_tokens_total", ()), 0)
    assert after[("athanor:num_requests_waiting", (("model_name", "smollm2-135m-instruct"),))] == 0
    assert after[("athanor:http_requests_total", (("status", "200"),))] > before[("athanor:http_requests_total",
                                                                                  (("status", "200"),))]
    assert ("athanor:prefix_cache_reused_tokens_total", (("model_name", "smollm2-135m-instruct"),)) in after


def test_text_completions_continue_the_prompt_as_it_is(oai, raw):
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    plain = oai.completions.create(model="smollm2-135m-instruct", prompt=prompt, max_tokens=8, temperature=0,
                                   logprobs=2)
    choice = plain.choices[0]
    # The chat template written out by hand gives the chat endpoint's answer: the prompt is used as it is.
    chat = oai.chat.completions.create(model="smollm2-135m-instruct", max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert choice.text == chat.choices[0].message.content
    assert plain.object == "text_completion" and plain.usage.completion_tokens == len(choice.logprobs.tokens)
    assert "".join(choice.logprobs.tokens) == choice.text and len(choice.logprobs.top_logprobs[0]) == 2
    assert choice.logprobs.text_offset[0] == 0
    streamed = list(oai.completions.create(model="smollm2-135m-instruct", prompt=prompt, max_tokens=8,
                                           temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason
    assert oai.completions.create(model="smollm2-135m-instruct", prompt="Once upon a time").usage.completion_tokens <= 16
    for payload, param in (({"prompt": "a", "echo": True}, "echo"), ({"prompt": "a", "suffix": "b"}, "suffix"),
                           ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": [1, 2]}, "prompt"), ({"prompt": ""}, "prompt"),
                           ({"prompt": "a", "best_of": 3}, "best_of"), ({"prompt": "a", "logprobs": 9}, "logprobs")):
        response = raw.post("/v1/completions", json=payload)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, (payload, response.text)


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"],
                   "additionalProperties": False}}}


def test_tools_through_the_official_client_required_named_streamed_and_the_result_sent_back(oai):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    required = oai.chat.completions.create(model="smollm2-135m-instruct", messages=ask, max_tokens=30,
                                           temperature=0, tools=[WEATHER_TOOL], tool_choice="required")
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert set(json.loads(call.function.arguments)) == {"city"}  # held to the function's schema
    named = oai.chat.completions.create(model="smollm2-135m-instruct", messages=ask, max_tokens=30, temperature=0,
                                        tools=[WEATHER_TOOL], tool_choice={"type": "function",
                                                                           "function": {"name": "get_weather"}})
    assert named.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    chunks = list(oai.chat.completions.create(model="smollm2-135m-instruct", messages=ask, max_tokens=30,
                                              temperature=0, tools=[WEATHER_TOOL], tool_choice="required",
                                              stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0].tool_calls[0].function.arguments == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The client runs the tool and sends the result back; the model answers from it (in words or another call).
    after = oai.chat.completions.create(model="smollm2-135m-instruct", max_tokens=30, temperature=0,
                                        tools=[WEATHER_TOOL], messages=[
                                            *ask, choice.message.model_dump(exclude_none=True),
                                            {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"}])
    answered = after.choices[0]
    assert answered.message.content or answered.message.tool_calls


def test_chat_keeps_the_conversation_and_ask_takes_piped_text(daemon):
    import re

    from click.testing import CliRunner

    from appliance.cli import main

    runner = CliRunner()
    talk = runner.invoke(main, ["chat", "--socket", str(daemon), "--max-tokens", "6", "--temperature", "0", "--usage"],
                         input="My name is Zed.\nWhat is my name?\n/reset\nWhat is my name?\n/exit\n")
    assert talk.exit_code == 0, talk.output
    prompts = [int(n) for n in re.findall(r"\[\w+, (\d+) prompt tokens", talk.output)]
    assert len(prompts) == 3
    assert prompts[1] > prompts[0] + 5  # the second turn carries the first question and answer
    assert prompts[2] < prompts[1]  # /reset forgot them
    piped = runner.invoke(main, ["ask", "--socket", str(daemon), "--max-tokens", "4", "--temperature", "0", "--json",
                                 "Summarise the text above in one word."], input="Paris is the capital of France.")
    assert piped.exit_code == 0, piped.output
    alone = runner.invoke(main, ["ask", "--socket", str(daemon), "--max-tokens", "4", "--temperature", "0", "--json",
                                 "Summarise the text above in one word."], input="")
    assert json.loads(piped.output)["usage"]["prompt_tokens"] > json.loads(alone.output)["usage"]["prompt_tokens"] + 5
