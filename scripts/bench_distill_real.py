#!/usr/bin/env python3
"""Distillation on real text nobody here wrote: ChnSentiCorp hotel reviews, served accuracy by teacher labels.

A fake Gemini over real HTTP answers each review's human label (a perfect teacher). For each point
of the learning curve, `--labels` reviews are harvested through it, a LoRA adapter is trained
(validation loss holds back 10% and picks the adapter kept), exported to a q8_0 GGUF through the
export gate, and served by a real daemon; the served student's answers to a balanced held-out set
of reviews (never harvested) are read through the Unix socket and scored against the human labels.
The base student is served the same way first. Writes summary.json and learning_curve.png.

    nice -n 10 .venv/bin/python scripts/bench_distill_real.py --labels 100,300,1000 --out /tmp/real-distill
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache.embedder import load_embedder  # noqa: E402
from appliance.client import AthanorClient  # noqa: E402
from appliance.config import TeacherConfig  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.distill.harvest import HarvestSettings, finalize, run_harvest  # noqa: E402
from appliance.distill.progress import TrainLog  # noqa: E402
from appliance.distill.prompts import PromptItem  # noqa: E402
from appliance.distill.records import TRAIN_FILE, file_sha256, read_dataset  # noqa: E402
from appliance.distill.train import TrainSettings, train  # noqa: E402
from appliance.teacher import make_teacher  # noqa: E402
from export.pipeline import ExportOptions, run_export  # noqa: E402
from tests.conftest import start_daemon, stop_daemon  # noqa: E402
from tests.fakes import FakeGemini  # noqa: E402

DATA = Path(os.environ.get("ATHANOR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ChnSentiCorp_htl_all.csv"
ROLE = "You label the sentiment of hotel reviews. Answer with one word: positive or negative."
QUESTION = "Review: {review}\nSentiment?"
LABELS = {"1": "positive", "0": "negative"}
REFERENCE = "published on ChnSentiCorp's standard split (ERNIE paper): BERT-base ~94%, ERNIE ~95%"
KEY = "fake-key"


@dataclass(frozen=True)
class Review:
    text: str
    label: str  # "positive" | "negative"


@dataclass
class Point:
    labels: int
    trained_on: int
    steps: int
    best_step: int | None
    stopped_early: bool
    train_minutes: float
    accuracy: float
    off_label: int
    positive_share: float


def load_reviews(path: Path) -> list[Review]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: set ATHANOR_SHARED_DATA to the folder holding ChnSentiCorp_htl_all.csv")
    with path.open(encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if len(r) == 2 and r[0] in LABELS and r[1].strip()]
    return [Review(text.strip(), LABELS[label]) for label, text in rows]


def split(reviews: list[Review], test_size: int, max_chars: int, seed: int) -> tuple[list[Review], list[Review]]:
    """(pool to harvest from, balanced test set). Test reviews are at most `max_chars` long (they are sent whole
    to a daemon with a small context); the pool keeps every other review, in a seeded order."""
    order = reviews[:]
    random.Random(seed).shuffle(order)
    test: list[Review] = []
    for label in ("positive", "negative"):
        test += [r for r in order if r.label == label and len(r.text) <= max_chars][: test_size // 2]
    chosen = {id(r) for r in test}
    return [r for r in order if id(r) not in chosen], test


async def harvest(pool: list[Review], n: int, out: Path) -> list:
    """Harvest `n` reviews of the pool through the fake teacher; the train records (deduplicated)."""
    answers = {QUESTION.format(review=r.text): r.label for r in pool[:n]}
    os.environ["BENCH_FAKE_KEY"] = KEY
    with FakeGemini(api_key=KEY, answer=lambda prompt: answers.get(prompt.strip(), "unknown")) as fake:
        cfg = TeacherConfig(provider="gemini", base_url=fake.url, api_key_env="BENCH_FAKE_KEY",
                            requests_per_minute=100_000)
        teacher = make_teacher(cfg, out / "state")
        items = [PromptItem(prompt=q, role=ROLE, category="hotel-review", expected=a) for q, a in answers.items()]
        await run_harvest(items, teacher, out, HarvestSettings(concurrency=8, max_tokens=8), lambda r, cost: None)
        await teacher.aclose()
    report = await finalize(out, HarvestSettings(heldout_fraction=0.0), load_embedder())
    print(f"  harvested {n}: {report.train} kept, {report.dropped} dropped", flush=True)
    return read_dataset(out / TRAIN_FILE)


def served_accuracy(student: Path | None, test: list[Review], home: Path, threads: int) -> tuple[float, int, float]:
    """(accuracy, off-label answers, share answered positive) of the daemon serving `student` (None: the
    embedded default), asked each test review over its socket."""
    home.mkdir(parents=True, exist_ok=True)
    config = f"[student]\nn_threads = {threads}\nn_ctx = 1024\n"
    if student is not None:
        config += f'path = "{student}"\nquant = "q8_0"\n'
    (home / "athanor.toml").write_text(config + "\n[cache]\nenabled = false\n[teacher]\nprovider = \"none\"\n")
    process, socket_path = start_daemon(home)
    right = off = positive = 0
    try:
        with AthanorClient(socket_path, timeout=120) as client:
            for review in test:
                reply = client.chat([{"role": "system", "content": ROLE},
                                     {"role": "user", "content": QUESTION.format(review=review.text)}],
                                    temperature=0, max_tokens=4)
                answer = reply["choices"][0]["message"]["content"].strip().split("\n")[0].strip().lower()
                right += answer == review.label
                off += answer not in ("positive", "negative")
                positive += answer == "positive"
    finally:
        stop_daemon(process)
    return right / len(test), off, positive / len(test)


def plot(points: list[Point], before: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p.labels for p in points], [p.accuracy for p in points], marker="o", label="served student (q8_0)")
    ax.axhline(before, color="grey", ls=":", label=f"base student {before:.0%}")
    ax.axhline(0.94, color="green", ls="--", lw=0.8, label="BERT-base (published) 94%")
    ax.axhline(0.9, color="red", ls="--", lw=0.8, label="target 90%")
    ax.set_xscale("log")
    ax.set_xlabel("teacher labels (ChnSentiCorp reviews)")
    ax.set_ylabel("accuracy on held-out reviews")
    ax.set_ylim(0, 1)
    ax.set_title("SmolLM2-135M distilled on real Chinese reviews")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="100,300,1000", help="Teacher labels per point of the curve.")
    parser.add_argument("--test", type=int, default=200, help="Balanced held-out reviews the daemon is asked.")
    parser.add_argument("--test-max-chars", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", default="2e-4,5e-4,1e-3",
                        help="Learning rates tried at the smallest point; the one with the lowest validation loss "
                             "(on the harvest's own held-back 10%%, never the test reviews) trains every point.")
    parser.add_argument("--lora-layers", type=int, default=None, help="Adapt only the top N layers (faster).")
    parser.add_argument("--max-seq-len", type=int, default=192, help="Training examples are cut to this many tokens.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-base", action="store_true", help="Do not measure the base student.")
    parser.add_argument("--out", type=Path, default=Path("/tmp/athanor-real-distill"))
    args = parser.parse_args()
    points_wanted = sorted(int(x) for x in args.labels.split(","))
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    pool, test = split(load_reviews(DATA), args.test, args.test_max_chars, args.seed)
    print(f"{len(pool)} reviews to harvest from, {len(test)} held out (balanced)", flush=True)
    before = served_accuracy(None, test, args.out / "home-base", args.threads) if not args.skip_base else (0.0, 0, 0.0)
    print(f"base student served: accuracy {before[0]:.1%}, off-label {before[1]}, positive {before[2]:.0%}", flush=True)
    points: list[Point] = []
    rates = [float(x) for x in args.lr.split(",")]
    sweep: dict[float, float] = {}

    def fit(records: list, work: Path, lr: float, adapter: Path):
        settings = TrainSettings(learning_rate=lr, epochs=args.epochs, batch_size=8, max_seq_len=args.max_seq_len,
                                 lora_layers=args.lora_layers, seed=args.seed, checkpoint_every=10_000)
        log = TrainLog(f"train {len(records)} lr {lr:g}", stream=sys.stdout, every=25)
        return train(records, embedded_student_path(), adapter, settings,
                     dataset_sha256=file_sha256(work / "harvest" / TRAIN_FILE), on_progress=log,
                     on_log=lambda line: print("  " + line, flush=True))

    for n in points_wanted:
        work = args.out / f"labels-{n}"
        records = asyncio.run(harvest(pool, n, work / "harvest"))
        started = time.monotonic()
        if not sweep:
            results = {}
            for lr in rates:
                results[lr] = fit(records, work, lr, work / f"adapter-lr{lr:g}")
                sweep[lr] = dict(results[lr].val_losses).get(results[lr].best_step, float("inf"))
            lr = min(sweep, key=lambda r: sweep[r])
            print(f"learning rate {lr:g} chosen on validation loss: "
                  + ", ".join(f"{r:g} -> {v:.4f}" for r, v in sweep.items()), flush=True)
            result, adapter = results[lr], work / f"adapter-lr{lr:g}"
            minutes = (time.monotonic() - started) / 60 / len(rates)
        else:
            lr = min(sweep, key=lambda r: sweep[r])
            adapter = work / "adapter"
            result = fit(records, work, lr, adapter)
            minutes = (time.monotonic() - started) / 60
        run_export(ExportOptions(adapter=adapter, out=work / "export", gguf=["q8_0"], name=f"real-{n}",
                                 threads=args.threads))
        accuracy, off, positive = served_accuracy(work / "export", test, work / "home", args.threads)
        point = Point(n, len(records), result.steps, result.best_step, result.stopped_early, round(minutes, 1),
                      accuracy, off, positive)
        points.append(point)
        print(f"labels {n}: served accuracy {accuracy:.1%} (off-label {off}, positive {positive:.0%}), "
              f"{result.steps} steps in {minutes:.1f} min, kept step {result.best_step}", flush=True)
        summary = {"data": str(DATA), "test": len(test), "reference": REFERENCE, "settings": vars(args) | {"out": str(args.out)},
                   "base": {"accuracy": before[0], "off_label": before[1], "positive_share": before[2]},
                   "learning_rate_sweep": sweep, "learning_rate": min(sweep, key=lambda r: sweep[r]),
                   "points": [asdict(p) for p in points]}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        plot(points, before[0], args.out / "learning_curve.png")
    print("\n| teacher labels | served accuracy | off-label | answered positive | steps (kept) | train min |")
    print("|---|---|---|---|---|---|")
    print(f"| 0 (base) | {before[0]:.1%} | {before[1]} | {before[2]:.0%} | - | - |")
    for p in points:
        print(f"| {p.labels} | {p.accuracy:.1%} | {p.off_label} | {p.positive_share:.0%} | {p.steps} ({p.best_step}) "
              f"| {p.train_minutes} |")
    print(REFERENCE)


if __name__ == "__main__":
    main()
