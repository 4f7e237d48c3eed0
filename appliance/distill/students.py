"""Running a student (or a local teacher) on held-out prompts, greedily, keeping each token's log-probability.

A `.gguf` file runs in llama.cpp (the engine the daemon serves with); a peft adapter folder or
a Hugging Face model folder runs in transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import DistillError
from .models import device, end_of_generation, is_adapter, load_model, load_tokenizer
from ..protocol.training import read_training_meta


@dataclass(frozen=True)
class LocalAnswer:
    text: str
    logprobs: tuple[float, ...]
    signals: dict[str, float] | None = None
    """The router's signals for this answer, read as the daemon reads them (llama.cpp runs only)."""
    early_signals: dict[str, float] | None = None
    """The same signals of its first `hold_tokens` tokens: what the early router decides from."""


class Runner(Protocol):
    name: str

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> LocalAnswer: ...

    def close(self) -> None: ...


class GGUFRunner:
    """A GGUF model in llama.cpp, one sequence at a time."""

    def __init__(self, path: Path, n_ctx: int = 2048, n_threads: int = 0, hold_tokens: int | None = None) -> None:
        from ..config import RoutingConfig
        from ..engine.llama import LlamaEngine

        self.name = Path(path).name
        self._hold = hold_tokens or RoutingConfig().hold_tokens
        self._engine = LlamaEngine(Path(path), self.name, n_ctx=n_ctx, n_threads=n_threads, parallel=1)

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> LocalAnswer:
        from ..engine.types import SamplingParams

        prompt = self._engine.chat_prompt(messages)
        events = list(self._engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0)))
        text = b"".join(e.raw for e in events).decode(errors="replace")
        from ..routing.router import last_user_text
        from ..routing.signals import signals

        question = last_user_text(messages)
        return LocalAnswer(text.strip(), tuple(e.logprob for e in events), signals(question, events).as_dict(),
                           signals(question, events[:self._hold]).as_dict())

    def close(self) -> None:
        self._engine.close()


class HFRunner:
    """A transformers model (a base folder or GGUF, or a peft adapter on its base), greedy decoding."""

    def __init__(self, path: Path) -> None:
        from ..extras import require

        require("train", f"running {path} through transformers (give its exported .gguf to evaluate without that)")
        import torch

        path = Path(path)
        self.name = path.name
        self._device = device()
        if is_adapter(path):
            from peft import PeftModel

            base = _adapter_base(path)
            # The adapter folder carries the tokenizer it was trained with (and saves decoding a GGUF's).
            self._tokenizer = load_tokenizer(path if (path / "tokenizer_config.json").is_file() else base)
            self._model = PeftModel.from_pretrained(load_model(base, self._device), str(path)).merge_and_unload()
        else:
            self._tokenizer = load_tokenizer(path)
            self._model = load_model(path, self._device)
        self._model.eval()
        # Stop where llama.cpp would: at any end-of-generation token (SmolLM2's `<|im_end|>` is not
        # the eos transformers reads from its GGUF), so the answer scored is the one the daemon serves.
        self._stop = end_of_generation(self._tokenizer)
        self._torch = torch

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> LocalAnswer:
        torch = self._torch
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        prompt = prompt.to(self._device)
        with torch.no_grad():
            out = self._model.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_tokens, do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=self._tokenizer.pad_token_id,
                eos_token_id=sorted(self._stop),
            )
        new = out.sequences[0, prompt.shape[1]:].tolist()
        # The answer ends before the stop token: llama.cpp reports no end token either, and a special
        # token that is not a stop (e.g. `<|im_start|>`) stays visible, as the daemon would send it.
        end = next((i for i, token in enumerate(new) if token in self._stop), len(new))
        new = new[:end]
        logprobs = [float(torch.log_softmax(score[0].float(), -1)[token]) for score, token in zip(out.scores, new)]
        text = self._tokenizer.decode(new, skip_special_tokens=False)
        return LocalAnswer(text.strip(), tuple(logprobs))

    def close(self) -> None:
        self._model = None


def _adapter_base(adapter: Path) -> Path:
    meta = read_training_meta(adapter)
    if meta is not None and meta.base_model:
        return Path(meta.base_model)
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base or not Path(base).exists():
        why = "it has no training.json" if meta is None else "its training.json names none"
        raise DistillError(f"cannot tell the base model of the adapter {adapter}; {why}")
    return Path(base)


def open_runner(path: Path, **gguf_options: Any) -> Runner:
    """The right runner for a `.gguf` file, a peft adapter folder or a model folder."""
    path = Path(path)
    from appliance.protocol.manifest import choose_artifact, find_manifest, read_manifest, verify_artifact

    manifest = find_manifest(path)
    if manifest is not None:
        # An `athanor export` folder: serve what the daemon would, its smallest verified GGUF.
        root = manifest.parent
        path = Path(verify_artifact(choose_artifact(read_manifest(manifest), "gguf"), root))
    if path.is_file() and path.suffix == ".gguf":
        return GGUFRunner(path, **gguf_options)
    if path.is_dir():
        return HFRunner(path)
    raise DistillError(f"no student at {path}: give a .gguf file, a peft adapter folder or a model folder")
