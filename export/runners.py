"""Run the merged model and each artifact on the same token sequences (the I/O half of verification).

Every runner answers two questions: the logits at every position of a token sequence
(teacher forcing), and a free-running greedy continuation, timed. All runners are fed the same
token ids, so differences are the artifact's, not a tokenizer's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .verify import Figures, greedy_match, mean_kl, top1_agreement


class Runner(Protocol):
    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits rows for every position of `tokens` (row i predicts token i + 1)."""

    def greedy(self, prompt: list[int], max_new: int, stop: set[int]) -> tuple[list[int], float]:
        """Greedy continuation (ends with a stop token if one came) and the seconds spent decoding it."""


class TorchRunner:
    """The merged transformers model (the reference)."""

    def __init__(self, model) -> None:
        self.model = model

    def logits(self, tokens: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.tensor([tokens])).logits[0].float().numpy()

    def greedy(self, prompt: list[int], max_new: int, stop: set[int]) -> tuple[list[int], float]:
        import torch

        out: list[int] = []
        with torch.inference_mode():
            result = self.model(torch.tensor([prompt]), use_cache=True)
            started = time.perf_counter()
            for _ in range(max_new):
                token = int(result.logits[0, -1].argmax())
                out.append(token)
                if token in stop or len(out) == max_new:
                    break
                result = self.model(torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True)
        return out, time.perf_counter() - started


class LlamaCppRunner:
    """A GGUF artifact in llama.cpp (llama-cpp-python's high-level API, all-logits mode)."""

    def __init__(self, path: Path, n_ctx: int = 512, threads: int = 0) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                                   n_threads=threads or None, n_gpu_layers=0)

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def greedy(self, prompt: list[int], max_new: int, stop: set[int]) -> tuple[list[int], float]:
        self.llm.reset()
        self.llm.eval(prompt)
        out: list[int] = []
        started = time.perf_counter()
        while len(out) < max_new:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(token)
            if token in stop or len(out) == max_new:
                break
            self.llm.eval([token])
        return out, time.perf_counter() - started

    def close(self) -> None:
        self.llm.close()


class OnnxRunner:
    """An ONNX artifact in onnxruntime, through the engine's own decoder."""

    def __init__(self, folder: Path, threads: int = 0) -> None:
        from appliance.engine.onnx import OnnxDecoder

        self.decoder = OnnxDecoder(folder, threads=threads)

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self.decoder.forward(tokens, None, 0)[0]

    def greedy(self, prompt: list[int], max_new: int, stop: set[int]) -> tuple[list[int], float]:
        logits, past = self.decoder.forward(prompt, None, 0)
        length = len(prompt)
        out: list[int] = []
        started = time.perf_counter()
        while len(out) < max_new:
            token = int(np.argmax(logits[-1]))
            out.append(token)
            if token in stop or len(out) == max_new:
                break
            logits, past = self.decoder.forward([token], past, length)
            length += 1
        return out, time.perf_counter() - started


@dataclass
class Reference:
    """The merged model's behaviour on the held-out prompts."""

    prompts: list[list[int]]
    continuations: list[list[int]]
    logits: list[np.ndarray]
    """Per prompt: the rows that predict each continuation token."""
    tokens_per_s: float


def _rows(runner: Runner, prompt: list[int], continuation: list[int]) -> np.ndarray:
    # Rows len(prompt)-1 .. end-1 predict the continuation's tokens.
    full = prompt + continuation[:-1]
    return runner.logits(full)[len(prompt) - 1:]


def _speed(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def reference(runner: Runner, prompts: list[list[int]], max_new: int, stop: set[int]) -> Reference:
    """Greedy continuations of the merged model and its logits along them."""
    continuations, rows, generated, seconds = [], [], 0, 0.0
    for prompt in prompts:
        continuation, spent = runner.greedy(prompt, max_new, stop)
        continuations.append(continuation)
        rows.append(_rows(runner, prompt, continuation))
        generated += max(0, len(continuation) - 1)  # the first token comes from the prompt's forward pass
        seconds += spent
    return Reference(prompts, continuations, rows, _speed(generated, seconds))


def measure(runner: Runner, ref: Reference, stop: set[int]) -> Figures:
    """Compare `runner` with the reference: agreement and KL along the reference, greedy match, speed."""
    reference_rows, candidate_rows, continuations = [], [], []
    generated, seconds = 0, 0.0
    for prompt, continuation, rows in zip(ref.prompts, ref.continuations, ref.logits):
        reference_rows.append(rows)
        candidate_rows.append(_rows(runner, prompt, continuation))
        mine, spent = runner.greedy(prompt, len(continuation), stop)
        continuations.append(mine)
        generated += max(0, len(mine) - 1)
        seconds += spent
    ref_all = np.concatenate(reference_rows)
    cand_all = np.concatenate(candidate_rows)
    return Figures(
        agreement=top1_agreement(ref_all, cand_all),
        kl_mean=mean_kl(ref_all, cand_all),
        greedy_match=greedy_match(ref.continuations, continuations),
        tokens_per_s=_speed(generated, seconds),
        positions=len(ref_all),
    )
