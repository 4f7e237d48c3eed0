"""bench_route.py --questions: the shipped routers scored at their own thresholds on questions of one's own."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from appliance.routing.learned import LogisticRouter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_route  # noqa: E402

SURE = [[-0.001, -0.001, 9.0, 0.01]] * 3      # each step: chosen logprob, best logprob, margin, entropy
UNSURE = [[-2.5, -1.2, 0.1, 3.5]] * 12


def _row(question: str, answer: str, student: str, tokens: list, lang: str = "en") -> dict:
    return {"question": question, "answer": answer, "aliases": [], "category": "facts", "lang": lang,
            "student": student, "tokens": tokens, "samples": [student] * 4}


def test_a_sure_wrong_answer_is_counted_as_kept_and_wrong(tmp_path, monkeypatch):
    rows = [_row("What is the capital of Kenya?", "Nairobi", "Nairobi.", SURE),
            _row("What is the capital of Peru?", "Lima", "Quito.", SURE),
            _row("What is 17 times 23?", "391", "17 times 23 is 401, or maybe 371.", UNSURE),
            _row("法国的首都是哪座城市？", "巴黎", "巴黎。", UNSURE, lang="zh")]
    # The shipped router's own threshold may keep nothing (it does for the embedded student): the probe
    # reads whatever threshold the file holds, so it is given one between the sure and unsure answers.
    shipped = LogisticRouter.load(bench_route.DEFAULT_ROUTER)
    sure, unsure = (shipped.probability(bench_route.features(rows[i])[0].vector()) for i in (0, 2))
    assert sure > unsure
    router = tmp_path / "router.json"
    replace(shipped, threshold=(sure + unsure) / 2).save(router)
    monkeypatch.setattr(bench_route, "DEFAULT_ROUTER", router)
    bench_route.probe_shipped(rows, tmp_path)
    report = json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))
    assert report["student_right"] == "2/4"
    assert report["student_right_by_language"] == {"en": "1/3", "zh": "1/1"}
    full = report["routers"]["learned (signals)"]
    # Greedy signals cannot tell the two sure answers apart: both are kept, and the wrong one is counted.
    assert full["kept"] == 2 and full["wrong_among_kept"] == 1
    assert full["wrong_kept_examples"] == ["What is the capital of Peru? -> 'Quito.'"]
    assert full["teacher_share"] == 0.5
    assert set(report["pre_route"]) == {"sent_unasked", "right_among_sent"}
