"""The hybrid path through the real daemon: semantic cache, student, confidence, and a teacher
reached over real HTTP (the google-genai client talking to a fake Gemini server)."""

import json

import httpx
import pytest

from appliance.protocol.distill_log import read_records
from appliance.routing.signals import Signals

from .conftest import gemini_env, start_daemon, stop_daemon
from .fakes import Fault, FakeGemini

pytestmark = pytest.mark.e2e

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
PARAPHRASE = [{"role": "user", "content": "What's the capital city of France?"}]
ONE_WORD_CHANGE = [{"role": "user", "content": "What is the capital of Spain?"}]


def client(path, namespace: str | None = None) -> httpx.Client:
    headers = {"x-athanor-namespace": namespace} if namespace else {}
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120,
                        headers=headers)


def ask(path, messages, namespace=None, headers=None, **params) -> dict:
    with client(path, namespace) as c:
        response = c.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 24, "temperature": 0,
                                                        **params}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def gemini():
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: f"Teacher says: {prompt[-40:]}") as fake:
        yield fake


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, gemini):
    """A daemon whose student is never sure enough (threshold 1.0): every miss goes to the teacher."""
    home = tmp_path_factory.mktemp("hybrid")
    process, path = start_daemon(home, env=gemini_env(gemini, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0",
                                                     ATHANOR_SERVER__SSE_KEEPALIVE_S="0.25"))
    yield home, path, process
    stop_daemon(process)


def test_unsure_student_goes_to_the_teacher_then_the_cache_answers(hybrid, gemini):
    home, path, _ = hybrid
    before = len(gemini.requests)
    first = ask(path, CAPITAL)
    assert first["route"] == "teacher"
    assert first["choices"][0]["message"]["content"].startswith("Teacher says:")
    assert first["cost_usd"] > 0 and first["saved_usd"] == 0
    assert 0 <= first["confidence"] < 1.0  # the student's confidence that sent it to the teacher
    assert len(gemini.requests) == before + 1
    # The same question again, and a paraphrase: served from the cache, the teacher not asked.
    again = ask(path, CAPITAL)
    para = ask(path, PARAPHRASE)
    for answer in (again, para):
        assert answer["route"] == "cache"
        assert answer["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
        assert answer["cost_usd"] == 0 and answer["saved_usd"] > 0
    assert para["cache_similarity"] < again["cache_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(gemini.requests) == before + 1
    # One important word changed: not the cached answer.
    other = ask(path, ONE_WORD_CHANGE)
    assert other["route"] == "teacher"
    assert len(gemini.requests) == before + 2
    # Every teacher answer is in the distillation log.
    records = list(read_records(home / "state" / "distill.jsonl"))
    assert [r["messages"][-1]["content"] for r in records][-2:] == [CAPITAL[0]["content"],
                                                                    ONE_WORD_CHANGE[0]["content"]]
    assert records[-1]["teacher"]["text"] == other["choices"][0]["message"]["content"]
    assert records[-1]["teacher"]["cost_usd"] > 0
    # With the student's answer, the router's signals for it: what `athanor router refit` learns from.
    assert set(records[-1]["student"]["signals"]) == set(Signals.names())
    assert "partial" not in records[-1]["student"]
    # And those of its first tokens, from which the refit learns what may stream.
    whole, early = records[-1]["student"]["signals"], records[-1]["student"]["early_signals"]
    assert set(early) == set(Signals.names())
    assert early["neg_length"] == max(whole["neg_length"], -8) and early["chinese"] == whole["chinese"]


def test_namespaces_do_not_share_answers(hybrid, gemini):
    _, path, _ = hybrid
    question = [{"role": "user", "content": "Name a famous painting by Vermeer."}]
    mine = ask(path, question, namespace="alice")
    assert mine["route"] == "teacher"
    assert ask(path, question, namespace="alice")["route"] == "cache"
    assert ask(path, question, namespace="bob")["route"] == "teacher"
    with client(path, "../../etc") as c:
        bad = c.post("/v1/chat/completions", json={"messages": question})
    assert bad.status_code == 400


def test_cache_control_headers(hybrid):
    _, path, _ = hybrid
    question = [{"role": "user", "content": "Give me a haiku about rain."}]
    assert ask(path, question, headers={"cache-control": "no-store"})["route"] == "teacher"
    assert ask(path, question)["route"] == "teacher"  # nothing was stored
    assert ask(path, question, headers={"cache-control": "no-cache"})["route"] == "teacher"  # not read
    assert ask(path, question)["route"] == "cache"


def test_streaming_a_cache_hit_and_a_teacher_answer(hybrid):
    _, path, _ = hybrid
    question = [{"role": "user", "content": "Why do cats purr?"}]
    for expected in ("teacher", "cache"):
        with client(path) as c, c.stream("POST", "/v1/chat/completions",
                                          json={"messages": question, "max_tokens": 16, "stream": True}) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert {chunk["route"] for chunk in chunks} == {expected}
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text.startswith("Teacher says:")


def test_a_silent_stream_is_kept_alive_while_the_teacher_thinks(hybrid, gemini):
    _, path, _ = hybrid
    gemini.fail(Fault(delay=1.5))  # the teacher says nothing for 1.5 s
    question = [{"role": "user", "content": "Why is the sea salty?"}]
    with client(path) as c, c.stream("POST", "/v1/chat/completions",
                                      json={"messages": question, "max_tokens": 16, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    first_content = next(i for i, line in enumerate(lines) if line.startswith("data: {") and '"content":"' in line
                         and '"content":""' not in line)
    # SSE comments (ignored by every SSE reader) went out while nothing else could.
    assert lines[:first_content].count(": keep-alive") >= 2
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert {chunk["route"] for chunk in chunks} == {"teacher"}
    assert lines[-1] == "data: [DONE]"


def test_teacher_down_gives_the_students_answer_marked_degraded(hybrid, gemini):
    _, path, _ = hybrid
    gemini.fail_times(10, status=503)
    try:
        answer = ask(path, [{"role": "user", "content": "Describe the moon in one sentence."}])
    finally:
        gemini.faults.clear()
    assert answer["route"] == "student"
    assert answer["degraded"] is True
    assert "503" in answer["degraded_reason"] or "unavailable" in answer["degraded_reason"].lower()
    assert answer["choices"][0]["message"]["content"]  # the client still got an answer


def test_a_429_is_retried_and_answered(hybrid, gemini):
    _, path, _ = hybrid
    gemini.fail_times(1, status=429, retry_after=0.2)
    answer = ask(path, [{"role": "user", "content": "What is a prime number?"}])
    assert answer["route"] == "teacher"


def test_stats_count_routes_and_money(hybrid):
    _, path, _ = hybrid
    with client(path) as c:
        stats = c.get("/v1/stats").json()
    assert stats["by_route"]["teacher"] >= 2 and stats["by_route"]["cache"] >= 2
    assert stats["cost_usd"] > 0 and stats["saved_usd"] > 0
    assert "fake-key-123" not in json.dumps(stats)
    assert stats["teacher"]["provider"] == "gemini" and stats["teacher"]["spent_today"] > 0
    assert stats["cache"]["entries"] >= 2


def test_cache_survives_a_restart(tmp_path, gemini):
    env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0")
    process, path = start_daemon(tmp_path / "restart", env=env)
    try:
        assert ask(path, CAPITAL)["route"] == "teacher"
    finally:
        stop_daemon(process)
    process, path = start_daemon(tmp_path / "restart", env=env)
    try:
        assert ask(path, CAPITAL)["route"] == "cache"
    finally:
        stop_daemon(process)


def test_budget_exhausted_means_no_teacher_call(tmp_path, gemini):
    env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="1.0", ATHANOR_TEACHER__DAILY_BUDGET_USD="0")
    process, path = start_daemon(tmp_path / "broke", env=env)
    try:
        before = len(gemini.requests)
        answer = ask(path, [{"role": "user", "content": "Tell me about budgets."}])
        assert answer["route"] == "student" and answer["degraded"] is True
        assert "budget" in answer["degraded_reason"].lower()
        assert len(gemini.requests) == before
    finally:
        stop_daemon(process)


def test_a_confident_student_answers_itself_and_is_cached(tmp_path, gemini):
    env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER="off", ATHANOR_ROUTING__CONFIDENCE_THRESHOLD="0.0")
    process, path = start_daemon(tmp_path / "sure", env=env)
    try:
        before = len(gemini.requests)
        first = ask(path, CAPITAL)
        assert first["route"] == "student" and first["degraded"] is False
        assert first["confidence_detail"]["n_tokens"] == first["usage"]["completion_tokens"]
        assert ask(path, CAPITAL)["route"] == "cache"
        assert len(gemini.requests) == before
    finally:
        stop_daemon(process)


def _router_files(folder, keep_early: bool, keep_final: bool = True):
    """A router that always keeps (or never keeps) the student's answer, and its early twin."""
    from appliance.routing.decide import early_path
    from appliance.routing.learned import LogisticRouter
    from appliance.routing.signals import Signals

    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    final = folder / "router.json"
    LogisticRouter(names, zeros, ones, zeros, 10.0 if keep_final else -10.0, 0.5, 0.5).save(final)
    LogisticRouter(names, zeros, ones, zeros, 10.0 if keep_early else -10.0, 0.5, 1.0).save(early_path(final))
    return final


def _stream(path, question, max_tokens=24):
    import time

    started = time.monotonic()
    arrivals, chunks = [], []
    with client(path) as c, c.stream("POST", "/v1/chat/completions",
                                      json={"messages": question, "max_tokens": max_tokens, "stream": True,
                                            "temperature": 0}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    arrivals.append(time.monotonic() - started)
                chunks.append(chunk)
    return chunks, arrivals


def test_with_a_teacher_a_sure_student_streams_token_by_token(tmp_path, gemini):
    router = _router_files(tmp_path, keep_early=True)
    env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER=str(router), ATHANOR_ROUTING__HOLD_TOKENS="4")
    process, path = start_daemon(tmp_path / "live", env=env)
    try:
        before = len(gemini.requests)
        chunks, arrivals = _stream(path, [{"role": "user", "content": "Write a long sentence about rivers."}], 32)
        assert {c["route"] for c in chunks} == {"student"}
        # After the 4 held tokens the rest streams: many content chunks, spread over the answer's time.
        assert len(arrivals) > 10 and arrivals[-1] - arrivals[0] > 0.05
        assert len(gemini.requests) == before
    finally:
        stop_daemon(process)


def test_with_a_teacher_an_unsure_start_escalates_at_once(tmp_path, gemini):
    router = _router_files(tmp_path, keep_early=False)
    env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER=str(router), ATHANOR_ROUTING__HOLD_TOKENS="4",
                     ATHANOR_STUDENT__DEFAULT_MAX_TOKENS="400")
    process, path = start_daemon(tmp_path / "early", env=env)
    try:
        before = len(gemini.requests)
        chunks, _ = _stream(path, [{"role": "user", "content": "Tell me a very long story about a dragon."}], 400)
        assert {c["route"] for c in chunks} == {"teacher"}
        assert len(gemini.requests) == before + 1
        # The student was stopped once the teacher answered, not run to its 400-token limit.
        with client(path) as c:
            steps = c.get("/v1/stats").json()["students"][0]["batching"]["steps"]
        assert steps < 200, steps
    finally:
        stop_daemon(process)


def test_a_question_the_student_will_fail_goes_to_the_teacher_before_any_decode(tmp_path):
    from appliance.routing.decide import pre_path
    from appliance.routing.learned import LogisticRouter
    from appliance.routing.signals import PROMPT_FEATURES

    router = _router_files(tmp_path, keep_early=True)
    names = tuple(PROMPT_FEATURES)
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    LogisticRouter(names, zeros, ones, zeros, -10.0, 0.5, 1.0).save(pre_path(router))  # always pre-routes
    words = "one two three four five six seven eight"
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: words, chunk_delay=0.3) as slow:
        env = gemini_env(slow, ATHANOR_ROUTING__ROUTER=str(router))
        process, path = start_daemon(tmp_path / "pre", env=env)
        try:
            chunks, arrivals = _stream(path, [{"role": "user", "content": "What is 37 times 91?"}], 32)
            assert {c["route"] for c in chunks} == {"teacher"}
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert text.split() == words.split()
            # Relayed as the teacher sends it: the first words arrive long before its last (8 x 0.3 s).
            assert len(arrivals) >= 4 and arrivals[0] < arrivals[-1] - 1.0
            with client(path) as c:
                assert c.get("/v1/stats").json()["students"][0]["batching"]["steps"] == 0  # no student decode
        finally:
            stop_daemon(process)


def test_a_router_that_keeps_nothing_sends_questions_to_the_teacher_unasked_but_a_share(tmp_path, gemini):
    """Threshold 1.0 (what out-of-fold thresholds give the embedded student): decoding first would only delay
    the teacher. With `explore_share` 0 no question is decoded; with 1 every one is, to its end, and logged
    whole beside the teacher's answer for `router refit`."""
    from appliance.routing.learned import LogisticRouter

    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    router = tmp_path / "router.json"
    # P(right) is ~1 for every answer: only the threshold says that none is kept.
    LogisticRouter(names, zeros, ones, zeros, 10.0, 1.0, 1.0).save(router)
    question = [{"role": "user", "content": "Name three rivers in Africa."}]
    for share, decoded in (("0", False), ("1", True)):
        env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER=str(router), ATHANOR_ROUTING__EXPLORE_SHARE=share)
        home = tmp_path / f"share{share}"
        process, path = start_daemon(home, env=env)
        try:
            before = len(gemini.requests)
            answer = ask(path, question)
            assert answer["route"] == "teacher" and len(gemini.requests) == before + 1
            with client(path) as c:
                steps = c.get("/v1/stats").json()["students"][0]["batching"]["steps"]
            record = list(read_records(home / "state" / "distill.jsonl"))[-1]
            if decoded:
                assert steps > 0 and record["student"]["text"] and "partial" not in record["student"]
            else:
                assert steps == 0 and answer["confidence_detail"]["method"] == "router keeps none"
        finally:
            stop_daemon(process)


def test_the_students_record_on_like_questions_pre_routes_through_the_real_embedder(tmp_path):
    """A pre-router reading the nearest past questions' record: the daemon embeds each question with the
    cache's embedder and sends the kind the student always failed to the teacher, unasked."""
    from appliance.routing.decide import pre_path
    from appliance.routing.learned import LogisticRouter
    from appliance.routing.outcomes import OUTCOME_FEATURES, Outcome, outcomes_path, write_outcomes
    from appliance.routing.signals import PROMPT_FEATURES

    router = _router_files(tmp_path, keep_early=True)
    names = tuple(PROMPT_FEATURES + OUTCOME_FEATURES)
    weights = tuple(12.0 if n == "past_right_share" else 0.0 for n in names)
    LogisticRouter(names, (0.0,) * len(names), (1.0,) * len(names), weights, -6.0, 0.5, 1.0).save(pre_path(router))
    failed = [f"What is {a} times {b}?" for a, b in ((12, 13), (17, 19), (23, 29), (31, 37), (41, 43), (14, 16))]
    right = ["What is the capital of France?", "What is the capital of Spain?", "What is the capital of Japan?",
             "What is the capital of Italy?", "What is the capital of Egypt?", "What is the capital of Chile?"]
    write_outcomes(outcomes_path(pre_path(router)),
                   [Outcome(q, False) for q in failed] + [Outcome(q, True) for q in right])
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: "3367") as teacher:
        process, path = start_daemon(tmp_path / "pre", env=gemini_env(teacher, ATHANOR_ROUTING__ROUTER=str(router)))
        try:
            chunks, _ = _stream(path, [{"role": "user", "content": "What is 37 times 91?"}], 16)
            assert {c["route"] for c in chunks} == {"teacher"}
            with client(path) as c:
                assert c.get("/v1/stats").json()["students"][0]["batching"]["steps"] == 0  # no student decode
            chunks, _ = _stream(path, [{"role": "user", "content": "What is the capital of Peru?"}], 16)
            with client(path) as c:
                assert c.get("/v1/stats").json()["students"][0]["batching"]["steps"] > 0  # the student answered
            assert len(teacher.requests) == 1
        finally:
            stop_daemon(process)


def test_text_completions_are_the_students_alone_even_when_unsure(hybrid, gemini):
    """/v1/completions continues raw text: a chat teacher is never asked, and the answer says why it is unsure."""
    _, path, _ = hybrid
    before = len(gemini.requests)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://athanor", timeout=120) as c:
        response = c.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 6,
                                                   "temperature": 0})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["route"] == "student" and answer["degraded"] is True
    assert "text completions are the student's alone" in answer["degraded_reason"]
    assert len(gemini.requests) == before
