"""bench_route.py --questions: the shipped routers scored at their own thresholds on questions of one's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench_route  # noqa: E402

SURE = [[-0.001, -0.001, 9.0, 0.01]] * 3      # each step: chosen logprob, best logprob, margin, entropy
UNSURE = [[-2.5, -1.2, 0.1, 3.5]] * 12


def _row(question: str, answer: str, student: str, tokens: list, lang: str = "en") -> dict:
    return {"question": question, "answer": answer, "aliases": [], "category": "facts", "lang": lang,
            "student": student, "tokens": tokens, "samples": [student] * 4}


def test_a_sure_wrong_answer_is_counted_as_kept_and_wrong(tmp_path):
    rows = [_row("What is the capital of Kenya?", "Nairobi", "Nairobi.", SURE),
            _row("What is the capital of Peru?", "Lima", "Quito.", SURE),
            _row("What is 17 times 23?", "391", "17 times 23 is 401, or maybe 371.", UNSURE),
            _row("法国的首都是哪座城市？", "巴黎", "巴黎。", UNSURE, lang="zh")]
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
