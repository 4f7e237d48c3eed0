"""How the student fared on the past questions nearest a new one: the pre-router's memory.

The question alone says little about whether a small student will get it right (its length, its
script, its digits), but the student's record on questions like it says more: a student that failed
every unit conversion it was asked will likely fail the next one. Each past question is kept with
whether the student's answer was right (graded against gold by scripts/bench_route.py, or against the
teacher's answer in the distillation log); a new question is scored by the share right among its k
nearest past questions in the cache's embedding space, each weighed by its similarity and shrunk
towards the memory's overall share when the neighbours are few or far.

The features are pure given the vectors; reading the files and the log, and embedding, are apart from them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

OUTCOME_FEATURES = ("past_right_share", "past_nearest_similarity")
# Chosen on the dev half of scripts/data/route_questions.jsonl (leave-one-out AUROC of the share alone).
NEIGHBOURS = 20
PRIOR_WEIGHT = 3.0
# The newest outcomes kept: each is embedded when the daemon starts or reloads.
MAX_OUTCOMES = 5000

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Outcome:
    question: str
    right: bool


class PastOutcomes:
    """Labelled past questions and their unit vectors; `features` scores a new question against them."""

    def __init__(self, vectors: np.ndarray | None, right: Sequence[bool], questions: Sequence[str] = (),
                 neighbours: int = NEIGHBOURS, prior_weight: float = PRIOR_WEIGHT) -> None:
        self.right = np.asarray(right, dtype=np.float64)
        self.vectors = None if vectors is None else np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None and len(self.vectors) != len(self.right):
            raise ValueError(f"{len(self.vectors)} vectors for {len(self.right)} outcomes")
        self.questions = tuple(questions)
        self.neighbours = neighbours
        self.prior_weight = prior_weight
        # With no outcomes at all, an even chance: the prompt features then decide alone.
        self.prior = float(self.right.mean()) if len(self.right) else 0.5

    def __len__(self) -> int:
        return len(self.right)

    def features(self, vector: np.ndarray | None, skip: str | None = None) -> list[float]:
        """[share right among the nearest, similarity of the nearest]; without vectors, [overall share, 0].

        `skip` leaves out a past question equal to it (scoring a question that is itself in the memory).
        """
        if vector is None or self.vectors is None or not len(self.right):
            return [self.prior, 0.0]
        sims = self.vectors @ np.asarray(vector, dtype=np.float32)
        if skip is not None and self.questions:
            sims = np.where(np.asarray(self.questions) == skip, -np.inf, sims)
        k = min(self.neighbours, int(np.isfinite(sims).sum()))
        if k == 0:
            return [self.prior, 0.0]
        nearest = np.argpartition(-sims, k - 1)[:k]
        weights = np.clip(sims[nearest], 0.0, None).astype(np.float64)
        share = (weights @ self.right[nearest] + self.prior_weight * self.prior) / (weights.sum() + self.prior_weight)
        return [float(share), float(sims[nearest].max())]


def outcomes_path(pre_router: Path) -> Path:
    """The outcomes file that goes with a pre-router file (`x_pre.json` -> `x_pre_outcomes.jsonl`)."""
    return pre_router.with_name(pre_router.stem + "_outcomes.jsonl")


def write_outcomes(path: Path, outcomes: Iterable[Outcome]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"question": o.question, "right": o.right}, ensure_ascii=False) + "\n"
                           for o in outcomes), encoding="utf-8")
    tmp.replace(path)


def read_outcomes(path: Path) -> list[Outcome]:
    """The outcomes in a JSONL file; a line that is not one is skipped with a warning, never fatal."""
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            found.append(Outcome(str(row["question"]), bool(row["right"])))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s line %d is not an outcome (%s); skipped", path, n, exc)
    return found


def build(outcomes: Sequence[Outcome], embed: Embed | None) -> PastOutcomes:
    """Embed the newest `MAX_OUTCOMES` outcomes (without an embedder, only their overall share is used)."""
    kept = list(outcomes)[-MAX_OUTCOMES:]
    questions = [o.question for o in kept]
    vectors = None
    if embed is not None and kept:
        vectors = np.concatenate([embed(questions[i:i + 64]) for i in range(0, len(questions), 64)])
    return PastOutcomes(vectors, [o.right for o in kept], questions)


def logged_outcomes(log_path: Path, student_version: str | None, limit: int = MAX_OUTCOMES) -> list[Outcome]:
    """The newest `limit` questions of the distillation log whose student answer the teacher's answer grades
    (as `athanor router refit` grades them), for this student version, oldest first; none when there is no log.

    The log is read from its end and only as far back as it takes: a long log costs no more at each start
    and reload than the outcomes kept (`build` keeps no more than `MAX_OUTCOMES` either).
    """
    from ..protocol.distill_log import read_entries_newest_first
    from .refit import examples

    if not log_path.is_file() or limit <= 0:
        return []
    found = []
    for entry in read_entries_newest_first(log_path):
        graded, _ = examples([entry], student_version)
        found += graded
        if len(found) >= limit:
            break
    return [Outcome(e.question, e.right) for e in reversed(found)]
