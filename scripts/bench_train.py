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
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.distill.models import load_model, load_tokenizer  # noqa: E402
from appliance.distill.records import Record  # noqa: E402
from appliance.distill.train import (  # noqa: E402
    TrainSettings, _keeps_logits, batch_loss, chat_tokens, collate, epoch_batches, fit_example,
    padding_share, present_modules)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=12, help="Timed steps per setting (one epoch of the examples).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own).")
    parser.add_argument("--ablate", action="store_true", help="Also time each change alone.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "train.json")
    args = parser.parse_args()

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
