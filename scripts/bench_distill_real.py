#!/usr/bin/env python3
"""Distillation on real text nobody here wrote: served accuracy by teacher labels, on any labelled text set.

A fake Gemini over real HTTP answers each text's human label (a perfect teacher). For each point
of the learning curve, `--labels` texts are harvested through it, a LoRA adapter is trained
(validation loss holds back 10% and picks the adapter kept), exported to q8_0 and f16 GGUFs through
the export gate, and the smallest that passes is served by a real daemon; the served student's answers to a balanced held-out set
of texts (never harvested) are read through the Unix socket and scored against the human labels.
The base student is served the same way first. Writes summary.json and learning_curve.png.

The default data are ChnSentiCorp's hotel reviews (../shared/data, or $ATHANOR_SHARED_DATA). `--data`
takes any labelled CSV/TSV (header row, or `--no-header` with column numbers) or JSONL file with two
or more labels; `--label-names` maps raw labels to the words the student should answer.

    nice -n 10 .venv/bin/python scripts/bench_distill_real.py --labels 100,300,1000 --out /tmp/real-distill
    .venv/bin/python scripts/bench_distill_real.py --data news.csv --text-column body --label-column topic \\
        --label-names "1=world,2=sports,3=business,4=science"
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.cache.embedder import load_embedder  # noqa: E402
from appliance.clients.daemon_client import AthanorClient  # noqa: E402
from appliance.config import TeacherConfig  # noqa: E402
from appliance.defaults import embedded_student_path  # noqa: E402
from appliance.distill.harvest import HarvestSettings, finalize, run_harvest  # noqa: E402
from appliance.distill.progress import TrainLog  # noqa: E402
from appliance.distill.prompts import PromptItem  # noqa: E402
from appliance.distill.records import TRAIN_FILE, Record, file_sha256, read_dataset  # noqa: E402
from appliance.distill.train import TrainResult, TrainSettings, train  # noqa: E402
from appliance.protocol.manifest import choose_artifact, read_manifest  # noqa: E402
from appliance.teacher import make_teacher  # noqa: E402
from export.console import ConsoleEvents  # noqa: E402
from export.pipeline import ExportOptions, run_export  # noqa: E402
from tests.conftest import start_daemon, stop_daemon  # noqa: E402
from tests.fakes import FakeGemini  # noqa: E402

DATA = Path(os.environ.get("ATHANOR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ChnSentiCorp_htl_all.csv"
# ChnSentiCorp's file has no header: label (1/0), review.
CHN_LABEL_COLUMN, CHN_TEXT_COLUMN = "0", "1"
CHN_ROLE = "You label the sentiment of hotel reviews. Answer with one word: positive or negative."
CHN_QUESTION = "Review: {text}\nSentiment?"
CHN_LABELS = {"1": "positive", "0": "negative"}
CHN_CATEGORY = "hotel-review"
REFERENCE = "published on ChnSentiCorp's standard split (ERNIE paper): BERT-base ~94%, ERNIE ~95%"
QUESTION = "Text: {text}\nLabel?"
CATEGORY = "labelled-text"
TEXT_COLUMNS = ("text", "review", "sentence", "content", "comment", "document", "body")
LABEL_COLUMNS = ("label", "sentiment", "class", "category", "target", "polarity")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
KEY = "fake-key"


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # the word the student should answer, lower case


@dataclass(frozen=True)
class Score:
    accuracy: float
    off_label: int
    shares: dict[str, float]  # label -> share of the answers that were that label


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
    answer_shares: dict[str, float]
    served: str = "gguf:q8_0"
    """The artifact the daemon served: the smallest that passed the export's gate."""


def is_chnsenticorp(path: Path) -> bool:
    return path.name == DATA.name


def read_table(path: Path, header: bool = True) -> tuple[list[str], list[dict[str, object]]]:
    """(column names, rows) of a CSV/TSV or JSONL file. Without a header, CSV columns are named by their
    0-based position ("0", "1", ...)."""
    if not path.is_file():
        hint = " (set ATHANOR_SHARED_DATA to the folder holding it)" if is_chnsenticorp(path) else ""
        raise SystemExit(f"{path} is missing{hint}")
    if path.suffix.lower() in JSONL_SUFFIXES:
        return _read_jsonl(path)
    # Reviews and articles can outgrow csv's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    # utf-8-sig: spreadsheet exports start with a BOM that would otherwise stick to the first column's name.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        first = next(reader, None)
        if first is None:
            raise SystemExit(f"{path} is empty")
        if header:
            columns, body = [c.strip() for c in first], list(reader)
        else:
            body = [first, *reader]
            columns = [str(i) for i in range(max(len(r) for r in body))]
    return columns, [dict(zip(columns, row)) for row in body]


def _read_jsonl(path: Path) -> tuple[list[str], list[dict[str, object]]]:
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):  # a .json file holding one array of objects
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"{path}: not valid JSON ({exc})") from None
        items = list(loaded)
    else:
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except ValueError as exc:
                raise SystemExit(f"{path}:{number}: not valid JSON ({exc})") from None
    rows = [item for item in items if isinstance(item, dict)]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns, rows


def pick_columns(columns: Sequence[str], text_column: str | None = None,
                 label_column: str | None = None) -> tuple[str, str]:
    """(text column, label column): the ones named, else the first known name found (any case)."""

    def find(wanted: str | None, known: Sequence[str], role: str, flag: str) -> str:
        lower = {c.lower(): c for c in reversed(columns)}  # reversed: the first of equal names wins
        if wanted is not None:
            if wanted in columns:
                return wanted
            if wanted.lower() in lower:
                return lower[wanted.lower()]
            raise SystemExit(f"no {role} column {wanted!r}; the columns found are {', '.join(map(repr, columns))}")
        for name in known:
            if name in lower:
                return lower[name]
        raise SystemExit(f"cannot guess the {role} column (tried {', '.join(known)}); the columns found are "
                         f"{', '.join(map(repr, columns))}: name it with {flag}")

    text = find(text_column, TEXT_COLUMNS, "text", "--text-column")
    label = find(label_column, LABEL_COLUMNS, "label", "--label-column")
    if text == label:
        raise SystemExit(f"the text and label columns are both {text!r}")
    return text, label


def parse_label_names(spec: str) -> dict[str, str]:
    """"0=negative,1=positive" -> {"0": "negative", "1": "positive"}; keys and words stripped, lower case."""
    names: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        raw, sep, word = part.partition("=")
        if not sep or not raw.strip() or not word.strip():
            raise SystemExit(f"--label-names: {part.strip()!r} is not RAW=WORD (e.g. \"0=negative,1=positive\")")
        names[raw.strip().lower()] = word.strip().lower()
    if not names:
        raise SystemExit("--label-names is empty")
    return names


def to_examples(rows: Sequence[dict[str, object]], text_column: str, label_column: str,
                names: dict[str, str] | None = None) -> tuple[list[Example], int]:
    """(examples, rows dropped). A row is dropped when its text or label is empty, or, with `names`, when its
    label is not one of them (so `names` can also pick a subset of the labels)."""
    examples: list[Example] = []
    dropped = 0
    for row in rows:
        text, raw = row.get(text_column), row.get(label_column)
        text = "" if text is None else str(text).strip()
        label = "" if raw is None else str(raw).strip().lower()
        if names is not None:
            label = names.get(label, "")
        if not text or not label:
            dropped += 1
            continue
        examples.append(Example(text, label))
    return examples, dropped


def label_order(examples: Sequence[Example], names: dict[str, str] | None = None) -> list[str]:
    """The labels present: in `names`' order when given (ChnSentiCorp: positive, negative), else sorted."""
    present = {e.label for e in examples}
    if names is not None:
        return [w for w in dict.fromkeys(names.values()) if w in present]
    return sorted(present)


def default_role(labels: Sequence[str]) -> str:
    choices = ", ".join(labels[:-1]) + f" or {labels[-1]}"
    return f"You classify texts. Answer with one word: {choices}."


def ask(question: str, text: str) -> str:
    # replace, not str.format: a template may hold other braces (a JSON example) that format would choke on.
    return question.replace("{text}", text)


def split(examples: Sequence[Example], labels: Sequence[str], test_size: int, max_chars: int,
          seed: int) -> tuple[list[Example], list[Example]]:
    """(pool to harvest from, balanced test set): `test_size // len(labels)` of each label. Test texts are at
    most `max_chars` long (they are sent whole to a daemon with a small context); the pool keeps every
    other example, in a seeded order."""
    order = list(examples)
    random.Random(seed).shuffle(order)
    per_label = test_size // len(labels)
    test: list[Example] = []
    for label in labels:
        test += [e for e in order if e.label == label and len(e.text) <= max_chars][:per_label]
    chosen = {id(e) for e in test}
    return [e for e in order if id(e) not in chosen], test


def answer_word(content: str) -> str:
    """What a served reply is scored on: its first line, stripped, lower case."""
    return content.strip().split("\n")[0].strip().lower()


def score(answers: Sequence[str], truth: Sequence[str], labels: Sequence[str]) -> Score:
    """Accuracy, off-label answers and each label's share of the answers, from replies already cut by
    `answer_word`."""
    if not answers:
        return Score(0.0, 0, {label: 0.0 for label in labels})
    right = sum(a == t for a, t in zip(answers, truth))
    off = sum(a not in labels for a in answers)
    shares = {label: sum(a == label for a in answers) / len(answers) for label in labels}
    return Score(right / len(answers), off, shares)


def answer_tokens(labels: Sequence[str]) -> int:
    # Half a token per UTF-8 byte is generous for BPE; at least 4 keeps positive/negative as they were.
    return max(4, math.ceil(max(len(label.encode()) for label in labels) / 2))


@dataclass(frozen=True)
class Task:
    """What the student is taught: prompts, label words and where they came from."""

    data: Path
    role: str
    question: str
    labels: list[str]
    category: str
    reference: str | None

    @property
    def chnsenticorp(self) -> bool:
        return self.reference is not None


async def harvest(task: Task, pool: list[Example], n: int, out: Path) -> list[Record]:
    """Harvest `n` examples of the pool through the fake teacher; the train records (deduplicated)."""
    answers = {ask(task.question, e.text): e.label for e in pool[:n]}
    lookup = {q.strip(): a for q, a in answers.items()}
    os.environ["BENCH_FAKE_KEY"] = KEY
    with FakeGemini(api_key=KEY, answer=lambda prompt: lookup.get(prompt.strip(), "unknown")) as fake:
        cfg = TeacherConfig(provider="gemini", base_url=fake.url, api_key_env="BENCH_FAKE_KEY",
                            requests_per_minute=100_000)
        teacher = make_teacher(cfg, out / "state")
        assert teacher is not None  # only provider "none" makes no teacher
        items = [PromptItem(prompt=q, role=task.role, category=task.category, expected=a) for q, a in answers.items()]
        settings = HarvestSettings(concurrency=8, max_tokens=max(8, 2 * answer_tokens(task.labels)))
        await run_harvest(items, teacher, out, settings, lambda r, cost: None)
        await teacher.aclose()
    report = await finalize(out, HarvestSettings(heldout_fraction=0.0), load_embedder())
    print(f"  harvested {n}: {report.train} kept, {report.dropped} dropped", flush=True)
    return read_dataset(out / TRAIN_FILE)


def served_score(task: Task, student: Path | None, test: list[Example], home: Path, threads: int) -> Score:
    """Score of the daemon serving `student` (None: the embedded default), asked each test text over its socket."""
    home.mkdir(parents=True, exist_ok=True)
    config = f"[student]\nn_threads = {threads}\nn_ctx = 1024\n"
    if student is not None:
        config += f'path = "{student}"\n'  # the smallest build that passed the export's gate
    (home / "athanor.toml").write_text(config + "\n[cache]\nenabled = false\n[teacher]\nprovider = \"none\"\n")
    process, socket_path = start_daemon(home)
    answers: list[str] = []
    try:
        with AthanorClient(socket_path, timeout=120) as client:
            for example in test:
                reply = client.chat([{"role": "system", "content": task.role},
                                     {"role": "user", "content": ask(task.question, example.text)}],
                                    temperature=0, max_tokens=answer_tokens(task.labels))
                answers.append(answer_word(reply["choices"][0]["message"]["content"]))
    finally:
        stop_daemon(process)
    return score(answers, [e.label for e in test], task.labels)


def shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{label} {share:.0%}" for label, share in shares.items())


def plot(task: Task, points: list[Point], before: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p.labels for p in points], [p.accuracy for p in points], marker="o", label="served student (q8_0)")
    if before is not None:
        ax.axhline(before, color="grey", ls=":", label=f"base student {before:.0%}")
    if task.chnsenticorp:
        ax.axhline(0.94, color="green", ls="--", lw=0.8, label="BERT-base (published) 94%")
    ax.axhline(0.9, color="red", ls="--", lw=0.8, label="target 90%")
    ax.set_xscale("log")
    ax.set_xlabel(f"teacher labels ({task.data.name})")
    ax.set_ylabel(f"accuracy on held-out texts ({len(task.labels)} labels)")
    ax.set_ylim(0, 1)
    ax.set_title(f"SmolLM2-135M distilled on {task.data.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def load_task(args: argparse.Namespace) -> tuple[Task, list[Example]]:
    data: Path = args.data or DATA
    chn = is_chnsenticorp(data)
    header = not (args.no_header or chn)
    text_column, label_column = args.text_column, args.label_column
    if chn or not header:
        text_column = text_column or CHN_TEXT_COLUMN
        label_column = label_column or CHN_LABEL_COLUMN
    names = parse_label_names(args.label_names) if args.label_names else (CHN_LABELS if chn else None)
    columns, rows = read_table(data, header=header)
    text_column, label_column = pick_columns(columns, text_column, label_column)
    examples, dropped = to_examples(rows, text_column, label_column, names)
    labels = label_order(examples, names)
    if dropped:
        print(f"{dropped} of {len(rows)} rows dropped (empty text or label"
              + (", or a label --label-names does not name)" if names else ")"), flush=True)
    if len(labels) < 2:
        raise SystemExit(f"{data}: {len(examples)} usable rows with labels {labels}; at least two labels are needed "
                         f"(text column {text_column!r}, label column {label_column!r})")
    if "{text}" not in (args.question or "{text}"):
        raise SystemExit("--question must hold {text}, where each text goes")
    task = Task(data=data, role=args.role or (CHN_ROLE if chn else default_role(labels)),
                question=args.question or (CHN_QUESTION if chn else QUESTION), labels=labels,
                category=CHN_CATEGORY if chn else CATEGORY, reference=REFERENCE if chn else None)
    return task, examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help=f"Labelled texts: CSV/TSV with a header row, or JSONL (default: {DATA}).")
    parser.add_argument("--text-column", default=None,
                        help=f"Column (JSONL: key) holding the text; guessed from {', '.join(TEXT_COLUMNS)}.")
    parser.add_argument("--label-column", default=None,
                        help=f"Column (JSONL: key) holding the label; guessed from {', '.join(LABEL_COLUMNS)}.")
    parser.add_argument("--no-header", action="store_true",
                        help="The CSV has no header row: columns are numbered from 0 (default label 0, text 1).")
    parser.add_argument("--label-names", default=None,
                        help="RAW=WORD,... : the word the student answers for each raw label (rows with other labels "
                             "are dropped); default: the raw labels, stripped and lower-cased.")
    parser.add_argument("--role", default=None,
                        help="System prompt; default: ChnSentiCorp's, or one listing the labels.")
    parser.add_argument("--question", default=None,
                        help=f"Question template with {{text}}; default: ChnSentiCorp's, or {QUESTION!r}.")
    parser.add_argument("--labels", default="100,300,1000", help="Teacher labels per point of the curve.")
    parser.add_argument("--test", type=int, default=200,
                        help="Balanced held-out texts the daemon is asked (--test // number of labels per label).")
    parser.add_argument("--test-max-chars", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", default="2e-4,5e-4,1e-3",
                        help="Learning rates tried at the smallest point; the one with the lowest validation loss "
                             "(on the harvest's own held-back 10%%, never the test texts) trains every point.")
    parser.add_argument("--lora-layers", type=int, default=None, help="Adapt only the top N layers (faster).")
    parser.add_argument("--max-seq-len", type=int, default=192, help="Training examples are cut to this many tokens.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-base", action="store_true", help="Do not measure the base student.")
    parser.add_argument("--out", type=Path, default=Path("/tmp/athanor-real-distill"))
    args = parser.parse_args()
    points_wanted = sorted(int(x) for x in args.labels.split(","))
    task, examples = load_task(args)
    pool, test = split(examples, task.labels, args.test, args.test_max_chars, args.seed)
    if not test:
        raise SystemExit(f"no test texts: --test {args.test} for {len(task.labels)} labels, at most "
                         f"{args.test_max_chars} characters each")
    counts = {label: sum(e.label == label for e in test) for label in task.labels}
    if len(set(counts.values())) > 1:
        print(f"warning: test set not balanced, too few texts of at most {args.test_max_chars} characters: "
              + ", ".join(f"{label} {n}" for label, n in counts.items()), flush=True)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    print(f"{len(pool)} texts to harvest from, {len(test)} held out (balanced over {len(task.labels)} labels: "
          f"{', '.join(task.labels)})", flush=True)
    # --skip-base leaves the base student unmeasured: no figure stands in for it.
    before = None if args.skip_base else served_score(task, None, test, args.out / "home-base", args.threads)
    if before is not None:
        print(f"base student served: accuracy {before.accuracy:.1%}, off-label {before.off_label}, "
              f"answered {shares_text(before.shares)}", flush=True)
    points: list[Point] = []
    rates = [float(x) for x in args.lr.split(",")]
    sweep: dict[float, float] = {}

    def fit(records: list[Record], work: Path, lr: float, adapter: Path) -> TrainResult:
        settings = TrainSettings(learning_rate=lr, epochs=args.epochs, batch_size=8, max_seq_len=args.max_seq_len,
                                 lora_layers=args.lora_layers, seed=args.seed, checkpoint_every=10_000)
        log = TrainLog(f"train {len(records)} lr {lr:g}", stream=sys.stdout, every=25)
        return train(records, embedded_student_path(), adapter, settings,
                     dataset_sha256=file_sha256(work / "harvest" / TRAIN_FILE), on_progress=log,
                     on_log=lambda line: print("  " + line, flush=True))

    for n in points_wanted:
        work = args.out / f"labels-{n}"
        records = asyncio.run(harvest(task, pool, n, work / "harvest"))
        started = time.monotonic()
        if not sweep:
            results = {}
            for lr in rates:
                results[lr] = fit(records, work, lr, work / f"adapter-lr{lr:g}")
                best = results[lr].best_step
                sweep[lr] = dict(results[lr].val_losses).get(best, float("inf")) if best is not None else float("inf")
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
        # f16 beside q8_0: when q8_0 drifts past the gate's agreement bound (it did for an adapter on all
        # 30 layers), the point is still measured on what a user would be served.
        run_export(ExportOptions(adapter=adapter, out=work / "export", gguf=["q8_0", "f16"], name=f"real-{n}",
                                 threads=args.threads), ConsoleEvents())
        manifest = read_manifest(work / "export" / "manifest.json")
        for rejected in manifest.rejected:
            print(f"  the gate rejected {rejected.label}: {'; '.join(rejected.reasons)}", flush=True)
        if not manifest.artifacts:
            raise SystemExit(f"labels {n}: the export's gate rejected every build; see {work / 'export'}")
        got = served_score(task, work / "export", test, work / "home", args.threads)
        point = Point(n, len(records), result.steps, result.best_step, result.stopped_early, round(minutes, 1),
                      got.accuracy, got.off_label, got.shares, choose_artifact(manifest).label)
        points.append(point)
        print(f"labels {n}: served accuracy {got.accuracy:.1%} ({point.served}; off-label {got.off_label}, answered "
              f"{shares_text(got.shares)}), {result.steps} steps in {minutes:.1f} min, kept step {result.best_step}",
              flush=True)
        summary = {"data": str(task.data), "labels": task.labels, "role": task.role, "question": task.question,
                   "test": len(test), "test_per_label": counts, "reference": task.reference,
                   "settings": vars(args) | {"out": str(args.out)},
                   "base": None if before is None else {"accuracy": before.accuracy, "off_label": before.off_label,
                                                        "answer_shares": before.shares},
                   "learning_rate_sweep": sweep, "learning_rate": min(sweep, key=lambda r: sweep[r]),
                   "points": [asdict(p) for p in points]}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False) + "\n")
        plot(task, points, before.accuracy if before is not None else None, args.out / "learning_curve.png")
    print("\n| teacher labels | served accuracy | served build | off-label | answered | steps (kept) | train min |")
    print("|---|---|---|---|---|---|---|")
    if before is None:
        print("| 0 (base) | not measured (--skip-base) | - | - | - | - | - |")
    else:
        print(f"| 0 (base) | {before.accuracy:.1%} | embedded | {before.off_label} | {shares_text(before.shares)} "
              "| - | - |")
    for p in points:
        print(f"| {p.labels} | {p.accuracy:.1%} | {p.served} | {p.off_label} | {shares_text(p.answer_shares)} "
              f"| {p.steps} ({p.best_step}) | {p.train_minutes} |")
    if task.reference:
        print(task.reference)


if __name__ == "__main__":
    main()
