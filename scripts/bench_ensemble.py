#!/usr/bin/env python3
"""Role ensembles against the single student, on the routing benchmark's questions.

Each question is asked of the embedded student under each role prompt (appliance/routing/ensemble.py),
all roles decoded together in one batch, greedily. The plain answer (no system prompt) comes from
bench_route.py's run (bench-out/route/answers.jsonl; run that first). Policies compared, fitted and
thresholded on the dev half, reported on the test half, the teacher taken to answer the gold:

- single student: the plain answer, the learned router over its signals (the daemon's default);
- ensemble: the answer most drafts agree with is served (plain included, plain first among equals), kept
  by its vote share alone, or by a router fitted over the served draft's signals and its vote share
  (written to appliance/routing/default_router_ensemble.json with --install).

    python scripts/bench_ensemble.py [--recollect] [--max-tokens 48] [--install]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.routing.decide import DEFAULT_ROUTER, ensemble_path  # noqa: E402
from appliance.routing.ensemble import DEFAULT_ROLES, VOTE_SHARE, majority  # noqa: E402
from appliance.routing.grading import correct  # noqa: E402
from appliance.routing.learned import fit  # noqa: E402
from appliance.routing.measures import auroc, cheapest, operating_points  # noqa: E402
from appliance.routing.signals import Signals  # noqa: E402

MAX_WRONG_KEPT = 0.05
ENSEMBLE_ROUTER = ensemble_path(DEFAULT_ROUTER)


def collect(questions: list[dict[str, Any]], out: Path, max_tokens: int, threads: int) -> None:
    from appliance.engine.llama import LlamaEngine
    from appliance.engine.types import SamplingParams
    from appliance.engine.model_source import embedded_quant, serve_embedded
    from bench_route import decode_together

    model = serve_embedded(embedded_quant("", len(DEFAULT_ROLES)), ROOT / "bench-out" / "models")
    engine = LlamaEngine(model, "student", n_ctx=512, parallel=len(DEFAULT_ROLES), n_threads=threads)
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    started = time.monotonic()
    with out.open("w", encoding="utf-8") as sink:
        for n, q in enumerate(questions, 1):
            events = decode_together(engine, {
                role.name: (engine.chat_prompt([{"role": "system", "content": role.prompt(q["question"])},
                                                {"role": "user", "content": q["question"]}]), greedy)
                for role in DEFAULT_ROLES})
            row = {"id": q["id"],
                   "roles": {name: b"".join(e.raw for e in got).decode(errors="replace") for name, got in events.items()},
                   "tokens": {name: [[e.logprob, e.step.max_logprob, e.step.margin, e.step.entropy] for e in got]
                              for name, got in events.items()}}
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()
            if n % 20 == 0:
                rate = n / (time.monotonic() - started)
                print(f"  {n}/{len(questions)} questions, {rate:.2f}/s, eta {(len(questions) - n) / rate:.0f} s",
                      flush=True)
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recollect", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--install", action="store_true", help="write the ensemble router to " + str(ENSEMBLE_ROUTER))
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "route")
    args = ap.parse_args()
    answers = args.out / "answers.jsonl"
    if not answers.is_file():
        raise SystemExit(f"no {answers}: run scripts/bench_route.py first (it asks the plain questions)")
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    roles_file = args.out / "roles.jsonl"
    if args.recollect or not roles_file.is_file():
        print(f"the student answers {len(rows)} questions under {len(DEFAULT_ROLES)} roles...", flush=True)
        collect(rows, roles_file, args.max_tokens, args.threads)
    drafts = {r["id"]: r for r in map(json.loads, roles_file.read_text(encoding="utf-8").splitlines())}

    from bench_route import features  # the signals of an answer, read as bench_route reads them

    def right(row: dict[str, Any], text: str) -> bool:
        return correct(text, row["answer"], row.get("aliases", []), row["category"])

    for r in rows:
        texts = [r["student"], *(drafts[r["id"]]["roles"][role.name] for role in DEFAULT_ROLES)]
        tokens = [r["tokens"], *(drafts[r["id"]]["tokens"][role.name] for role in DEFAULT_ROLES)]
        vote = majority(texts)
        r["right"] = right(r, r["student"])
        r["role_right"] = [right(r, t) for t in texts[1:]]
        r["signals"] = features(r)[0].vector()
        r["vote"] = vote.share
        r["served_right"] = right(r, texts[vote.index])
        served = {"question": r["question"], "student": texts[vote.index], "tokens": tokens[vote.index], "samples": []}
        r["served_signals"] = features(served)[0].vector()
    dev = [r for r in rows if r["split"] == "dev"]
    test = [r for r in rows if r["split"] == "test"]
    names = Signals.names()
    single = fit(names, [r["signals"] for r in dev], [r["right"] for r in dev])
    ensemble = fit(names + [VOTE_SHARE], [r["served_signals"] + [r["vote"]] for r in dev],
                   [r["served_right"] for r in dev])
    # (score, label) per policy: the single student is judged on the plain answer, the ensemble on the one it serves.
    policies: dict[str, tuple[Callable[[dict[str, Any]], float], str]] = {
        "single student, learned router (default)": (lambda r: single.probability(r["signals"]), "right"),
        "ensemble, majority served, vote share alone": (lambda r: r["vote"], "served_right"),
        "ensemble, majority served, learned router": (
            lambda r: ensemble.probability(r["served_signals"] + [r["vote"]]), "served_right"),
    }
    report: dict[str, Any] = {
        "roles": [role.name for role in DEFAULT_ROLES],
        "right": {split: {"plain": sum(r["right"] for r in part),
                          **{role.name: sum(r["role_right"][i] for r in part) for i, role in enumerate(DEFAULT_ROLES)},
                          "majority (served by the ensemble)": sum(r["served_right"] for r in part), "of": len(part)}
                  for split, part in (("dev", dev), ("test", test))},
        "decodes_per_question": {"single": 1, "ensemble": 1 + len(DEFAULT_ROLES)},
        "policies": {}}
    curves = {}
    for name, (score, label) in policies.items():
        sd, yd = [score(r) for r in dev], [r[label] for r in dev]
        st, yt = [score(r) for r in test], [r[label] for r in test]
        chosen = cheapest(operating_points(sd, yd), MAX_WRONG_KEPT)
        kept = [y for s, y in zip(st, yt) if s >= chosen.threshold]
        report["policies"][name] = {
            "auroc_dev": round(auroc(sd, yd), 3), "auroc_test": round(auroc(st, yt), 3),
            "test_teacher_share": round(1 - len(kept) / len(yt), 3),
            "test_wrong_among_kept": round(kept.count(False) / len(kept), 3) if kept else 0.0,
            "test_kept": len(kept),
            "test_quality": round((sum(kept) + len(yt) - len(kept)) / len(yt), 3)}
        curves[name] = operating_points(st, yt)
    if args.install:
        scores = [ensemble.probability(r["served_signals"] + [r["vote"]]) for r in dev]
        labels = [r["served_right"] for r in dev]
        keep = cheapest(operating_points(scores, labels), MAX_WRONG_KEPT)
        cache = cheapest(operating_points(scores, labels), MAX_WRONG_KEPT / 2)
        replace(ensemble, threshold=keep.threshold, cache_threshold=max(keep.threshold, cache.threshold)).save(
            ENSEMBLE_ROUTER)
        print(f"wrote {ENSEMBLE_ROUTER}")
    for name, p in report["policies"].items():
        print(f"{name:45s} AUROC dev {p['auroc_dev']:.3f} test {p['auroc_test']:.3f} | at dev's <=5% threshold: "
              f"teacher {p['test_teacher_share']:.0%}, wrong among kept {p['test_wrong_among_kept']:.1%} "
              f"({p['test_kept']} kept)")
    print("right:", report["right"])
    from bench_route import plot
    plot(curves, args.out / "ensemble_cost_quality.png")
    (args.out / "ensemble.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"wrote {args.out / 'ensemble.json'} and ensemble_cost_quality.png")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
