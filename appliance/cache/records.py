"""The cache's typed records: the key an entry is stored and found under, a served hit, a neighbour shown by `why`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The version under which teacher answers are stored: no student's, so no retrain retires them.
TEACHER_VERSION = "teacher"


@dataclass(frozen=True)
class CacheKey:
    """What must match besides the question: who asks, which student answered, with which settings."""

    namespace: str
    model_version: str
    params_key: str
    also_serves: tuple[str, ...] = ()
    """Other versions whose entries a lookup may serve: the teacher's answers do not depend on the
    student, so they survive a retrain (TEACHER_VERSION)."""


@dataclass(frozen=True)
class Neighbour:
    """A stored entry near a question, and whether the verifier would serve it (`athanor cache why`)."""

    entry_id: int
    question: str
    answer: str
    similarity: float
    model_version: str
    would_hit: bool
    reason: str


@dataclass(frozen=True)
class CacheHit:
    """A served entry: its answer, how close its question was, and the stored metadata."""

    entry_id: int
    answer: str
    similarity: float
    meta: dict[str, Any]
    created_at: float
    prompt: str = field(default="", compare=False)
    """The cached question that matched (for logs)."""
