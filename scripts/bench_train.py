#!/usr/bin/env python3
"""Training throughput of `athanor train` on a CPU: the old batching and loss against the new, in one run.

The embedded SmolLM2-135M-Instruct (dequantized from its GGUF) is LoRA-trained with the default
[distill] LoRA settings on real Chinese hotel reviews (ChnSentiCorp, `label,review` lines) put as
the sentiment task the distillation tests use. Each setting trains one epoch over the same examples
(`--steps` batches of `--batch-size`), so every setting sees the same real tokens; the steps of the
settings alternate, so load on the machine falls on all alike. Reported: real (non-padding)
tokens per second, seconds per step and the share of computed positions that were padding.

    old:      batches of a random permutation; the model's own loss over all (batch, seq, vocab) logits
    grouped:  batches grouped by length (--ablate only)
    logits:   logits at the answer positions only (--ablate only)
    new:      both (what `athanor train` does now)

    nice -n 10 .venv/bin/python scripts/bench_train.py [--steps 12] [--batch-size 8] [--max-seq-len 512]

`--memory` measures instead what training a bigger student needs (issue #20 part 3): for each setting
of `--precisions` (fp32 or bf16, with or without gradient checkpointing, each at a batch size), LoRA
steps on reviews joined to exactly `--max-seq-len` tokens each; reported: the weights' bytes, the
LoRA weights' and Adam's, each step's working memory (the peak of tensor storage allocated during the
step: activations, logits, gradients; tracked op by op, so independent of the allocator), the rise of
the process's RSS during the step, and tokens/s. From the measured bf16 + checkpointing step it
computes what a 1.5B student (Qwen2.5-1.5B) needs in bf16 with gradient checkpointing, term by term.

    nice -n 10 .venv/bin/python scripts/bench_train.py --memory [--memory-steps 1] [--out bench-out/train-memory.json]
"""

from __future__ import annotations

import argparse
import copy
import csv
import ctypes
import gc
import json
import random
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.distill.models import load_model, load_tokenizer  # noqa: E402
from appliance.distill.records import Record  # noqa: E402
from appliance.distill.train import (  # noqa: E402
    IGNORE, TrainSettings, _kd_aligned, _keeps_logits, autocast, batch_loss, chat_tokens, collate, epoch_batches,
    fit_example, make_trainable, padding_share, present_modules)

DATA = Path("/work/shared/data/ChnSentiCorp_htl_all.csv")
ROLE = "You label the sentiment of reviews. Answer with one word: positive or negative."
QUESTION = "Review: {review}\nSentiment?"
MODES = {"old": (False, False), "grouped": (True, False), "logits": (False, True), "new": (True, True)}
"""name -> (group_by_length, logits at the answer positions only)."""


def reviews(path: Path, n: int, seed: int) -> list[Record]:
    """`n` random reviews as sentiment records (label 1 = positive)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) == 2 and r[0] in ("0", "1") and r[1].strip()]
    random.Random(seed).shuffle(rows)
    return [Record(prompt=QUESTION.format(review=text.strip()), answer="positive" if label == "1" else "negative",
                   role=ROLE, category="sentiment") for label, text in rows[:n]]


# --- --memory ---------------------------------------------------------------------------------------

QWEN_1_5B = {"name": "Qwen2.5-1.5B", "params": 1.54e9, "layers": 28, "hidden": 1536, "intermediate": 8960,
             "kv_dim": 256, "vocab": 151936}
"""Its config.json: 12 query heads and 2 key/value heads of 128, tied embeddings."""
GB = 1e9
CUDA_CONTEXT = 1.0 * GB
"""Allowance for the CUDA context, kernels and allocator slack on a GPU (not measurable on a CPU)."""
MEMORY_SETTINGS = {"fp32": ("fp32", False), "fp32+ckpt": ("fp32", True), "bf16": ("bf16", False),
                   "bf16+ckpt": ("bf16", True)}
"""name -> (precision, gradient checkpointing)."""
MEASURED = "fp32@8,fp32@1,fp32+ckpt@1,bf16@1,bf16+ckpt@1"
"""Default settings measured, each @ its batch size. bf16 at batch 1 only: this CPU (AVX2, no AVX512-BF16
or AMX) computes bf16 matmuls in a slow fallback (~40× fp32 in the backward pass), and working memory is
linear in the batch (fp32@8 against fp32@1 shows it)."""


class TensorMemory:
    """Bytes of tensor storage allocated while active and not yet freed, op by op (a dispatch mode with a weak
    reference per new storage); `peak` is the most at any moment. Storage that existed before (weights,
    optimizer state) is not counted unless re-allocated: this is a step's working memory, allocator aside."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                tracker.seen(args, kwargs, out)
                return out

        self.mode = Mode()
        self.live: dict[int, int] = {}
        self.refs: dict[int, Any] = {}
        self.now = self.peak = self.ops = 0

    def seen(self, args: Any, kwargs: Any, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        self.ops += 1
        # An in-place op or a view returns storage that was there already.
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            self.refs[key] = weakref.ref(storage, lambda _, key=key: self.freed(key))

    def freed(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __enter__(self) -> "TensorMemory":
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


class RssPeak:
    """The process's highest resident set size while active, sampled every few milliseconds."""

    def __init__(self, every: float = 0.005) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self) -> "RssPeak":
        self.peak = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def release_memory() -> None:
    """Give freed memory back to the system, so an RSS rise measures this step and not what came before."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def filled_examples(tokenizer: Any, records: list[Record], count: int, length: int) -> list[tuple[list[int], list[int]]]:
    """`count` examples of exactly `length` tokens: consecutive reviews joined until the prompt is long enough
    (cut to fit, as training cuts), the answer the first review's label."""
    examples, index = [], 0
    while len(examples) < count:
        first, text = records[index % len(records)], []
        while True:
            text.append(records[index % len(records)].prompt)
            index += 1
            prompt, answer = chat_tokens(tokenizer, Record(prompt="\n".join(text), answer=first.answer, role=first.role))
            if len(prompt) + len(answer) >= length:
                break
        examples.append(fit_example(prompt, answer, length))
    return examples


def logit_bytes(vocab: int, hidden: int, positions: int = 64) -> float:
    """Working memory per answer logit of the loss path (lm_head under bf16 autocast, `_kd_aligned`'s upcast
    and cross-entropy, and their backward), measured on `positions` answer positions."""
    import torch

    weight = torch.randn(vocab, hidden, dtype=torch.bfloat16) * 0.02
    hidden_states = torch.randn(1, positions, hidden, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, vocab, (1, positions))
    release_memory()
    with TensorMemory() as tracked:
        with autocast("cpu", "bf16"):
            logits = torch.nn.functional.linear(hidden_states, weight)
        _kd_aligned(logits, logits, target, 2.0, 0.0).backward()
        del logits
    return tracked.peak / (positions * vocab)


def lora_params(shape: dict[str, int], r: int, targets: tuple[str, ...]) -> int:
    """LoRA weights of rank `r` on `targets` of a Llama/Qwen-shaped model: r × (in + out) per projection."""
    h, i, kv = shape["hidden"], shape["intermediate"], shape["kv_dim"]
    sizes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
             "up_proj": (h, i), "down_proj": (i, h)}
    return shape["layers"] * sum(r * (sizes[t][0] + sizes[t][1]) for t in targets if t in sizes)


def estimate(measured: dict[str, Any], small: dict[str, int], batch: int, seq: int, per_logit: float,
             settings: TrainSettings) -> dict[str, Any]:
    """Memory of a bf16 + gradient-checkpointing LoRA step of QWEN_1_5B at `batch` × `seq`, computed from the
    measured step of the small model (`measured`: the bf16+ckpt setting, at its own batch and seq)."""
    big: dict[str, Any] = QWEN_1_5B
    ratio = ((big["layers"] * big["hidden"] * seq * batch)
             / (small["layers"] * small["hidden"] * measured["seq_len"] * measured["batch_size"]))
    n_lora = lora_params(big, settings.lora_r, settings.target_modules)
    terms = {
        "weights_bf16": big["params"] * 2,
        "lora_fp32_weights_grads_adam": n_lora * (4 + 4 + 8),
        "activations_scaled": measured["step_peak_tensor_bytes"] * ratio,
        "cuda_context_allowance": CUDA_CONTEXT,
    }
    worst_logits = batch * seq * big["vocab"] * per_logit
    total = sum(terms.values())
    # The RSS rise also holds what the tracker cannot see (op-internal buffers, such as this CPU's bf16 matmul
    # fallback upcasting a weight) and the allocator's slack: an upper bound for the activations.
    rss_activations = measured["rss_rise_bytes"] * ratio
    conservative = total - terms["activations_scaled"] + rss_activations + worst_logits
    return {
        "model": big, "batch_size": batch, "seq_len": seq, "lora_params": n_lora,
        "activation_ratio": round(ratio, 4),
        "measured_from": {"batch_size": measured["batch_size"], "seq_len": measured["seq_len"],
                          "step_peak_tensor_bytes": measured["step_peak_tensor_bytes"],
                          "rss_rise_bytes": measured["rss_rise_bytes"], **small},
        "formula": ("weights (params × 2 B, bf16) + LoRA (params × 16 B: fp32 weight, gradient, Adam m and v) + "
                    "activations (the measured bf16+ckpt step's working memory × the ratio of layers × hidden × "
                    "seq × batch) + CUDA allowance"),
        "terms_bytes": {k: round(v) for k, v in terms.items()},
        "total_bytes": round(total),
        "total_gb": round(total / GB, 2),
        "worst_case_logits_bytes": round(worst_logits),
        "worst_case_total_gb": round((total + worst_logits) / GB, 2),
        "worst_case_note": (f"every one of the {batch}×{seq} positions an answer token: batch × seq × vocab × "
                            f"{per_logit:.1f} B (measured per answer logit); the measured reviews answer in a few "
                            "tokens, so their logits are inside the activations term"),
        "activations_from_rss_rise_bytes": round(rss_activations),
        "conservative_total_gb": round(conservative / GB, 2),
        "conservative_note": "activations from the step's RSS rise instead of its tracked tensors, plus worst-case logits",
        "fits_24gb": conservative < 24 * GB,
    }


def lora_step(model: Any, optimizer: Any, batch: dict[str, Any], precision: str) -> float:
    """One optimizer step as `athanor train` takes it (grad_accum 1); returns the loss."""
    import torch

    with autocast("cpu", precision):
        loss = batch_loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def memory_bench(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    base = embedded_student_path()
    tokenizer = load_tokenizer(base)
    plan = [(item.split("@")[0], int(item.split("@")[1]) if "@" in item else args.batch_size)
            for item in args.precisions.split(",")]
    records = reviews(args.data, 400, args.seed)
    examples = filled_examples(tokenizer, records, max(size for _, size in plan), args.max_seq_len)
    warm = collate([(ids[:64], labels[:64]) for ids, labels in examples[:1]], tokenizer.pad_token_id)
    warm["labels"][0, -4:] = warm["input_ids"][0, -4:]  # a cut example keeps a few answer tokens to learn
    fp32 = load_model(base)
    shape = {"layers": fp32.config.num_hidden_layers, "hidden": fp32.config.hidden_size}
    print(f"examples of {args.max_seq_len} tokens; {torch.get_num_threads()} threads; loaded in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    results: dict[str, Any] = {}
    for name, size in plan:
        precision, checkpointing = MEMORY_SETTINGS[name]
        batch = collate(examples[:size], tokenizer.pad_token_id)
        settings = TrainSettings(precision="bf16" if precision == "bf16" else "fp32", gradient_checkpointing=checkpointing)
        model = copy.deepcopy(fp32).to(torch.bfloat16 if precision == "bf16" else torch.float32)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        model = make_trainable(model, settings)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
        # Adam's state exists and thread pools are up before anything is measured.
        lora_step(model, optimizer, warm, precision)
        lora = sum(p.numel() * p.element_size() for p in trainable)
        adam = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                   if torch.is_tensor(t))
        runs = []
        for index in range(args.memory_steps):
            release_memory()
            baseline = RssPeak.now()
            began = time.perf_counter()
            with RssPeak() as rss, TensorMemory() as tracked:
                loss = lora_step(model, optimizer, batch, precision)
            seconds = time.perf_counter() - began
            runs.append({"seconds": round(seconds, 2), "loss": round(loss, 4), "step_peak_tensor_bytes": tracked.peak,
                         "rss_rise_bytes": rss.peak - baseline, "rss_peak_bytes": rss.peak, "ops": tracked.ops})
            print(f"  {name}@{size} step {index + 1}/{args.memory_steps}: {seconds:6.1f} s, working memory "
                  f"{tracked.peak / GB:.3f} GB (RSS +{(rss.peak - baseline) / GB:.3f} GB)", flush=True)
        seconds = sum(r["seconds"] for r in runs)
        results[f"{name}@{size}"] = {
            "precision": precision, "gradient_checkpointing": checkpointing, "batch_size": size,
            "seq_len": int(batch["input_ids"].shape[1]), "answer_tokens": int((batch["labels"][:, 1:] != IGNORE).sum()),
            "weights_bytes": weights, "lora_bytes": lora, "adam_bytes": adam,
            "step_peak_tensor_bytes": max(r["step_peak_tensor_bytes"] for r in runs),
            "rss_rise_bytes": max(r["rss_rise_bytes"] for r in runs), "rss_peak_bytes": runs[-1]["rss_peak_bytes"],
            "tokens_per_s": round(int(batch["attention_mask"].sum()) * len(runs) / seconds, 2),
            "s_per_step": round(seconds / len(runs), 2), "steps": runs,
        }
        del model, optimizer, trainable
        release_memory()
    print(f"\n{'setting':14s} {'weights':>8s} {'LoRA+Adam':>9s} {'step':>7s} {'RSS+':>7s} {'tok/s':>7s}  (GB; step: "
          "the step's tracked working memory)")
    for name, r in results.items():
        print(f"{name:14s} {r['weights_bytes'] / GB:8.3f} {(r['lora_bytes'] + r['adam_bytes']) / GB:9.3f} "
              f"{r['step_peak_tensor_bytes'] / GB:7.3f} {r['rss_rise_bytes'] / GB:7.3f} {r['tokens_per_s']:7.1f}")
    report: dict[str, Any] = {
        "model": str(base), "shape": shape, "data": str(args.data), "seq_len": args.max_seq_len,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "settings": results,
    }
    measured = next((r for r in results.values() if r["precision"] == "bf16" and r["gradient_checkpointing"]), None)
    if measured is not None:
        per_logit = logit_bytes(fp32.config.vocab_size, shape["hidden"])
        big = estimate(measured, shape, args.batch_size, args.max_seq_len, per_logit, TrainSettings())
        report["per_answer_logit_bytes"] = round(per_logit, 2)
        report["estimate_1_5b_bf16_ckpt"] = big
        print(f"\n{QWEN_1_5B['name']} in bf16 with gradient checkpointing, batch {args.batch_size} × {args.max_seq_len}, "
              f"computed from the measured bf16+ckpt step ({measured['batch_size']} × {measured['seq_len']}) of "
              f"{Path(str(base)).stem}:")
        for term, value in big["terms_bytes"].items():
            print(f"  {term:32s} {value / GB:7.2f} GB")
        print(f"  {'total':32s} {big['total_gb']:7.2f} GB   (activation ratio {big['activation_ratio']}; "
              f"{big['lora_params'] / 1e6:.1f}M LoRA params)")
        print(f"  + worst-case answer logits       {big['worst_case_logits_bytes'] / GB:7.2f} GB -> "
              f"{big['worst_case_total_gb']:.2f} GB")
        print(f"  conservative (activations from the RSS rise {big['activations_from_rss_rise_bytes'] / GB:.2f} GB, "
              f"worst-case logits): {big['conservative_total_gb']:.2f} GB; within 24 GB: {big['fits_24gb']}")
    report["minutes"] = round((time.monotonic() - started) / 60, 1)
    report["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = args.out if args.out != DEFAULT_OUT else ROOT / "bench-out" / "train-memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {out}")


DEFAULT_OUT = ROOT / "bench-out" / "train.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=12, help="Timed steps per setting (one epoch of the examples).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own).")
    parser.add_argument("--ablate", action="store_true", help="Also time each change alone.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="Report (default bench-out/train.json; with --memory bench-out/train-memory.json).")
    parser.add_argument("--memory", action="store_true",
                        help="Measure memory and speed per precision, and estimate a 1.5B student (see above).")
    parser.add_argument("--precisions", default=MEASURED,
                        help=f"With --memory: settings to measure, each of {', '.join(MEMORY_SETTINGS)}, @ a batch size "
                             "(default --batch-size); the 1.5B estimate scales the bf16+ckpt one to --batch-size.")
    parser.add_argument("--memory-steps", type=int, default=1, help="With --memory: measured steps per setting.")
    args = parser.parse_args()
    if args.memory:
        memory_bench(args)
        return

    import torch
    from peft import LoraConfig, get_peft_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    base = embedded_student_path()
    tokenizer = load_tokenizer(base)
    records = reviews(args.data, args.steps * args.batch_size, args.seed)
    examples, truncated = [], 0
    for record in records:
        prompt, answer = chat_tokens(tokenizer, record)
        truncated += len(prompt) + len(answer) > args.max_seq_len
        examples.append(fit_example(prompt, answer, args.max_seq_len))
    lengths = [len(ids) for ids, _ in examples]
    defaults = TrainSettings()
    model = load_model(base)
    keeps = _keeps_logits(model)
    model = get_peft_model(model, LoraConfig(
        r=defaults.lora_r, lora_alpha=defaults.lora_alpha, lora_dropout=defaults.lora_dropout,
        target_modules=present_modules(model, defaults.target_modules), task_type="CAUSAL_LM"))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=defaults.learning_rate)
    print(f"{len(examples)} reviews, {sum(lengths)} tokens (median {sorted(lengths)[len(lengths) // 2]}, "
          f"max {max(lengths)}), {truncated} cut to {args.max_seq_len}; {torch.get_num_threads()} threads; "
          f"loaded in {time.monotonic() - started:.0f} s", flush=True)

    names = list(MODES) if args.ablate else ["old", "new"]
    plans = {name: epoch_batches(lengths, args.batch_size, args.seed, MODES[name][0]) for name in names}
    stats = {name: {"seconds": 0.0, "tokens": 0, "computed": 0, "steps": 0, "losses": []} for name in names}

    def step(name: str, members: list[int]) -> float:
        batch = collate([examples[i] for i in members], tokenizer.pad_token_id)
        began = time.perf_counter()
        if MODES[name][1] and keeps:
            loss = batch_loss(model, batch)
        else:
            loss = model(**batch).loss  # what train() did before: the model's loss over all logits
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - began
        s = stats[name]
        s["seconds"] += seconds
        s["tokens"] += int(batch["attention_mask"].sum())
        s["computed"] += batch["input_ids"].numel()
        s["steps"] += 1
        s["losses"].append(round(float(loss.detach()), 4))
        return seconds

    # One small untimed step first: allocator and thread pools warm up outside the measurement.
    batch_loss(model, collate(examples[:1], tokenizer.pad_token_id)).backward()
    optimizer.zero_grad(set_to_none=True)
    for index in range(args.steps):
        for name in (names if index % 2 == 0 else names[::-1]):
            seconds = step(name, plans[name][index])
            print(f"  step {index + 1}/{args.steps} {name:8s} {seconds:6.1f} s", flush=True)

    results = {}
    for name in names:
        s = stats[name]
        results[name] = {
            "group_by_length": MODES[name][0], "answer_logits_only": MODES[name][1] and keeps,
            "steps": s["steps"], "seconds": round(s["seconds"], 2), "real_tokens": s["tokens"],
            "computed_positions": s["computed"], "padding": round(1 - s["tokens"] / s["computed"], 3),
            "tokens_per_s": round(s["tokens"] / s["seconds"], 2), "s_per_step": round(s["seconds"] / s["steps"], 2),
            "planned_padding": round(padding_share(lengths, plans[name]), 3), "losses": s["losses"],
        }
    old = results["old"]["tokens_per_s"]
    print(f"\n{'setting':10s} {'tok/s':>8s} {'s/step':>8s} {'padding':>8s} {'speedup':>8s}")
    for name, r in results.items():
        print(f"{name:10s} {r['tokens_per_s']:8.1f} {r['s_per_step']:8.1f} {r['padding']:8.1%} "
              f"{r['tokens_per_s'] / old:7.2f}x")
    report = {
        "model": str(base), "data": str(args.data), "examples": len(examples), "real_tokens": sum(lengths),
        "truncated": truncated, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len,
        "steps_per_setting": args.steps, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "settings": results, "speedup": round(results["new"]["tokens_per_s"] / old, 3),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
