"""The loop closes by itself, end to end on CPU: a daemon whose student knows nothing answers review-sentiment
traffic through a teacher (the fake Gemini over real HTTP), the retrain the weekly timer runs finds the log
due, trains, exports, gates and hands the new student to the daemon; on fresh traffic of the same kind the
teacher is asked far less, spend falls, and the held-out agreement did not fall."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from click.testing import CliRunner

from appliance.cli import main
from tests import distill_task
from tests.fakes import FakeGemini

from .conftest import gemini_env, start_daemon, stop_daemon

pytestmark = pytest.mark.e2e
KEY = "fake-key-123"


def _traffic(path, prompts: list[dict]) -> dict[str, float]:
    """Ask every prompt; the routes taken and the teacher spend."""
    routes: dict[str, int] = {}
    spend = 0.0
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120) as c:
        for item in prompts:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": item["prompt"]}],
                                                     "max_tokens": 4, "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            routes[body["route"]] = routes.get(body["route"], 0) + 1
            spend += body["cost_usd"]
    return {"teacher_share": routes.get("teacher", 0) / len(prompts), "spend": spend,
            "cache": routes.get("cache", 0), "n": len(prompts)}


def test_traffic_teaches_the_student_and_the_teacher_share_falls_after_the_timers_retrain(tmp_path, monkeypatch):
    home = tmp_path / "home"
    settings = {
        # The embedded SmolLM2-135M and the shipped routers, as a fresh install serves them: nothing is
        # configured but the teacher, and training settings that keep the test to minutes on a CPU.
        "ATHANOR_DISTILL__RETRAIN_AFTER": "100", "ATHANOR_DISTILL__EPOCHS": "2",
        "ATHANOR_DISTILL__LEARNING_RATE": "1e-3", "ATHANOR_DISTILL__LORA_LAYERS": "10",
        "ATHANOR_DISTILL__DEDUP_THRESHOLD": "1.0",
    }
    traffic = distill_task.prompts(240, seed=7)
    first, later = traffic[:140], traffic[140:]
    with FakeGemini(api_key=KEY, answer=distill_task.teacher_answer) as gemini:
        env = gemini_env(gemini, **settings)
        process, path = start_daemon(home, env=env)
        try:
            before = _traffic(path, first + first[:20])  # with repeats: the cache serves those
            assert before["teacher_share"] >= 0.8 and before["cache"] >= 18
            # What the weekly timer runs, against the daemon's own log and socket.
            for name, value in {"ATHANOR_HOME": str(home), **env}.items():
                monkeypatch.setenv(name, value)
            result = CliRunner().invoke(main, ["retrain", "--when-due"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            print(result.output)
            assert "new student installed at" in result.output and "reload" in result.output.lower()
            after = _traffic(path, later)
        finally:
            stop_daemon(process)
    said = " ".join(result.output.split())  # long paths wrap the lines
    new, old = (float(x) for x in re.search(r"\(retention ([0-9.]+), was ([0-9.]+)\)", said).groups())
    assert re.search(r"recent traffic \(\d+ newest questions\): retention", said)
    # The router of the first tokens is placed for the new student as well (or, said so, none is).
    assert "early router" in said
    print(f"\nteacher share {before['teacher_share']:.0%} -> {after['teacher_share']:.0%}; spend per answer "
          f"${before['spend'] / before['n']:.6f} -> ${after['spend'] / after['n']:.6f}; held-out retention {old:.3f} -> {new:.3f}")
    assert after["teacher_share"] <= before["teacher_share"] - 0.5
    assert after["spend"] / after["n"] < before["spend"] / before["n"] / 2
    assert new >= old
    report = json.loads(CliRunner().invoke(main, ["report", "--json"], catch_exceptions=False).output)
    assert report["total"]["answers"] >= len(first) + 20 + len(later)
    assert report["quality"]["retention"] == new and report["quality"]["previous_retention"] == old
