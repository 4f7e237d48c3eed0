"""A daemon for soaking: cache on, a fake Gemini teacher, a confidence threshold that sends part of
the student's answers to the teacher (shared by tests/test_soak.py and scripts/soak.py)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .conftest import gemini_env, start_daemon, stop_daemon
from .fakes import FakeGemini

# SmolLM2-135M's 16-token answers to the soak's questions score 0.12-0.68 (10% quantile of token
# probabilities, measured); the default 0.2 sends about half of the fresh ones on to the teacher.
SOAK_THRESHOLD = "0.2"


@contextmanager
def soak_daemon(home: Path, teacher: FakeGemini, max_queue: int = 32) -> Iterator[tuple]:
    env = gemini_env(teacher, ATHANOR_TEACHER__DAILY_BUDGET_USD="1000", ATHANOR_TEACHER__REQUESTS_PER_MINUTE="100000",
                     ATHANOR_ROUTING__CONFIDENCE_THRESHOLD=SOAK_THRESHOLD, ATHANOR_ROUTING__ROUTER="off", ATHANOR_SERVER__MAX_QUEUE=str(max_queue))
    process, path = start_daemon(home, env=env)
    try:
        yield process, path
    finally:
        stop_daemon(process)
