"""Keep the student's answer, or ask the teacher; and may the kept answer be cached? (pure)

With a fitted router (the default: `appliance/routing/default_router.json`, fitted by
scripts/bench_route.py on the dev half of its questions for the embedded student) the score is the
router's P(right). Without one, the original rule: a low quantile of the chosen tokens'
probabilities against `[routing].confidence_threshold`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from .. import paths
from ..config import AthanorConfig
from ..engine.model_source import is_embedded_default
from .confidence import Confidence, confidence
from ..engine.types import TokenEvent
from .learned import LogisticRouter
from .outcomes import (OUTCOME_FEATURES, Embed, PastOutcomes, build, logged_outcomes, outcomes_path,
                       read_outcomes)
from .signals import prompt_features, signals

if TYPE_CHECKING:
    from .records import Student

log = logging.getLogger(__name__)

DEFAULT_ROUTER = Path(__file__).with_name("default_router.json")


def early_path(path: Path) -> Path:
    """Where the router for the first `[routing].hold_tokens` tokens of an answer lies beside `path`."""
    return path.with_name(path.stem + "_early" + path.suffix)


def pre_path(path: Path) -> Path:
    """Where the router over the question alone (pre-routing) lies beside `path`."""
    return path.with_name(path.stem + "_pre" + path.suffix)


def ensemble_path(path: Path) -> Path:
    """Where the router of `[routing].mode = "ensemble"` (the served draft's signals and its vote share) lies."""
    return path.with_name(path.stem + "_ensemble" + path.suffix)


@dataclass(frozen=True)
class Decision:
    confidence: Confidence
    keep: bool
    """Serve the student's answer (else the teacher's, when there is one)."""
    cache: bool
    """Trusted enough to be served again from the cache."""


def decide(question: str, events: Sequence[TokenEvent], policy: LogisticRouter | None,
           threshold: float, quantile: float) -> Decision:
    sure = confidence([e.logprob for e in events], quantile)
    if policy is None:
        keep = sure.score >= threshold
        return Decision(sure, keep, keep)
    p_right = policy.probability(signals(question, events).vector())
    scored = Confidence(p_right, sure.quantile, sure.mean_logprob, sure.mean_prob, sure.min_prob, sure.n_tokens,
                        method="router")
    return Decision(scored, p_right >= policy.threshold, p_right >= policy.cache_threshold)


def default_router_file() -> Path:
    """The router "default" means: the one refitted from this appliance's log, when there is one, else the shipped one."""
    refitted = paths.refit_router_file()
    return refitted if refitted.is_file() else DEFAULT_ROUTER


def load_policy(setting: str, early: bool = False, pre: bool = False, ensemble: bool = False) -> LogisticRouter | None:
    """`[routing].router`: "default" (refitted from the log, else shipped), "off" (the quantile rule), or a file.

    `early=True` loads the router of the answer's first tokens (`<name>_early.json` beside it), which
    decides, while a streamed answer is held back, whether to escalate at once; None when there is none.
    `pre=True` and `ensemble=True` load the question-alone and the role-ensemble routers the same way.
    """
    if setting == "off":
        return None
    path = default_router_file() if setting == "default" else Path(setting)
    if early or pre or ensemble:
        beside = early_path if early else pre_path if pre else ensemble_path
        if setting == "default" and not beside(path).is_file():
            if early and path != DEFAULT_ROUTER:
                # A refit (or a retrain) places an early router beside its own only where the new student's
                # first tokens allow one (`refit.place_early`). The shipped early router's threshold was
                # chosen for the embedded student: it would decide what streams by criteria the refit
                # replaced. Without one a streamed answer is held to its end and the refitted router decides.
                return None
            path = DEFAULT_ROUTER  # the question-alone and ensemble routers stay shipped
        path = beside(path)
        return LogisticRouter.load(path) if path.is_file() else None
    if setting == "default" and not path.is_file():
        log.warning("no shipped router at %s; routing by the quantile rule", path)
        return None
    return LogisticRouter.load(path)


def pre_route_probability(policy: LogisticRouter, question: str, outcomes: PastOutcomes | None,
                          vector: np.ndarray | None) -> float:
    """P(the student gets `question` right) from the question alone and, when the pre-router was fitted
    with them, the student's record on the nearest past questions (`vector` is the question's embedding)."""
    x = prompt_features(question)
    if needs_outcomes(policy):
        x += (outcomes or PastOutcomes(None, [])).features(vector)
    return policy.probability(x)


def needs_outcomes(policy: LogisticRouter | None) -> bool:
    return policy is not None and OUTCOME_FEATURES[0] in policy.features


def pre_router_file(setting: str) -> Path:
    """The pre-router file `load_policy(setting, pre=True)` reads (a refit leaves the shipped one in use)."""
    path = default_router_file() if setting == "default" else Path(setting)
    if setting == "default" and not pre_path(path).is_file():
        path = DEFAULT_ROUTER
    return pre_path(path)


def load_past_outcomes(setting: str, embed: Embed | None, student_version: str | None,
                       shipped_student: bool = True) -> PastOutcomes | None:
    """The pre-router's memory: the outcomes shipped beside it (the record of the student it was fitted
    for: only when that student serves, `shipped_student`), then those the teacher graded in this
    appliance's distillation log for the serving student (`student_version`).

    None when the pre-router in use does not read past outcomes. Without an embedder (the cache off)
    only their overall share is used; with no record at all, an even chance.
    """
    pre = load_policy(setting, pre=True)
    if not needs_outcomes(pre):
        return None
    shipped = outcomes_path(pre_router_file(setting))
    found = []
    if shipped_student:
        found = read_outcomes(shipped) if shipped.is_file() else []
        if not found:
            log.warning("the pre-router reads past outcomes but %s holds none", shipped)
    return build(found + logged_outcomes(paths.state_dir() / "distill.jsonl", student_version), embed)


def serving_past_outcomes(config: AthanorConfig, embed: Embed | None,
                          students: Mapping[str, Student]) -> PastOutcomes | None:
    """`load_past_outcomes` for what the daemon serves: its default student, the cache's embedder."""
    default = students.get(config.student.name)
    return load_past_outcomes(config.routing.router, embed, default.version if default is not None else None,
                              shipped_student=is_embedded_default(config.student))


def keeps_nothing(policy: LogisticRouter | None) -> bool:
    """A fitted router whose threshold no probability reaches: it keeps none of the student's answers."""
    return policy is not None and policy.keeps_none


def explores(question: str, share: float) -> bool:
    """Whether `question` is among the `share` of questions the student still answers when the router keeps
    none of its answers. Picked by a hash, so a question asked again is treated alike."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share
