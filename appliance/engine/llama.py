"""The GGUF student in llama.cpp, driven through its C API so each token's log-probability is ours.

The high-level `llama_cpp.Llama` only returns log-probabilities with `logits_all=True`, which
keeps a logits row for every position of the context. Here the decode loop reads the one row
it needs (`llama_get_logits_ith`) after each step, samples with llama.cpp's own sampler chain
and reuses the KV cells of the previous prompt's common prefix. All calls on one engine must
come from one thread (the scheduler's worker): llama.cpp contexts are not thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import AthanorError
from .types import SamplingParams, TokenEvent, TokenLogprob

log = logging.getLogger(__name__)

# llama-cpp-python routes llama.cpp's own log through this logger; keep start-up quiet.
logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class EngineError(AthanorError):
    """llama.cpp refused a model or a step."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    n_ctx: int
    n_vocab: int
    size_bytes: int
    n_params: int
    description: str
    gpu_offload: bool


def log_softmax_at(logits: np.ndarray, token: int) -> float:
    """log p(token) under the softmax of a logits row, computed stably."""
    peak = float(logits.max())
    return float(logits[token]) - peak - float(np.log(np.exp(logits - peak).sum()))


def top_k_logprobs(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of a logits row with their log-probabilities, best first."""
    peak = float(logits.max())
    log_norm = peak + float(np.log(np.exp(logits - peak).sum()))
    best = np.argpartition(-logits, k - 1)[:k]
    best = best[np.argsort(-logits[best])]
    return [(int(i), float(logits[i]) - log_norm) for i in best]


class LlamaEngine:
    """One loaded GGUF model and one llama.cpp context serving one sequence at a time."""

    def __init__(
        self,
        path: Path,
        name: str,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 0,
        n_gpu_layers: int = -1,
        flash_attn: str = "auto",
    ) -> None:
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers if n_gpu_layers >= 0 else 10_000
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise EngineError(
                f"llama.cpp could not load a model from {path}; check that it is a complete GGUF file "
                "(re-run `athanor export`) or set [student].path"
            )
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        threads = n_threads or os.cpu_count() or 1
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = min(n_batch, n_ctx)
        ctx_params.n_ubatch = min(n_batch, n_ctx)
        ctx_params.n_seq_max = 1
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.no_perf = True
        ctx_params.flash_attn_type = _FLASH_ATTN[flash_attn]
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineError(f"llama.cpp could not create a context of {n_ctx} tokens; lower [student].n_ctx")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_batch = ctx_params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self._kv_tokens: list[int] = []  # tokens whose KV cells sequence 0 holds, in order
        self._piece_cache: dict[int, bytes] = {}
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._model, desc, len(desc))
        self.info = ModelInfo(
            name=name,
            path=path,
            n_ctx=self.n_ctx,
            n_vocab=self.n_vocab,
            size_bytes=path.stat().st_size,
            n_params=llama_cpp.llama_model_n_params(self._model),
            description=desc.value.decode(errors="replace"),
            gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()) and n_gpu_layers != 0,
        )
        self._formatter = self._chat_formatter()

    # --- text <-> tokens -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens of `text`; special tokens written in it (chat markup) are parsed as such."""
        data = text.encode()
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, True)
        if count < 0:
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, True)
        return list(buffer[:count])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens rendered as their text)."""
        cached = self._piece_cache.get(token)
        if cached is None:
            buffer = ctypes.create_string_buffer(64)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
            cached = buffer.raw[:size]
            self._piece_cache[token] = cached
        return cached

    def _metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(1 << 16)
        size = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        if size < 0:
            return None
        if size >= len(buffer):
            buffer = ctypes.create_string_buffer(size + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buffer, len(buffer))
        return buffer.value.decode(errors="replace")

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = self._metadata("tokenizer.chat_template") or _FALLBACK_TEMPLATE
        bos = self.piece(llama_cpp.llama_vocab_bos(self._vocab)).decode(errors="replace")
        eos = self.piece(llama_cpp.llama_vocab_eos(self._vocab)).decode(errors="replace")
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Render messages with the model's own chat template and tokenize the result."""
        prompt = self._formatter(messages=messages).prompt
        # The template writes BOS itself where the model wants it; don't add a second one.
        return self.tokenize(prompt, add_special=False)

    # --- decoding ----------------------------------------------------------------------------

    def _decode(self, tokens: list[int], start: int) -> None:
        """Feed tokens at positions start.. in n_batch chunks; only the last one asks for logits."""
        batch = self._batch
        for offset in range(0, len(tokens), self._n_batch):
            chunk = tokens[offset : offset + self._n_batch]
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = False
            batch.logits[len(chunk) - 1] = offset + len(chunk) == len(tokens)
            status = llama_cpp.llama_decode(self._ctx, batch)
            if status != 0:
                self._forget_kv(0)
                raise EngineError(f"llama_decode failed with status {status} (context full or invalid batch)")
            self._kv_tokens.extend(chunk)

    def _forget_kv(self, keep: int) -> None:
        if not llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1):
            llama_cpp.llama_memory_clear(self._memory, True)
            keep = 0
        del self._kv_tokens[keep:]

    def _prefill(self, prompt: list[int]) -> None:
        """Make the KV cache hold `prompt`, reusing the previous request's common prefix."""
        common = 0
        for mine, theirs in zip(self._kv_tokens, prompt):
            if mine != theirs:
                break
            common += 1
        # The last prompt token is always decoded again: its logits start the answer.
        common = min(common, len(prompt) - 1)
        self._forget_kv(common)
        self._decode(prompt[common:], common)

    def _sampler(self, params: SamplingParams):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if params.temperature <= 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        seed = llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        if params.top_p < 1.0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def generate(
        self, prompt: list[int], params: SamplingParams, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[TokenEvent]:
        """Yield the answer's tokens one by one; ends at end-of-generation, max_tokens, a full context or cancel.

        The generator's return value (StopIteration.value) is the finish reason.
        """
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise EngineError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        self._prefill(prompt)
        sampler = self._sampler(params)
        try:
            produced = 0
            while True:
                if cancelled():
                    return "cancelled"
                token = llama_cpp.llama_sampler_sample(sampler, self._ctx, -1)
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    return "stop"
                row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
                top: tuple[TokenLogprob, ...] = ()
                if params.top_logprobs:
                    top = tuple(
                        TokenLogprob(self.piece(t).decode(errors="replace"), lp, self.piece(t))
                        for t, lp in top_k_logprobs(row, params.top_logprobs)
                    )
                raw = self.piece(token)
                yield TokenEvent(token, raw.decode(errors="replace"), log_softmax_at(row, token), raw, top)
                produced += 1
                if produced >= params.max_tokens or len(self._kv_tokens) + 1 >= self.n_ctx:
                    return "length"
                self._decode([token], len(self._kv_tokens))
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None
            self._model = None
