"""Typed records passed between the engine, the scheduler and the faces (no I/O here)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ModelInfo:
    """What /v1/models and the dashboard show of a loaded student, whatever its engine."""

    name: str
    path: Path
    n_ctx: int
    n_vocab: int
    size_bytes: int
    n_params: int
    description: str
    gpu_offload: bool
    constrains_output: bool = False
    """Whether the engine can hold its output to a grammar (JSON mode); llama.cpp can, ONNX cannot."""


@dataclass(frozen=True)
class JsonFormat:
    """The answer must be JSON: any JSON value (`schema` None, OpenAI's json_object) or one that
    validates against a JSON schema (json_schema), held to it by llama.cpp's grammar sampler."""

    schema: str | None = None
    """The schema as canonical JSON text (sorted keys)."""
    name: str | None = None

    def grammar(self) -> str:
        """The GBNF grammar llama.cpp samples under (llama-cpp-python's JSON and schema converters)."""
        return _grammar(self.schema)


@functools.lru_cache(maxsize=64)
def _grammar(schema: str | None) -> str:
    # Converted once per schema: the request's validation and the engine's sampler both ask, and a client
    # usually sends the same schema (or the same tools) with every request.
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    # json_object: any JSON object (the generic grammar's root is an object, as OpenAI promises).
    return JSON_GBNF if schema is None else json_schema_to_gbnf(schema)


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings that change the answer."""

    max_tokens: int
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated before (OpenAI's, -2..2)."""
    presence_penalty: float = 0.0
    """Subtracted from a token's logit once if it was generated before (OpenAI's, -2..2)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to those tokens' logits; a bias of -100 or less bans the token."""
    json_format: JsonFormat | None = None
    """Hold the answer to JSON (response_format json_object / json_schema)."""

    @property
    def penalized(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    raw: bytes


@dataclass(frozen=True)
class StepStats:
    """How peaked one step's distribution was, whatever token sampling then chose.

    At a sampling temperature the chosen token's probability mostly measures the dice; the best
    token's probability, the gap to the second and the entropy measure the model.
    """

    max_logprob: float
    margin: float
    """log p(best) - log p(second best)."""
    entropy: float
    """In nats."""


@dataclass(frozen=True)
class TokenEvent:
    """One decoded token: its id, the text it releases (may be empty mid-character), its log-probability."""

    token_id: int
    text: str
    logprob: float
    raw: bytes
    top: tuple[TokenLogprob, ...] = ()
    step: StepStats | None = None
    """The whole next-token distribution in three numbers (None from engines that do not compute it)."""


@dataclass(frozen=True)
class StepResult:
    """What one decode step did for one sequence: a token, an end (`finish`), or a failure."""

    seq: int
    event: TokenEvent | None = None
    finish: FinishReason | None = None
    error: Exception | None = None


@dataclass
class Completion:
    """A finished answer with everything later stages need (confidence, usage)."""

    text: str
    finish_reason: str
    """A `FinishReason` for the student's and the cache's answers; a teacher's own reason as it gave it
    ("content_filter", or whatever an OpenAI-compatible server sent), passed on to the client."""
    prompt_tokens: int
    tokens: list[TokenEvent] = field(default_factory=list)
    counted_tokens: int | None = None
    """Answer length when it came without student tokens (cache, teacher)."""

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) if self.counted_tokens is None else self.counted_tokens

    @property
    def logprobs(self) -> list[float]:
        return [t.logprob for t in self.tokens]
