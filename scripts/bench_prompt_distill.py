#!/usr/bin/env python3
"""Prompt distillation, measured: does the embedded student answer better with the teacher's answers to
the nearest past questions in its prompt, as few-shot examples?

The teacher-answered past is the routing benchmark's dev half (scripts/data/route_questions.jsonl, the
teacher taken to answer the gold, as in bench_route.py). The number of examples k and the least
similarity tau (USE multilingual cosine, the cache's embedder) are chosen on the dev half, each dev
question taking its examples from the other dev questions; the test half, taking its examples from the
dev half, is reported against the same student without examples. Greedy, 48 tokens.

    python scripts/bench_prompt_distill.py [--settings 2:0.0,2:0.5,4:0.3] [--out bench-out/prompt-distill]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.routing.grading import correct  # noqa: E402

DATA = ROOT / "scripts" / "data" / "route_questions.jsonl"


def examples(sims: np.ndarray, past: list[dict[str, Any]], k: int, tau: float) -> list[dict[str, str]]:
    """The k most similar past questions at or above tau, least similar first, as user/assistant turns."""
    chosen = [j for j in np.argsort(-sims)[:k] if sims[j] >= tau]
    turns: list[dict[str, str]] = []
    for j in reversed(chosen):
        turns += [{"role": "user", "content": past[j]["question"]}, {"role": "assistant", "content": past[j]["answer"]}]
    return turns


def main() -> None:
    from appliance.cache.embedder import UseEmbedder
    from appliance.engine.llama import LlamaEngine
    from appliance.engine.types import SamplingParams
    from appliance.engine.model_source import embedded_quant, serve_embedded

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="2:0.0,2:0.5,4:0.3", help="k:tau pairs tried on the dev half")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "prompt-distill")
    args = ap.parse_args()
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    embedder = UseEmbedder(threads=1)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    dev_vectors = unit(embedder.embed([r["question"] for r in dev]))
    test_vectors = unit(embedder.embed([r["question"] for r in test]))
    engine = LlamaEngine(serve_embedded(embedded_quant("", 1), ROOT / "bench-out" / "models"), "student",
                         n_ctx=1024, parallel=1, n_threads=args.threads)
    greedy = SamplingParams(max_tokens=48, temperature=0.0)

    def right(row: dict[str, Any], shots: list[dict[str, str]]) -> bool:
        events = list(engine.generate(engine.chat_prompt(shots + [{"role": "user", "content": row["question"]}]),
                                      greedy))
        text = b"".join(e.raw for e in events).decode(errors="replace")
        return correct(text, row["answer"], row.get("aliases", []), row["category"])

    def score(part: list[dict[str, Any]], vectors: np.ndarray, k: int, tau: float, leave_out: bool) -> int:
        total = 0
        for i, row in enumerate(part):
            sims = dev_vectors @ vectors[i]
            if leave_out:
                sims[i] = -9.0  # a dev question never sees its own answer
            total += right(row, examples(sims, dev, k, tau) if k else [])
        return total

    report: dict[str, Any] = {"dev_base": score(dev, dev_vectors, 0, 0.0, True), "dev": {}}
    print(f"dev, no examples: {report['dev_base']}/{len(dev)}", flush=True)
    for setting in args.settings.split(","):
        k, tau = int(setting.split(":")[0]), float(setting.split(":")[1])
        started = time.monotonic()
        report["dev"][setting] = score(dev, dev_vectors, k, tau, True)
        print(f"dev, k={k} tau={tau}: {report['dev'][setting]}/{len(dev)} ({time.monotonic() - started:.0f} s)", flush=True)
    best = max(report["dev"], key=lambda s: report["dev"][s])
    k, tau = int(best.split(":")[0]), float(best.split(":")[1])
    report["chosen_on_dev"] = best
    report["test_base"] = score(test, test_vectors, 0, 0.0, False)
    report["test_with_examples"] = score(test, test_vectors, k, tau, False)
    print(f"test: {report['test_base']}/{len(test)} without examples, {report['test_with_examples']}/{len(test)} "
          f"with k={k} tau={tau} (chosen on dev)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    engine.close()


if __name__ == "__main__":
    main()
