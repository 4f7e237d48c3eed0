"""The router's records: a request as it sees it, a loaded student, text deltas and the finished answer."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..engine.llama import LlamaEngine
from ..engine.scheduler import Scheduler
from ..engine.types import Completion, ModelInfo, SamplingParams, TokenEvent
from ..errors import AthanorError
from .confidence import Confidence

RouteName = Literal["cache", "student", "teacher"]


class UnknownModel(AthanorError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"model {name!r} is not loaded; loaded: {', '.join(known)} (see GET /v1/models)")
        self.name = name


class PromptTooLong(AthanorError):
    def __init__(self, prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"this request needs {prompt_tokens} prompt + {max_tokens} answer tokens, "
            f"over the model's context of {n_ctx}; shorten the messages or lower max_tokens"
        )


@dataclass(frozen=True)
class ChatRequest:
    """A chat request as the router sees it, free of any wire format."""

    messages: list[dict[str, str]]
    params: SamplingParams
    model: str | None = None
    max_tokens_given: bool = False
    namespace: str = "default"
    cache_read: bool = True
    """False for `Cache-Control: no-cache`: always generate."""
    cache_write: bool = True
    """False for `Cache-Control: no-store`: never remember this answer."""
    payer: str | None = None
    """The API key asking (over TCP), when it has a daily teacher budget of its own."""
    payer_budget_usd: float | None = None
    raw_prompt: str | None = None
    """`/v1/completions`: text continued as it is, without the chat template. The student alone answers it:
    no cache, no teacher (a chat model) and no distillation log, whose records are conversations."""


@dataclass
class Student:
    name: str
    engine: LlamaEngine
    scheduler: Scheduler
    version: str = ""
    """Identity of the model file; cache entries of other versions are not served."""

    @property
    def info(self) -> ModelInfo:
        return self.engine.info


@dataclass
class Delta:
    """Text released so far and the student tokens that released it (none for cache/teacher text)."""

    text: str
    tokens: list[TokenEvent]
    route: RouteName = "student"


@dataclass(frozen=True)
class EnsembleVote:
    """How the role drafts voted on an ensemble answer (`[routing].mode = "ensemble"`)."""

    answers: int
    """The plain answer and the role drafts."""
    vote_share: float
    """Share of them that claim what the served answer claims."""
    served: str
    """Whose answer was served: "plain" or a role's name."""


@dataclass
class Answer:
    """The finished answer and where it came from."""

    model: str
    route: RouteName
    completion: Completion
    queued_s: float
    elapsed_s: float
    confidence: Confidence | None = None
    cache_similarity: float | None = None
    cost_usd: float = 0.0
    saved_usd: float = 0.0
    degraded: bool = False
    degraded_reason: str | None = None
    ensemble: EnsembleVote | None = None

    def provenance(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "route": self.route,
            "confidence": round(self.confidence.score, 6) if self.confidence else None,
            "cache_similarity": round(self.cache_similarity, 6) if self.cache_similarity is not None else None,
            "cost_usd": round(self.cost_usd, 8),
            "saved_usd": round(self.saved_usd, 8),
            "degraded": self.degraded,
        }
        if self.confidence:
            fields["confidence_detail"] = self.confidence.as_dict()
        if self.degraded_reason:
            fields["degraded_reason"] = self.degraded_reason
        if self.ensemble:
            fields["ensemble"] = asdict(self.ensemble)
        return fields


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The question the router's signals read: the last user turn's text."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def params_key(params: SamplingParams) -> str:
    """The generation settings that change an answer; a cache hit must match them all.

    Penalties and logit_bias join the key only when set, so the keys of entries cached without them
    (all of them before these existed) stay the same.
    """
    key: dict[str, Any] = {"t": round(params.temperature, 3), "p": round(params.top_p, 3), "max": params.max_tokens,
                 "stop": list(params.stop), "seed": params.seed}
    if params.frequency_penalty:
        key["fp"] = round(params.frequency_penalty, 3)
    if params.presence_penalty:
        key["pp"] = round(params.presence_penalty, 3)
    if params.logit_bias:
        key["bias"] = [[token, round(bias, 3)] for token, bias in params.logit_bias]
    if params.json_format is not None:
        key["json"] = params.json_format.schema or "object"
    return json.dumps(key, separators=(",", ":"))
