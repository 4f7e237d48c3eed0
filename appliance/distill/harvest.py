"""`athanor harvest`: ask the teacher every prompt, concurrently, under its rate limit and budget.

The teacher object (from `appliance.teacher.make_teacher`) brings the rate limiter, the daily
spend ledger (the same SQLite file the daemon uses) and the retries; this module only schedules.
Every answer is appended to `raw.jsonl` as it arrives, so a re-run skips what is done.
`finalize` then filters, de-duplicates and splits `raw.jsonl` into `train.jsonl` and `heldout.jsonl`.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..config import DistillConfig
from ..protocol.distill_log import DistillLog, read_records
from ..teacher import BudgetExceeded, Teacher, TeacherError, TeacherParams
from ..teacher.limits import estimate_tokens
from ..teacher.pricing import Price
from . import DistillError
from .dedup import Embeds, dedup_records
from .filters import rule_reason
from .judge import vet
from .prompts import PromptItem
from .reasoning import INSTRUCTION, split_reasoning
from .records import DROPPED_FILE, HELDOUT_FILE, RAW_FILE, REPORT_FILE, TRAIN_FILE, Record, prompt_key, read_dataset, write_dataset
from .split import stratified_split

NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True)
class HarvestSettings:
    """What a harvest asks for and how it cleans the result (from `[distill]` plus command-line flags)."""

    concurrency: int = 4
    max_tokens: int = 1024
    temperature: float = 0.2
    reasoning: bool = False
    language: str = "auto"
    dedup_threshold: float | None = 0.65
    """None turns near-duplicate removal off."""
    heldout_fraction: float = 0.1
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: DistillConfig, **overrides: Any) -> "HarvestSettings":
        base = cls(concurrency=cfg.concurrency, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                   language=cfg.language, dedup_threshold=cfg.dedup_threshold,
                   heldout_fraction=cfg.heldout_fraction, seed=cfg.seed)
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def build_messages(item: PromptItem, reasoning: bool) -> list[dict[str, str]]:
    """The chat the teacher sees: the persona (and the reasoning instruction) as system, the prompt as user."""
    system = "\n\n".join(part for part in (item.role, INSTRUCTION if reasoning else None) if part)
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": item.prompt}]


def done_keys(raw: Path) -> set[str]:
    """Questions already answered in a raw harvest file."""
    return {str(r.get("key")) for r in read_records(raw)}


def pending_items(items: Iterable[PromptItem], done: set[str]) -> list[PromptItem]:
    """Items still to ask, each question once (a prompt file may repeat one)."""
    seen = set(done)
    pending = []
    for item in items:
        key = prompt_key(item.prompt, item.role)
        if key not in seen:
            seen.add(key)
            pending.append(item)
    return pending


@dataclass(frozen=True)
class Estimate:
    """What a harvest would cost, before anything is sent."""

    prompts: int
    pending: int
    input_tokens: int
    max_output_tokens: int
    max_cost_usd: float
    likely_cost_usd: float | None
    """From the average answer length of the records already harvested, when there are some."""


def estimate(items: Sequence[PromptItem], settings: HarvestSettings, price: Price, raw: Path) -> Estimate:
    """Tokens and USD for the prompts not yet harvested (`--dry-run`); sends nothing."""
    done = read_dataset(raw) if raw.is_file() else []
    pending = pending_items(items, {r.key for r in done})
    input_tokens = sum(estimate_tokens(build_messages(i, settings.reasoning)) for i in pending)
    max_output = settings.max_tokens * len(pending)
    likely = None
    if done:
        average = sum(r.output_tokens for r in done) / len(done)
        likely = price.cost(input_tokens, round(average * len(pending)))
    return Estimate(len(items), len(pending), input_tokens, max_output, price.cost(input_tokens, max_output), likely)


@dataclass
class HarvestRun:
    """What one pass over the prompts did."""

    asked: int = 0
    answered: int = 0
    cost_usd: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, error) for questions the teacher did not answer; a re-run asks them again."""
    stopped: str | None = None
    """Why the run stopped early (the budget), if it did."""


Progress = Callable[[Record | None, float], None]
"""Called after each question: the new record (None on failure) and the run's cost so far."""


async def run_harvest(
    items: Sequence[PromptItem],
    teacher: Teacher,
    out_dir: Path,
    settings: HarvestSettings,
    on_progress: Progress = lambda record, cost: None,
) -> HarvestRun:
    """Ask the teacher every pending item with `settings.concurrency` workers; append answers to raw.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log = DistillLog(out_dir / RAW_FILE)
    run = HarvestRun()
    queue = iter(pending_items(items, done_keys(out_dir / RAW_FILE)))
    params = TeacherParams(max_tokens=settings.max_tokens, temperature=settings.temperature, seed=settings.seed)

    async def ask(item: PromptItem) -> None:
        run.asked += 1
        try:
            answer = await teacher.complete(build_messages(item, settings.reasoning), params)
        except BudgetExceeded as exc:
            run.stopped = str(exc)
            return
        except TeacherError as exc:
            run.failures.append((item.prompt, str(exc)))
            on_progress(None, run.cost_usd)
            return
        reasoning, text = split_reasoning(answer.text)
        record = Record(
            prompt=item.prompt, answer=text, role=item.role, category=item.category, format=item.format,
            language=item.language, expected=item.expected, reasoning=reasoning,
            input_tokens=answer.input_tokens, output_tokens=answer.output_tokens, cost_usd=answer.cost_usd,
            teacher_model=answer.model, finish_reason=answer.finish_reason,
        )
        # One whole line per write, fsynced: a kill leaves every earlier answer on disk.
        await asyncio.to_thread(log.append, record.to_dict())
        run.answered += 1
        run.cost_usd += answer.cost_usd
        on_progress(record, run.cost_usd)

    async def worker() -> None:
        # Workers share one iterator: no await between `next` calls, so each item goes to one worker.
        for item in queue:
            if run.stopped:
                return
            await ask(item)

    try:
        await asyncio.gather(*(worker() for _ in range(settings.concurrency)))
    finally:
        log.close()
    return run


@dataclass
class HarvestReport:
    """What `finalize` kept and dropped, and why (written as report.json)."""

    raw: int = 0
    kept: int = 0
    train: int = 0
    heldout: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    teacher_models: list[str] = field(default_factory=list)


async def finalize(
    out_dir: Path,
    settings: HarvestSettings,
    embedder: Embeds | None = None,
    judge: Teacher | None = None,
) -> HarvestReport:
    """Filter raw.jsonl (rules, then the judge), drop near-duplicates, split by category; write the sets and report."""
    raw = read_dataset(out_dir / RAW_FILE)
    unique: dict[str, Record] = {}
    for record in raw:
        unique.setdefault(record.key, record)
    dropped: list[dict[str, Any]] = []
    survivors = []
    for record in unique.values():
        reason = rule_reason(record, settings.language)
        if reason is None:
            survivors.append(record)
        else:
            dropped.append({"reason": reason, "record": record.to_dict()})
    if judge is not None and survivors:
        gate = asyncio.Semaphore(settings.concurrency)

        async def vetted(record: Record) -> str | None:
            async with gate:
                return await vet(judge, record)

        verdicts = await asyncio.gather(*(vetted(r) for r in survivors))
        for record, verdict in zip(list(survivors), verdicts):
            if verdict is not None:
                survivors.remove(record)
                dropped.append({"reason": "judge", "detail": verdict, "record": record.to_dict()})
    if settings.dedup_threshold is not None:
        if embedder is None:
            raise DistillError("near-duplicate removal needs the embedder; pass one or set dedup off (--no-dedup)")
        survivors, duplicates = dedup_records(survivors, embedder, settings.dedup_threshold)
        for record, kept, similarity in duplicates:
            dropped.append({"reason": NEAR_DUPLICATE, "detail": {"of": kept.key, "similarity": round(similarity, 4)},
                            "record": record.to_dict()})
    train, heldout = stratified_split(survivors, settings.heldout_fraction, settings.seed)
    write_dataset(out_dir / TRAIN_FILE, train)
    write_dataset(out_dir / HELDOUT_FILE, heldout)
    write_dataset(out_dir / DROPPED_FILE, dropped)
    report = HarvestReport(
        raw=len(raw), kept=len(survivors), train=len(train), heldout=len(heldout),
        dropped=dict(Counter(d["reason"] for d in dropped)),
        cost_usd=round(sum(r.cost_usd for r in raw), 8),
        input_tokens=sum(r.input_tokens for r in raw), output_tokens=sum(r.output_tokens for r in raw),
        teacher_models=sorted({r.teacher_model for r in raw if r.teacher_model}),
    )
    for name, part in (("train", train), ("heldout", heldout)):
        for record in part:
            report.categories.setdefault(record.category, {"train": 0, "heldout": 0})[name] += 1
    (out_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
