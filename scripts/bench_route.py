#!/usr/bin/env python3
"""Routing benchmark: does the router know when the embedded student is wrong?

320 questions with short checkable answers (scripts/data/route_questions.jsonl: arithmetic, facts,
units, code output, yes/no, definitions; English and Chinese; dev/test halves). The student answers
each greedily, and k more times sampled in the same batch (for the agreement signal); every answer
is graded against the gold. The teacher is taken to answer the gold (a perfect teacher, as the fake
Gemini server does in the tests), so quality at a teacher share is (student right among kept +
sent to teacher) / all.

For each policy (a single signal, or a router fitted on the dev half): AUROC on dev and test; the
threshold chosen on dev for at most 5% wrong among kept answers, and what it gives on test (a fitted
router's dev scores are out of fold, each dev question scored by a router fitted without it); the
quality-against-teacher-share curve on test (PNG). The best router without samples is written to
appliance/routing/default_router.json (the daemon's default for the embedded student) with --install.

    python scripts/bench_route.py [--samples 4] [--max-tokens 48] [--recollect] [--install]

With `--questions FILE` (the same JSONL: question, answer, optional aliases, category, lang) nothing
is fitted: the routers the daemon ships are scored at their own thresholds on questions they never
saw, which is how to check them on a set of your own.

    python scripts/bench_route.py --questions my_questions.jsonl --out bench-out/route-probe
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.config import RoutingConfig  # noqa: E402
from appliance.routing.decide import needs_outcomes, pre_route_probability  # noqa: E402
from appliance.routing.ensemble import verdict  # noqa: E402
from appliance.routing.grading import correct  # noqa: E402
from appliance.routing.learned import fit, out_of_fold  # noqa: E402
from appliance.routing.measures import auroc, cheapest, operating_points, pre_route_threshold  # noqa: E402
from appliance.routing.refit import MAX_WRONG_KEPT, with_thresholds  # noqa: E402
from appliance.routing.outcomes import (OUTCOME_FEATURES, Outcome, PastOutcomes, outcomes_path,  # noqa: E402
                                        read_outcomes, write_outcomes)
from appliance.routing.signals import PROMPT_FEATURES, Signals, prompt_features, signals  # noqa: E402

DATA = ROOT / "scripts" / "data" / "route_questions.jsonl"
DEFAULT_ROUTER = ROOT / "appliance" / "routing" / "default_router.json"
DEFAULT_EARLY_ROUTER = ROOT / "appliance" / "routing" / "default_router_early.json"
DEFAULT_PRE_ROUTER = ROOT / "appliance" / "routing" / "default_router_pre.json"
MAX_PRE_ROUTED_RIGHT = 0.10  # of the questions sent to the teacher unasked, the student would have got this many
HOLD_TOKENS = RoutingConfig().hold_tokens  # the early router sees as many tokens as the daemon holds


def decode_together(engine: Any, jobs: dict[str, tuple[list[int], Any]]) -> dict[str, list[Any]]:
    """Each named (prompt, params) decoded in the same batch to its end; the token events of each."""
    seqs = {engine.add(prompt, params): name for name, (prompt, params) in jobs.items()}
    events: dict[str, list[Any]] = {name: [] for name in jobs}
    active = set(seqs)
    while active:
        for result in engine.step():
            if result.error is not None:
                raise result.error
            if result.event is not None:
                events[seqs[result.seq]].append(result.event)
            if result.finish is not None:
                active.discard(result.seq)
    return events


def collect(out: Path, samples: int, max_tokens: int, threads: int, source: Path = DATA) -> None:
    from appliance.engine.llama import LlamaEngine
    from appliance.engine.types import SamplingParams
    from appliance.engine.model_source import embedded_quant, serve_embedded

    questions = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    model = serve_embedded(embedded_quant("", samples + 1), ROOT / "bench-out" / "models")
    engine = LlamaEngine(model, "student", n_ctx=512, parallel=samples + 1, n_threads=threads)
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    started = time.monotonic()
    with out.open("w", encoding="utf-8") as sink:
        for n, q in enumerate(questions, 1):
            prompt = engine.chat_prompt([{"role": "user", "content": q["question"]}])
            events = decode_together(engine, {
                "greedy": (prompt, greedy),
                **{f"s{k}": (prompt, SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=k))
                   for k in range(samples)}})
            # Bytes joined before decoding: a Chinese character often spans two tokens.
            row = q | {"student": b"".join(e.raw for e in events["greedy"]).decode(errors="replace"),
                       "tokens": [[e.logprob, e.step.max_logprob, e.step.margin, e.step.entropy]
                                  for e in events["greedy"]],
                       "samples": [b"".join(e.raw for e in events[f"s{k}"]).decode(errors="replace")
                                   for k in range(samples)]}
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            if n % 20 == 0:
                rate = n / (time.monotonic() - started)
                print(f"  {n}/{len(questions)} questions, {rate:.2f}/s, eta {(len(questions) - n) / rate:.0f} s",
                      flush=True)
    engine.close()


def embed_questions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each question's vector from the cache's default embedder (the one the daemon's memory uses)."""
    from appliance.cache.embedder import load_embedder

    questions = sorted({r["question"] for r in rows})
    return dict(zip(questions, load_embedder(None).embed(questions)))


def outcome_memory(rows: list[dict[str, Any]], vectors: dict[str, Any]) -> PastOutcomes:
    import numpy as np

    return PastOutcomes(np.stack([vectors[r["question"]] for r in rows]), [r["right"] for r in rows],
                        [r["question"] for r in rows])


def features(row: dict[str, Any], first: int | None = None) -> tuple[Signals, float]:
    from appliance.engine.types import StepStats, TokenEvent

    events = [TokenEvent(0, "", lp, b"", (), StepStats(mx, mg, en)) for lp, mx, mg, en in row["tokens"]]
    s = signals(row["question"], events[:first] if first else events)
    return s, verdict(row["student"], row["samples"]).agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--recollect", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="decode threads (1 on a machine that is busy)")
    ap.add_argument("--install", action="store_true", help="write the fitted router to " + str(DEFAULT_ROUTER))
    ap.add_argument("--questions", type=Path, default=None,
                    help="score the shipped routers on these questions instead of fitting on route_questions")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "route")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    answers = args.out / "answers.jsonl"
    if args.questions is not None:
        if args.install:
            ap.error("--install fits on route_questions' dev half; with --questions nothing is fitted")
        # Its own answers file: answers.jsonl holds route_questions' answers, which a later run reuses.
        probed = args.out / f"answers-{args.questions.stem}.jsonl"
        print(f"the student answers {args.questions} ({args.samples} samples each)...", flush=True)
        collect(probed, args.samples, args.max_tokens, args.threads, args.questions)
        probe_shipped([json.loads(line) for line in probed.read_text(encoding="utf-8").splitlines()], args.out)
        return
    if args.recollect or not answers.is_file():
        print(f"the student answers {DATA.name} ({args.samples} samples each)...", flush=True)
        collect(answers, args.samples, args.max_tokens, args.threads)
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    for r in rows:
        r["right"] = correct(r["student"], r["answer"], r.get("aliases", []), r["category"])
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    feats = {id(r): features(r) for r in rows}
    names = Signals.names()

    policies: dict[str, Any] = {name: (lambda r, i=i: feats[id(r)][0].vector()[i]) for i, name in enumerate(names)
                                if name not in ("prompt_chars", "chinese", "neg_length")}
    policies["agreement_k"] = lambda r: feats[id(r)][1]
    x_dev = [feats[id(r)][0].vector() for r in dev]
    y_dev = [r["right"] for r in dev]
    # A fitted policy's dev scores, for its AUROC and its threshold, are out of fold: each dev question
    # scored by a router fitted without it (learned.out_of_fold), as new questions will be.
    oof: dict[str, list[float]] = {}
    router = fit(names, x_dev, y_dev)
    policies["learned (signals)"] = lambda r: router.probability(feats[id(r)][0].vector())
    oof["learned (signals)"] = out_of_fold(names, x_dev, y_dev)
    xk_dev = [feats[id(r)][0].vector() + [feats[id(r)][1]] for r in dev]
    router_k = fit(names + ["agreement_k"], xk_dev, y_dev)
    policies["learned (signals + agreement)"] = lambda r: router_k.probability(
        feats[id(r)][0].vector() + [feats[id(r)][1]])
    oof["learned (signals + agreement)"] = out_of_fold(names + ["agreement_k"], xk_dev, y_dev)
    early = {id(r): features(r, HOLD_TOKENS)[0].vector() for r in rows}
    xe_dev = [early[id(r)] for r in dev]
    router_early = fit(names, xe_dev, y_dev)
    early_name = f"learned (first {HOLD_TOKENS} tokens only)"
    policies[early_name] = lambda r: router_early.probability(early[id(r)])
    oof[early_name] = out_of_fold(names, xe_dev, y_dev)
    xp_dev = [prompt_features(r["question"]) for r in dev]
    prompt_only = fit(list(PROMPT_FEATURES), xp_dev, y_dev)
    policies["pre-route, the question's form"] = lambda r: prompt_only.probability(prompt_features(r["question"]))
    oof["pre-route, the question's form"] = out_of_fold(list(PROMPT_FEATURES), xp_dev, y_dev)
    # The student's record on the nearest past questions: each dev question sees the other dev questions,
    # each test question the dev half (what the shipped memory knew when the router was fitted).
    vectors = embed_questions(rows)
    memory = outcome_memory(dev, vectors)

    def pre_x(r: dict[str, Any]) -> list[float]:
        return prompt_features(r["question"]) + memory.features(vectors[r["question"]], skip=r["question"])

    xpre_dev = [pre_x(r) for r in dev]
    pre_router = fit(list(PROMPT_FEATURES + OUTCOME_FEATURES), xpre_dev, y_dev)
    policies["pre-route (the question alone)"] = lambda r: pre_router.probability(pre_x(r))
    oof["pre-route (the question alone)"] = out_of_fold(list(PROMPT_FEATURES + OUTCOME_FEATURES), xpre_dev, y_dev)
    policies["nearest past questions' record alone"] = lambda r: pre_x(r)[len(PROMPT_FEATURES)]

    report: dict[str, Any] = {"questions": len(rows), "student_right": {
        split: f"{sum(r['right'] for r in part)}/{len(part)}" for split, part in (("dev", dev), ("test", test))},
        "policies": {}}
    curves = {}
    for name, score in policies.items():
        sd = oof.get(name) or [score(r) for r in dev]
        st = [score(r) for r in test]
        chosen = cheapest(operating_points(sd, y_dev), MAX_WRONG_KEPT)
        yt = [r["right"] for r in test]
        kept = [(s, y) for s, y in zip(st, yt) if s >= chosen.threshold]
        report["policies"][name] = {
            "auroc_dev": round(auroc(sd, y_dev), 3), "auroc_test": round(auroc(st, yt), 3),
            "threshold_from_dev": round(chosen.threshold, 4),
            "test_teacher_share": round(1 - len(kept) / len(yt), 3),
            "test_wrong_among_kept": round(sum(1 for _, y in kept if not y) / len(kept), 3) if kept else 0.0,
            "test_kept": len(kept)}
        curves[name] = operating_points(st, yt)
    for name, r in sorted(report["policies"].items(), key=lambda kv: -kv[1]["auroc_test"]):
        print(f"{name:38s} AUROC dev {r['auroc_dev']:.3f} test {r['auroc_test']:.3f} | at dev's <=5% threshold: "
              f"teacher {r['test_teacher_share']:.0%}, wrong among kept {r['test_wrong_among_kept']:.1%} "
              f"({r['test_kept']} kept)")
    print("student right:", report["student_right"])
    by_cat: dict[str, list[int]] = {}
    for r in test:
        by_cat.setdefault(f"{r['lang']}/{r['category']}", [0, 0])
        by_cat[f"{r['lang']}/{r['category']}"][0] += r["right"]
        by_cat[f"{r['lang']}/{r['category']}"][1] += 1
    report["student_right_test_by_category"] = {k: f"{a}/{b}" for k, a, b in
                                                ((k, *v) for k, v in sorted(by_cat.items()))}
    plot(curves, args.out / "cost_quality.png")
    if args.install:
        with_thresholds(router, oof["learned (signals)"], y_dev).save(DEFAULT_ROUTER)
        replace(with_thresholds(router_early, oof[early_name], y_dev), cache_threshold=1.0).save(DEFAULT_EARLY_ROUTER)
        pre_t = pre_route_threshold(oof["pre-route (the question alone)"], y_dev, MAX_PRE_ROUTED_RIGHT)
        replace(pre_router, threshold=pre_t, cache_threshold=1.0).save(DEFAULT_PRE_ROUTER)
        # The daemon's memory holds every graded question, test half too: it is not scored again here.
        write_outcomes(outcomes_path(DEFAULT_PRE_ROUTER), [Outcome(r["question"], r["right"]) for r in rows])
        pre_test = [pre_router.probability(pre_x(r)) for r in test]
        sent = [r["right"] for r, p in zip(test, pre_test) if p < pre_t]
        report["pre_route"] = {"threshold_from_dev": round(pre_t, 4), "test_sent_unasked": f"{len(sent)}/{len(test)}",
                               "test_right_among_sent": f"{sum(sent)}/{len(sent)}"}
        print("pre-route on test:", report["pre_route"])
        print(f"wrote {DEFAULT_ROUTER}, {DEFAULT_EARLY_ROUTER}, {DEFAULT_PRE_ROUTER} and its outcomes")
    (args.out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {args.out / 'report.json'} and cost_quality.png")


def probe_shipped(rows: list[dict[str, Any]], out: Path) -> None:
    """The shipped routers at their own thresholds on questions they were never fitted on."""
    from appliance.routing.learned import LogisticRouter

    for r in rows:
        r["right"] = correct(r["student"], r["answer"], r.get("aliases", []), r.get("category", ""))
    y = [r["right"] for r in rows]
    report: dict[str, Any] = {"questions": len(rows), "student_right": f"{sum(y)}/{len(rows)}", "routers": {}}
    early = {id(r): features(r, HOLD_TOKENS)[0].vector() for r in rows}
    full = {id(r): features(r)[0].vector() for r in rows}
    for name, path, vec in (("learned (signals)", DEFAULT_ROUTER, full), (f"early ({HOLD_TOKENS} tokens)",
                                                                         DEFAULT_EARLY_ROUTER, early)):
        router = LogisticRouter.load(path)
        scores = [router.probability(vec[id(r)]) for r in rows]
        kept = [r for r, s in zip(rows, scores) if s >= router.threshold]
        cached = [r for r, s in zip(rows, scores) if s >= router.cache_threshold]
        wrong_kept = [r for r in kept if not r["right"]]
        report["routers"][name] = {
            "auroc": round(auroc(scores, y), 3), "threshold": round(router.threshold, 4),
            "kept": len(kept), "wrong_among_kept": len(wrong_kept), "cached": len(cached),
            "wrong_among_cached": sum(1 for r in cached if not r["right"]),
            "teacher_share": round(1 - len(kept) / len(rows), 3),
            "wrong_kept_examples": [f"{r['question']} -> {r['student'][:80]!r}" for r in wrong_kept[:5]]}
    pre = LogisticRouter.load(DEFAULT_PRE_ROUTER)
    shipped = read_outcomes(outcomes_path(DEFAULT_PRE_ROUTER)) if needs_outcomes(pre) else []
    vectors = embed_questions(rows + [{"question": o.question} for o in shipped])
    memory = PastOutcomes(None, [])
    if shipped:
        memory = outcome_memory([{"question": o.question, "right": o.right} for o in shipped], vectors)
    pre_scores = [pre_route_probability(pre, r["question"], memory, vectors[r["question"]]) for r in rows]
    sent = [r for r, p in zip(rows, pre_scores) if p < pre.threshold]
    report["pre_route_auroc"] = round(auroc(pre_scores, y), 3)
    report["pre_route"] = {"sent_unasked": f"{len(sent)}/{len(rows)}",
                           "right_among_sent": f"{sum(r['right'] for r in sent)}/{len(sent)}"}
    by_lang: dict[str, list[int]] = {}
    for r in rows:
        by_lang.setdefault(r.get("lang", "?"), [0, 0])
        by_lang[r.get("lang", "?")][0] += r["right"]
        by_lang[r.get("lang", "?")][1] += 1
    report["student_right_by_language"] = {k: f"{a}/{b}" for k, (a, b) in sorted(by_lang.items())}
    print(json.dumps(report, ensure_ascii=False, indent=1))
    (out / "probe.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {out / 'probe.json'}")


def plot(curves: dict[str, list], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for name, points in curves.items():
        ax.plot([p.teacher_share for p in points], [p.quality for p in points], label=name,
                lw=2.5 if name.startswith("learned") else 1)
    ax.set_xlabel("share of questions sent to the teacher")
    ax.set_ylabel("share answered right (teacher counted right)")
    ax.set_title("Routing the embedded student: quality against teacher share (test half)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
