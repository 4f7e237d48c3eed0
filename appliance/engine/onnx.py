"""An ONNX student in onnxruntime: a decoder exported with past key values, one sequence at a time.

`OnnxDecoder` runs the graph (input ids + past key values in, logits + present key values out);
the export stage verifies artifacts with it. `OnnxEngine` puts the scheduler's interface on top
(`add`/`step`/`remove`, parallel = 1) so the daemon can serve an ONNX export like a GGUF one.
`[student].onnx_provider` picks onnxruntime's execution provider (`choose_providers`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import AthanorError
from .chat_markup import chat_tokens
from .logits import log_softmax
from .types import ModelInfo, SamplingParams, StepResult, TokenEvent, TokenLogprob

MODEL_FILE = "model.onnx"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_FIX = "`ATHANOR_GPU=cuda bash scripts/quickstart.sh` installs onnxruntime-gpu"

Provider = Literal["auto", "cpu", "cuda"]


class OnnxEngineError(AthanorError):
    """onnxruntime refused a model or a step."""


def choose_providers(available: list[str], setting: Provider) -> list[str]:
    """onnxruntime's providers for `setting`, given what this onnxruntime build offers.

    auto: CUDA when offered, else the CPU; cpu: the CPU alone; cuda: CUDA or an error naming the fix.
    The CPU stays listed behind CUDA because onnxruntime places nodes CUDA has no kernel for there.
    """
    if setting == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if setting == "cuda":
        raise OnnxEngineError(f"[student].onnx_provider = \"cuda\" but onnxruntime offers no {CUDA} "
                              f"(it offers {', '.join(available) or 'none'}); {CUDA_FIX}, "
                              f"or set onnx_provider to \"auto\" or \"cpu\"")
    return [CPU]


class OnnxDecoder:
    """One onnxruntime session over an optimum `text-generation-with-past` export."""

    def __init__(self, folder: Path, threads: int = 0, provider: Provider = "auto") -> None:
        from ..extras import require

        require("onnx", f"the ONNX student {folder}")
        import onnxruntime as ort

        model = folder / MODEL_FILE
        if not model.is_file():
            raise OnnxEngineError(f"no {MODEL_FILE} in {folder}; re-run `athanor export --onnx fp32`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3
        providers = choose_providers(ort.get_available_providers(), provider)
        try:
            self.session = ort.InferenceSession(str(model), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise OnnxEngineError(f"onnxruntime could not load {model}: {exc}; re-run `athanor export`") from None
        if provider == "cuda" and CUDA not in self.session.get_providers():
            # onnxruntime-gpu lists CUDA even when the CUDA/cuDNN libraries or the driver are missing,
            # then quietly runs on the CPU: a required GPU must fail here, not serve slowly.
            raise OnnxEngineError(f"[student].onnx_provider = \"cuda\" but onnxruntime could not start {CUDA} "
                                  f"(CUDA or cuDNN libraries, or the NVIDIA driver, missing?); {CUDA_FIX}")
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._input_names = set(inputs)
        self._past = sorted((n for n in inputs if n.startswith("past_key_values.")), key=_layer_order)
        self._past_shapes = {n: (int(inputs[n].shape[1]), int(inputs[n].shape[3])) for n in self._past}
        self._past_dtype = np.float16 if inputs[self._past[0]].type == "tensor(float16)" else np.float32
        self._outputs = ["logits"] + [n.replace("past_key_values.", "present.") for n in self._past]
        self.providers = self.session.get_providers()

    def empty_past(self) -> list[np.ndarray]:
        return [np.zeros((1, heads, 0, dim), dtype=self._past_dtype) for heads, dim in
                (self._past_shapes[n] for n in self._past)]

    def forward(self, tokens: list[int], past: list[np.ndarray] | None, start: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (len(tokens) x vocab, float32) for `tokens` placed after `start` cached positions."""
        past = past if past is not None else self.empty_past()
        count = len(tokens)
        feed = {"input_ids": np.asarray([tokens], dtype=np.int64)}
        if "attention_mask" in self._input_names:
            feed["attention_mask"] = np.ones((1, start + count), dtype=np.int64)
        if "position_ids" in self._input_names:
            feed["position_ids"] = np.arange(start, start + count, dtype=np.int64)[None, :]
        feed.update(zip(self._past, past))
        logits, *present = self.session.run(self._outputs, feed)
        return logits[0].astype(np.float32), present


def _layer_order(name: str) -> tuple[int, int]:
    _, layer, kind = name.split(".")
    return int(layer), 0 if kind == "key" else 1


_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_decoder() -> dict[str, int]:
    # GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to 256 + n.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


class OnnxEngine:
    """An exported ONNX student decoding one sequence at a time (parallel = 1)."""

    def __init__(self, folder: Path, name: str, n_ctx: int = 2048, n_threads: int = 0,
                 provider: Provider = "auto") -> None:
        from transformers import AutoTokenizer

        self._decoder: OnnxDecoder | None = OnnxDecoder(folder, threads=n_threads, provider=provider)
        # transformers leaves from_pretrained unannotated.
        self._tokenizer = AutoTokenizer.from_pretrained(folder)  # type: ignore[no-untyped-call]
        # Every added token is matched in text before BPE runs: the texts chat markup is made of.
        self._special_texts = [token.content for token in self._tokenizer.added_tokens_decoder.values()]
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        self.n_ctx = min(n_ctx, int(config.get("max_position_embeddings") or n_ctx))
        self.n_vocab = int(config.get("vocab_size") or len(self._tokenizer))
        self.parallel = 1
        # One sequence, no prefix reuse and steps of one token: the scheduler's batching counters do not
        # apply here, and None shows them as unknown rather than as a misleading 0.
        self.prompt_tokens_reused: int | None = None
        self.prompt_tokens_computed: int | None = None
        self.interrupted_steps: int | None = None
        self._eog = self._end_tokens(folder, config)
        self._bytes = _byte_decoder()
        self._piece_cache: dict[int, bytes] = {}
        self._seq: dict[str, Any] | None = None
        files = [p for p in folder.iterdir() if p.is_file() and p.name.startswith(MODEL_FILE)]
        self.info = ModelInfo(
            name=name, path=folder / MODEL_FILE, n_ctx=self.n_ctx, n_vocab=self.n_vocab,
            size_bytes=sum(p.stat().st_size for p in files), n_params=0,
            description=f"{config.get('model_type', 'onnx')} ONNX", gpu_offload=CUDA in self._decoder.providers,
        )

    def _end_tokens(self, folder: Path, config: dict[str, Any]) -> set[int]:
        ends: set[int] = set()
        for source in (config, _read_json(folder / "generation_config.json")):
            value = source.get("eos_token_id")
            ends.update(value if isinstance(value, list) else [value] if value is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ends.add(self._tokenizer.eos_token_id)
        return ends

    # --- text <-> tokens -------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        ids: list[int] = self._tokenizer(text, add_special_tokens=add_special)["input_ids"]
        return ids

    def chat_prompt(self, messages: list[dict[str, Any]]) -> list[int]:
        """Render messages with the export's chat template and tokenize them; chat markup typed inside
        a message stays text (see chat_markup.py)."""
        def markup(text: str) -> list[int]:
            return self.tokenize(text, add_special=False)

        def plain(text: str) -> list[int]:
            ids: list[int] = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            return ids

        def render(msgs: list[dict[str, Any]]) -> str:
            text: str = self._tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return text

        return chat_tokens(render, messages, markup, plain, self._special_texts)

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (byte-level BPE and SentencePiece vocabularies)."""
        cached = self._piece_cache.get(token)
        if cached is None:
            text = self._tokenizer.convert_ids_to_tokens(token) or ""
            match = _BYTE_TOKEN.match(text)
            if match:
                cached = bytes([int(match.group(1), 16)])
            elif token not in self._tokenizer.all_special_ids and all(c in self._bytes for c in text):
                cached = bytes(self._bytes[c] for c in text)
            else:
                cached = text.replace("\u2581", " ").encode()
            self._piece_cache[token] = cached
        return cached

    # --- the scheduler's interface -------------------------------------------------------------

    @property
    def free(self) -> int:
        return 0 if self._seq is not None else 1

    def add(self, prompt: list[int], params: SamplingParams) -> int:
        if not prompt:
            raise OnnxEngineError("empty prompt")
        if len(prompt) >= self.n_ctx:
            raise OnnxEngineError(f"prompt of {len(prompt)} tokens does not fit the context of {self.n_ctx}")
        if self._seq is not None:
            raise OnnxEngineError("no free sequence; the ONNX engine decodes one request at a time")
        for token, _ in params.logit_bias:
            if not 0 <= token < self.n_vocab:
                raise OnnxEngineError(f"logit_bias names token {token}, outside the vocabulary of {self.n_vocab}")
        rng = np.random.default_rng(params.seed)
        self._seq = {"params": params, "pending": list(prompt), "past": None, "length": 0, "produced": 0, "rng": rng,
                     "counts": {}}
        return 0

    def remove(self, seq: int) -> None:
        self._seq = None

    def step(self) -> list[StepResult]:
        seq = self._seq
        if seq is None:
            return []
        try:
            assert self._decoder is not None, "step() after close()"
            logits, seq["past"] = self._decoder.forward(seq["pending"], seq["past"], seq["length"])
        except Exception as exc:
            self._seq = None
            return [StepResult(0, error=OnnxEngineError(f"onnxruntime step failed: {exc}"))]
        seq["length"] += len(seq["pending"])
        row = logits[-1]
        params: SamplingParams = seq["params"]
        token = self._choose(adjusted_logits(row, params, seq["counts"]), params, seq["rng"])
        seq["counts"][token] = seq["counts"].get(token, 0) + 1
        if token in self._eog:
            self._seq = None
            return [StepResult(0, finish="stop")]
        logprobs = log_softmax(row)
        top: tuple[TokenLogprob, ...] = ()
        if params.top_logprobs:
            best = np.argsort(-logprobs)[: params.top_logprobs]
            top = tuple(TokenLogprob(self.piece(int(t)).decode(errors="replace"), float(logprobs[t]),
                                     self.piece(int(t))) for t in best)
        raw = self.piece(token)
        event = TokenEvent(token, raw.decode(errors="replace"), float(logprobs[token]), raw, top)
        seq["produced"] += 1
        if seq["produced"] >= params.max_tokens or seq["length"] + 1 >= self.n_ctx:
            self._seq = None
            return [StepResult(0, event, finish="length")]
        seq["pending"] = [token]
        return [StepResult(0, event)]

    def interrupt(self) -> None:
        """Nothing to cut short: a step decodes one token of one sequence."""

    @staticmethod
    def _choose(row: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
        if params.temperature <= 0:
            return int(np.argmax(row))
        probs = np.exp(log_softmax(row / params.temperature))
        if params.top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), params.top_p)) + 1]
            mask = np.zeros_like(probs)
            mask[keep] = probs[keep]
            probs = mask
        probs /= probs.sum()
        return int(rng.choice(len(probs), p=probs))

    def close(self) -> None:
        self._seq = None
        self._decoder = None


def adjusted_logits(row: np.ndarray, params: SamplingParams, counts: dict[int, int]) -> np.ndarray:
    """A logits row with `params`' logit_bias and penalties applied, as llama.cpp's sampler chain
    applies them for the GGUF engine: bias (-100 bans), then for each token generated so far
    `count * frequency_penalty + presence_penalty` off its logit. `row` itself is left as it is."""
    if not params.logit_bias and not (params.penalized and counts):
        return row
    row = row.astype(np.float32, copy=True)
    for token, bias in params.logit_bias:
        row[token] = -np.inf if bias <= -100 else row[token] + bias
    if params.penalized and counts:
        tokens = np.fromiter(counts, dtype=np.int64, count=len(counts))
        seen = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        row[tokens] -= seen * params.frequency_penalty + params.presence_penalty
    return row


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
