"""The GGUF student in llama.cpp, driven through its C API: many sequences, one decode per step.

The high-level `llama_cpp.Llama` decodes one sequence and only returns log-probabilities with
`logits_all=True`, which keeps a logits row for every position of the context. Here one context
holds up to `parallel` sequences, each in its own KV stream; each step feeds all of them in one
`llama_decode` (in sequence-id order, so that llama.cpp computes them in one pass: see
`in_stream_order`), reads only the logits rows it asked for (`llama_get_logits_ith`), samples
each sequence with its own llama.cpp sampler chain and computes the chosen token's
log-probability from that row. Prompt prefixes already in the cache (the previous request's, or
another client's system prompt) are shared instead of recomputed. All calls on one engine except
`interrupt` must come from one thread (the scheduler's worker): llama.cpp contexts are not
thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, cast

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_types import ChatCompletionRequestMessage

from ..errors import AthanorError
from . import llama_log
from .batching import Feed, copy_by_state, in_stream_order, interruptible, place_prompt, plan_step
from .chat_markup import chat_tokens
from .logits import log_softmax_at
from .types import FinishReason, ModelInfo, SamplingParams, StepResult, StepStats, TokenEvent, TokenLogprob

log = logging.getLogger(__name__)

llama_log.install()

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


_FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


# A shared prefix is copied from another sequence only when that saves more than this many
# tokens of prefill (measured on 2 CPU cores, SmolLM2-135M F16: a copy ~1 ms for a short prefix,
# up to a whole stream's 2-12 ms, see `copy_by_state`; a prompt token 1-2.4 ms).
_MIN_COPY_TOKENS = 8


class EngineError(AthanorError):
    """llama.cpp refused a model or a step."""


def step_stats(logits: np.ndarray) -> StepStats:
    """Best log-probability, its margin over the second and the entropy of a logits row."""
    peak = float(logits.max())
    shifted = logits - peak
    weights = np.exp(shifted)
    total = float(weights.sum())
    log_norm = float(np.log(total))
    top2 = np.partition(logits, -2)[-2:]
    entropy = log_norm - float((weights * shifted).sum()) / total
    return StepStats(max_logprob=-log_norm, margin=float(top2[1] - top2[0]), entropy=max(0.0, entropy))


def ban_or(bias: float) -> float:
    """A logit bias as applied: -100 (OpenAI's floor) or below bans the token outright (-inf), where
    adding -100 could still leave it the best of a very peaked row."""
    return float("-inf") if bias <= -100 else bias


def top_k_logprobs(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of a logits row with their log-probabilities, best first."""
    peak = float(logits.max())
    log_norm = peak + float(np.log(np.exp(logits - peak).sum()))
    best = np.argpartition(-logits, k - 1)[:k]
    best = best[np.argsort(-logits[best])]
    return [(int(i), float(logits[i]) - log_norm) for i in best]


@dataclass
class _Sequence:
    params: SamplingParams
    sampler: llama_cpp.llama_sampler_p
    pending: list[int]
    """Tokens not yet in the KV cache: the prompt's tail, then the last sampled token."""
    produced: int = 0


class LlamaEngine:
    """One loaded GGUF model and one llama.cpp context decoding up to `parallel` sequences together."""

    def __init__(
        self,
        path: Path,
        name: str,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 0,
        n_gpu_layers: int = -1,
        flash_attn: str = "auto",
        parallel: int = 1,
        prompts_first: bool = True,
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
        self.parallel = parallel
        ctx_params = llama_cpp.llama_context_default_params()
        # One KV stream per sequence (not llama.cpp's unified pool): each sequence then attends
        # only to its own cells and greedy answers are token for token those of a lone sequence;
        # in a unified pool they drift (measured: log-probabilities off by ~0.03 on SmolLM2).
        ctx_params.n_ctx = n_ctx * parallel
        ctx_params.n_batch = min(n_batch, ctx_params.n_ctx)
        ctx_params.n_ubatch = ctx_params.n_batch
        ctx_params.n_seq_max = parallel
        ctx_params.kv_unified = False
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.no_perf = True
        ctx_params.flash_attn_type = _FLASH_ATTN[flash_attn]
        self._ctx = llama_cpp.llama_init_from_model(self._model, ctx_params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineError(
                f"llama.cpp could not create a context of {n_ctx} tokens for {parallel} sequences; "
                "lower [student].n_ctx or [student].parallel"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        # A step of generating tokens can be cut short when a prompt arrives (`interrupt`). llama.cpp
        # polls its abort callback at every graph node, from its own threads: a Python callback would
        # take the GIL a thousand times a step, so the callback is libc's strlen over a two-byte flag
        # (length 1, read as true, once the first byte is set), pointed at a flag that is never set
        # during the steps that must not be cut.
        strlen = ctypes.cast(ctypes.CDLL(None).strlen, ctypes.c_void_p).value
        assert strlen is not None, "a function libc exports has an address"
        self._abort_check = llama_cpp.ggml_abort_callback(strlen)
        self._interrupt_flag = ctypes.create_string_buffer(2)
        self._never_flag = ctypes.create_string_buffer(2)
        self._armed = False
        self._owed_step = False  # after a cut, the next generating step runs to the end
        self.interrupted_steps = 0
        """Decode steps abandoned part-way for a new prompt."""
        self._n_batch = ctx_params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx = n_ctx
        # Tokens whose KV cells each sequence holds, in position order. Kept after a sequence
        # ends, so the next prompt that starts the same way reuses them.
        self._kv: dict[int, list[int]] = {seq: [] for seq in range(parallel)}
        self._active: dict[int, _Sequence] = {}  # insertion order = admission order
        self.prompts_first = prompts_first
        self._last_prompts_only = False
        self.prompt_tokens_reused = 0
        """Prompt tokens whose KV cells came from an earlier request (own slot or a copy)."""
        self.prompt_tokens_computed = 0
        self.state_copies = 0
        """Shared prefixes copied through the sequence state (the cells in use), not the whole stream."""
        self._state_buffer = (ctypes.c_uint8 * 0)()
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
            constrains_output=True,
        )
        self._formatter = self._chat_formatter()
        self._special_texts: list[str] | None = None
        # Read now, not on the first chat request: the vocabulary scan would land on one user's answer.
        self.special_texts()

    # --- text <-> tokens -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Tokens of `text`; special tokens written in it (chat markup) are parsed as such unless
        `parse_special` is False (a caller's own text: see `chat_prompt`)."""
        data = text.encode()
        capacity = len(data) + 8
        buffer = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if count < 0:
            capacity = -count
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special,
                                             parse_special)
        return list(buffer[:count])

    def special_texts(self) -> list[str]:
        """The texts llama.cpp parses as special tokens (`<|im_start|>` ...), read from the vocabulary once."""
        if self._special_texts is None:
            parsed = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            self._special_texts = [
                self.piece(token).decode(errors="replace") for token in range(llama_cpp.llama_vocab_n_tokens(self._vocab))
                if llama_cpp.llama_vocab_get_attr(self._vocab, token) & parsed
            ]
        return self._special_texts

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

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render messages with the model's own chat template and tokenize the result.

        Chat markup typed inside a message stays text: only the template's own markup becomes
        control tokens (see chat_markup.py).
        """
        # The template writes BOS itself where the model wants it; don't add a second one.
        def markup(text: str) -> list[int]:
            return self.tokenize(text, add_special=False)

        def plain(text: str) -> list[int]:
            return self.tokenize(text, add_special=False, parse_special=False)

        def render(msgs: list[dict[str, Any]]) -> str:
            # OpenAI chat messages (checked at the API face) as plain dicts; the template only reads them.
            return self._formatter(messages=cast("list[ChatCompletionRequestMessage]", msgs)).prompt

        return chat_tokens(render, messages, markup, plain, self.special_texts())

    # --- sequences ---------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Sequences being prefilled or generated."""
        return len(self._active)

    @property
    def free(self) -> int:
        return self.parallel - len(self._active)

    def add(self, prompt: list[int], params: SamplingParams) -> int:
        """Admit a prompt into a free sequence and return its id; the next steps prefill and generate it."""
        if not prompt:
            raise EngineError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise EngineError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        for token, _ in params.logit_bias:
            if not 0 <= token < self.n_vocab:  # llama.cpp would index past the logits row
                raise EngineError(f"logit_bias names token {token}, outside the vocabulary of {self.n_vocab}")
        free = [seq for seq in range(self.parallel) if seq not in self._active]
        if not free:
            raise EngineError("no free sequence; the scheduler admits at most `parallel` requests")
        sampler = self._sampler(params)  # first: a grammar llama.cpp refuses leaves the KV cells untouched
        placement = place_prompt(free, self._kv, prompt, min_copy=_MIN_COPY_TOKENS, reuse_prefix=params.seed is None)
        seq, reuse = placement.slot, placement.reuse
        if placement.source == seq:
            if not llama_cpp.llama_memory_seq_rm(self._memory, seq, reuse, -1):
                reuse = 0
                llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        else:
            # Across KV streams llama.cpp copies whole sequences only (a partial range aborts the
            # process): copy all of the source, then cut what does not match.
            llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
            if not (copy_by_state(len(self._kv[placement.source]), self.n_ctx)
                    and self._copy_by_state(placement.source, seq)):
                llama_cpp.llama_memory_seq_cp(self._memory, placement.source, seq, -1, -1)
            llama_cpp.llama_memory_seq_rm(self._memory, seq, reuse, -1)
        self._kv[seq] = list(prompt[:reuse])
        self.prompt_tokens_reused += reuse
        self.prompt_tokens_computed += len(prompt) - reuse
        self._active[seq] = _Sequence(params, sampler, list(prompt[reuse:]))
        self._interrupt_flag[0] = b"\x00"  # whatever asked for an interruption is being served
        return seq

    def _copy_by_state(self, source: int, seq: int) -> bool:
        """Copy `source`'s KV cells into `seq`'s empty stream through llama.cpp's sequence state; False
        (and `seq` left empty) when llama.cpp refuses, for the caller to copy the whole stream instead."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, source)
        if len(self._state_buffer) < size:
            self._state_buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx, self._state_buffer, size, source)
        if written and llama_cpp.llama_state_seq_set_data(self._ctx, self._state_buffer, written, seq) == written:
            self.state_copies += 1
            return True
        llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        return False

    def remove(self, seq: int) -> None:
        """End a sequence (finished or abandoned); its KV cells stay for prefix reuse."""
        sequence = self._active.pop(seq, None)
        if sequence is not None:
            llama_cpp.llama_sampler_free(sequence.sampler)

    def step(self) -> list[StepResult]:
        """One `llama_decode` over every active sequence; returns the tokens sampled and the ends.

        Finished and failed sequences are removed before this returns.
        """
        if not self._active:
            return []
        pending = {seq: s.pending for seq, s in self._active.items()}
        prompts_only = self.prompts_first and not self._last_prompts_only
        planned = plan_step(pending, {seq: len(self._kv[seq]) for seq in self._active}, list(self._active),
                            self._n_batch, prompts_only)
        self._last_prompts_only = prompts_only and all(len(pending[f.seq]) > 1 for f in planned)
        room = self._n_batch - sum(len(f.tokens) for f in planned)
        feeds = in_stream_order(planned, self._fillers(), room)
        generating = interruptible(feeds)
        self._arm(generating and self.prompts_first and not self._owed_step)
        status = self._decode(feeds)
        self._arm(False)
        self._drop_fillers(feeds)
        if status == 2:  # cut short by `interrupt`: llama.cpp dropped the step's cells, nothing advanced
            self.interrupted_steps += 1
            self._interrupt_flag[0] = b"\x00"
            self._owed_step = True  # so arrivals one after another cannot starve the answers
            return []
        if generating and status == 0:
            self._owed_step = False
        if status == 1:  # no room in the KV pool: drop the idle sequences' cached prefixes, try again
            for seq in range(self.parallel):
                if seq not in self._active and self._kv[seq]:
                    llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
                    self._kv[seq] = []
            feeds = in_stream_order(planned, {}, 0)
            status = self._decode(feeds)
        if status != 0:
            error = EngineError(f"llama_decode failed with status {status} (KV cache full or invalid batch)")
            results = []
            for feed in planned:
                llama_cpp.llama_memory_seq_rm(self._memory, feed.seq, -1, -1)
                self._kv[feed.seq] = []
                self.remove(feed.seq)
                results.append(StepResult(feed.seq, error=error))
            return results
        results = []
        index = 0
        for feed in feeds:
            index += len(feed.tokens)
            if feed.filler:
                continue
            sequence = self._active[feed.seq]
            self._kv[feed.seq].extend(feed.tokens)
            del sequence.pending[: len(feed.tokens)]
            if feed.wants_logits:
                result = self._sample(feed.seq, sequence, index - 1)
                results.append(result)
                if result.finish is not None:
                    self.remove(feed.seq)
        return results

    def interrupt(self) -> None:
        """Ask the decode step in progress to stop if it only generates (safe from any thread): a new
        prompt is waiting, and its first token should not wait for a step it is not part of. The
        step's work is lost and redone after the prompt's; a step that prefills is never cut."""
        self._interrupt_flag[0] = b"\x01"

    def _arm(self, armed: bool) -> None:
        llama_log.quiet(armed)
        if armed != self._armed:
            flag = self._interrupt_flag if armed else self._never_flag
            llama_cpp.llama_set_abort_callback(self._ctx, self._abort_check, ctypes.addressof(flag))
            self._armed = armed

    def _fillers(self) -> dict[int, tuple[int, int]]:
        """For each sequence with room for one more cell: a token to bridge a gap with, and its position."""
        fillers = {}
        for seq, tokens in self._kv.items():
            if len(tokens) + 1 < self.n_ctx:
                fillers[seq] = (tokens[-1] if tokens else 0, len(tokens))
        return fillers

    def _drop_fillers(self, feeds: list[Feed]) -> None:
        for feed in feeds:
            if feed.filler:
                llama_cpp.llama_memory_seq_rm(self._memory, feed.seq, feed.start, -1)

    def _decode(self, feeds: list[Feed]) -> int:
        batch = self._batch
        i = 0
        for feed in feeds:
            for offset, token in enumerate(feed.tokens):
                batch.token[i] = token
                batch.pos[i] = feed.start + offset
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = feed.seq
                batch.logits[i] = False
                i += 1
            batch.logits[i - 1] = feed.wants_logits
        batch.n_tokens = i
        status: int = llama_cpp.llama_decode(self._ctx, batch)
        return status

    def _sample(self, seq: int, sequence: _Sequence, index: int) -> StepResult:
        token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, index)
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            return StepResult(seq, finish="stop")
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
        params = sequence.params
        top: tuple[TokenLogprob, ...] = ()
        if params.top_logprobs:
            top = tuple(
                TokenLogprob(self.piece(t).decode(errors="replace"), lp, self.piece(t))
                for t, lp in top_k_logprobs(row, params.top_logprobs)
            )
        raw = self.piece(token)
        event = TokenEvent(token, raw.decode(errors="replace"), log_softmax_at(row, token), raw, top,
                           step_stats(row))
        sequence.produced += 1
        if sequence.produced >= params.max_tokens or len(self._kv[seq]) + 1 >= self.n_ctx:
            return StepResult(seq, event, finish="length")
        sequence.pending.append(token)
        return StepResult(seq, event)

    def _sampler(self, params: SamplingParams) -> llama_cpp.llama_sampler_p:
        chain: llama_cpp.llama_sampler_p = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if params.json_format is not None:
            # The grammar first: every later stage chooses among the tokens that keep the answer JSON.
            grammar = llama_cpp.llama_sampler_init_grammar(self._vocab, params.json_format.grammar().encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(chain)
                raise EngineError("llama.cpp could not parse the grammar made from this response_format's schema")
            llama_cpp.llama_sampler_chain_add(chain, grammar)
        # Bias and penalties first, on the whole vocabulary, as OpenAI applies them: before the
        # choice, greedy or sampled. The reported log-probabilities stay the model's own (the raw row).
        if params.logit_bias:
            entries = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
                *(llama_cpp.llama_logit_bias(token, ban_or(bias)) for token, bias in params.logit_bias))
            # llama.cpp copies the entries: the array may go once the sampler exists.
            llama_cpp.llama_sampler_chain_add(
                chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(params.logit_bias), entries))
        if params.penalized:
            # Counts over everything this sequence generated (the chain accepts each sampled token), not
            # the prompt: OpenAI's "frequency in the text so far". No repeat penalty (1.0).
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_penalties(
                self.n_vocab, self.n_ctx, 1.0, params.frequency_penalty, params.presence_penalty))
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
    ) -> Generator[TokenEvent, None, FinishReason]:
        """One sequence on its own (tests, benchmarks): yield its tokens; the return value is the finish reason.

        Not for use while the scheduler drives this engine.
        """
        if self._active:
            raise EngineError("generate() needs the engine to itself; other sequences are active")
        seq = self.add(prompt, params)
        try:
            while True:
                if cancelled():
                    return "cancelled"
                for result in self.step():
                    if result.error is not None:
                        raise result.error
                    if result.event is not None:
                        yield result.event
                    if result.finish is not None:
                        return result.finish
        finally:
            self.remove(seq)

    def close(self) -> None:
        if self._ctx:
            for seq in list(self._active):
                self.remove(seq)
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None
            self._model = None
