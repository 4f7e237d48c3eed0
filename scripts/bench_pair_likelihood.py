#!/usr/bin/env python3
"""Can the student itself judge question pairs? Its likelihood of one question given the other, measured.

For each pair in tests/data/cache_pairs_{en,zh}.jsonl the embedded student (llama.cpp) reads
"Question: A / The same question in other words: B" and scores B token by token, both ways round.
Features (the smaller of the two directions): the lowest and the mean log-probability of B's tokens,
and the lowest pointwise mutual information (log P(token | A) - log P(token | no A)). Reported: AUROC
of each for paraphrase against one-change pair, per language and half, beside the cache embedder's
whole-question cosine. Nothing is tuned, so both halves are reported.

    python scripts/bench_pair_likelihood.py [--limit N] [--out bench-out/pair_likelihood.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache import load_embedder  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.routing.measures import auroc  # noqa: E402

FEATURES = ("lowest log-prob", "mean log-prob", "lowest PMI")


class Scorer:
    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(embedded_student_path()), logits_all=True, n_ctx=512, n_threads=threads,
                         verbose=False)

    def _tokens(self, text: str, bos: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=bos, special=False)

    def logprobs(self, prefix: str, target: str) -> np.ndarray:
        """log P of each of `target`'s tokens after `prefix`."""
        head, tail = self._tokens(prefix, True), self._tokens(" " + target)
        self.llm.reset()
        self.llm.eval(head + tail)
        logits = np.array(self.llm.scores[len(head) - 1:len(head) + len(tail) - 1], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp[np.arange(len(tail)), tail]

    def features(self, a: str, b: str) -> list[float]:
        given = self.logprobs(f"Question: {a}\nThe same question in other words:", b)
        alone = self.logprobs("Question:", b)
        return [float(given.min()), float(given.mean()), float((given - alone).min())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="pairs of each label per language and half (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "pair_likelihood.json")
    args = ap.parse_args()
    scorer = Scorer(args.threads)
    embedder = load_embedder(None)
    report: dict[str, dict[str, float]] = {}
    for lang in ("en", "zh"):
        rows = [json.loads(line) for line in (ROOT / "tests" / "data" / f"cache_pairs_{lang}.jsonl")
                .read_text(encoding="utf-8").splitlines() if line.strip()]
        for split in ("dev", "test"):
            part = [r for label in ("paraphrase", "change")
                    for r in [r for r in rows if r["split"] == split and r["label"] == label][:args.limit]]
            labels = [r["label"] == "paraphrase" for r in part]
            feats = np.array([np.minimum(scorer.features(r["a"], r["b"]), scorer.features(r["b"], r["a"]))
                              for r in part])
            cosines = [float(np.dot(*embedder.embed([r["a"], r["b"]]))) for r in part]
            row = {"pairs": len(part), "cosine": round(auroc(cosines, labels), 3)}
            row.update({name: round(auroc(feats[:, i].tolist(), labels), 3) for i, name in enumerate(FEATURES)})
            report[f"{lang}/{split}"] = row
            print(f"{lang}/{split}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out} (AUROC of paraphrase against one-change; below 0.5 means the reverse)")


if __name__ == "__main__":
    main()
