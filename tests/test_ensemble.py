"""Role ensembles: the pure vote, and `[routing].mode = "ensemble"` through the real daemon with a fake Gemini."""

import json

import httpx
import pytest

from appliance.routing.ensemble import (DEFAULT_ROLES, VOTE_SHARE, claim, integration_messages, majority,
                                        verdict, with_role)


def test_claims_compare_what_answers_state_not_how():
    assert claim("The answer is 12.") == claim("12") == "n:12"
    assert claim("十二") == "n:12"
    assert claim("Yes, it can.") == claim("yes") == "yes"
    assert claim("不是。") == "no"
    assert claim("Paris is the capital") != claim("Lyon is the capital")


def test_the_majority_claim_is_served_ties_to_the_plain_answer():
    vote = majority(["It is 5.", "4", "The answer is 4", "5"])
    assert vote.index == 0 and vote.share == 0.5  # 2-2: the plain answer (first) wins the tie
    vote = majority(["It is 5.", "4", "The answer is 4", "four is 4"])
    assert vote.index == 1 and vote.share == 0.75  # the first draft that makes the top claim
    assert majority(["x"]).share == 1.0
    assert verdict("4", ["4", "5", "4"]).agreement == pytest.approx(2 / 3)


def test_a_role_prompt_goes_before_the_callers_own_system_prompt_in_the_questions_language():
    role = DEFAULT_ROLES[0]
    plain = [{"role": "user", "content": "What is 2+2?"}]
    assert with_role(plain, role, "What is 2+2?") == [{"role": "system", "content": role.english}, *plain]
    zh = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "二加二等于几？"}]
    first = with_role(zh, role, "二加二等于几？")[0]
    assert first["role"] == "system" and first["content"] == f"{role.chinese}\n\n你是助手。"
    assert with_role(zh, role, "二加二等于几？")[1:] == zh[1:]


def test_the_teacher_sees_every_draft_as_context_and_the_conversation_unchanged():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
               {"role": "user", "content": "What is 7*8?"}]
    messages = integration_messages(history, "What is 7*8?", ["54", "56", "It is\n 48"])
    assert messages[1:] == history
    note = messages[0]["content"]
    assert messages[0]["role"] == "system" and "1. 54" in note and "3. It is 48" in note and "may all be wrong" in note
    zh = integration_messages([{"role": "user", "content": "七乘八？"}], "七乘八？", ["54", "56"])
    assert "草稿" in zh[0]["content"] and "2. 56" in zh[0]["content"]


# -- through the daemon ---------------------------------------------------------------------------------

def _ensemble_router(folder, keep: bool):
    """A final router (never consulted in ensemble mode) and an ensemble router that always/never keeps."""
    from appliance.routing.decide import ensemble_path
    from appliance.routing.learned import LogisticRouter
    from appliance.routing.signals import Signals

    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    final = folder / "router.json"
    LogisticRouter(names, zeros, ones, zeros, 10.0, 0.5, 0.5).save(final)
    names_v = (*names, VOTE_SHARE)
    zeros_v, ones_v = tuple(0.0 for _ in names_v), tuple(1.0 for _ in names_v)
    LogisticRouter(names_v, zeros_v, ones_v, zeros_v, 10.0 if keep else -10.0, 0.5, 0.5).save(ensemble_path(final))
    return final


def _ask(path, content, **extra):
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120) as c:
        response = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}],
                                                        "max_tokens": 16, "temperature": 0, **extra})
        stats = c.get("/v1/stats").json()
    assert response.status_code == 200, response.text
    return response.json(), stats


@pytest.mark.e2e
def test_disagreeing_drafts_go_to_the_teacher_with_the_drafts_and_the_log_keeps_the_question(tmp_path):
    from appliance.protocol.distill_log import read_records

    from .conftest import gemini_env, start_daemon, stop_daemon
    from .fakes import FakeGemini

    router = _ensemble_router(tmp_path, keep=False)
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: "56") as gemini:
        env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER=str(router), ATHANOR_ROUTING__MODE="ensemble")
        process, path = start_daemon(tmp_path / "home", env=env)
        try:
            answer, stats = _ask(path, "What is 7 times 8?")
            assert answer["route"] == "teacher" and answer["choices"][0]["message"]["content"] == "56"
            assert answer["ensemble"]["answers"] == 1 + len(DEFAULT_ROLES)
            assert answer["confidence_detail"]["method"] == "ensemble"
            # The plain prompt and the three roles were decoded together, in one batch.
            assert stats["students"][0]["batching"]["max_batch"] == 1 + len(DEFAULT_ROLES)
            sent = json.dumps(gemini.last.body, ensure_ascii=False)
            assert "may all be wrong" in sent and "What is 7 times 8?" in sent
            record = list(read_records(tmp_path / "home" / "state" / "distill.jsonl"))[-1]
            assert record["messages"] == [{"role": "user", "content": "What is 7 times 8?"}]  # not the drafts
            assert record["teacher"]["text"] == "56"
        finally:
            stop_daemon(process)


@pytest.mark.e2e
def test_drafts_that_convince_the_ensemble_router_are_served_without_a_teacher(tmp_path):
    from .conftest import gemini_env, start_daemon, stop_daemon
    from .fakes import FakeGemini

    router = _ensemble_router(tmp_path, keep=True)
    with FakeGemini(api_key="fake-key-123", answer=lambda prompt: "teacher") as gemini:
        env = gemini_env(gemini, ATHANOR_ROUTING__ROUTER=str(router), ATHANOR_ROUTING__MODE="ensemble")
        process, path = start_daemon(tmp_path / "home", env=env)
        try:
            answer, _ = _ask(path, "What is the capital of France?", logprobs=True)
            assert answer["route"] == "student" and not answer["degraded"]
            assert answer["ensemble"]["served"] in ["plain", *(r.name for r in DEFAULT_ROLES)]
            assert 0.25 <= answer["ensemble"]["vote_share"] <= 1.0
            assert answer["choices"][0]["message"]["content"].strip()
            assert answer["choices"][0]["logprobs"]["content"]  # the served draft's own tokens
            assert not any("generate" in r.path for r in gemini.requests)  # the teacher was never asked
        finally:
            stop_daemon(process)


@pytest.mark.e2e
def test_without_a_teacher_or_ensemble_router_only_a_unanimous_vote_is_trusted(tmp_path):
    from .conftest import start_daemon, stop_daemon

    process, path = start_daemon(tmp_path / "home", env={"ATHANOR_ROUTING__ROUTER": "off",
                                                         "ATHANOR_ROUTING__MODE": "ensemble"})
    try:
        answer, _ = _ask(path, "What is 37 times 91?")
        vote = answer["ensemble"]
        assert answer["route"] == "student"
        assert answer["degraded"] == (vote["vote_share"] < 1.0)
        if answer["degraded"]:
            assert "drafts disagree" in answer["degraded_reason"] and "no teacher" in answer["degraded_reason"]
        # Unmeasured, even a unanimous vote is not trusted enough to be served again from the cache.
        again, _ = _ask(path, "What is 37 times 91?")
        assert again["route"] == "student" and again["ensemble"] == vote
    finally:
        stop_daemon(process)


def test_the_shipped_ensemble_router_reads_the_served_drafts_signals_and_its_vote_share():
    from appliance.routing.decide import load_policy
    from appliance.routing.signals import Signals

    policy = load_policy("default", ensemble=True)
    assert policy is not None and list(policy.features) == [*Signals.names(), VOTE_SHARE]
    assert 0.0 < policy.threshold <= policy.cache_threshold <= 1.0
    assert load_policy("off", ensemble=True) is None
