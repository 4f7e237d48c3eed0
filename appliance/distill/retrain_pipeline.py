"""`athanor retrain` as a library: plan -> dataset -> train -> export -> gate -> install -> router -> reload.

`run_retrain` runs the stages in order and returns what each one did as a typed result; a stage that
did not run (nothing to do, a dry run, --keep-router, --no-reload) leaves its field None. It never
writes to the terminal itself: lines go through `RetrainHooks` callbacks, so the CLI decides where
each goes (stdout for the lines a script reads, stderr for progress), and a test can collect them.
The daemon's reload is a callback too, so this module never imports the client.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from . import DistillError
from .records import Record
from .retrain_plan import MIN_RECORDS, Mode, RetrainPlan

if TYPE_CHECKING:
    from ..config import AthanorConfig
    from ..routing.learned import LogisticRouter
    from .train import StepInfo, TrainResult

MIN_REFIT_LABELS = 40
"""Held-out answers a router refit needs; fewer and the shipped router routes the new student."""

Bar = Callable[[str, int | None, str], AbstractContextManager[tuple[Any, int]]]
"""`progress.bar`'s shape: (description, total, extra) -> (progress, task) with `progress.update`."""
TrainProgress = Callable[[str], AbstractContextManager[Callable[["StepInfo"], None] | None]]
"""`progress.train_progress`'s shape: description -> an `on_progress` callback for `train`."""


def _quiet(_: str) -> None:
    pass


class _NoProgress:
    def update(self, task: int, **_: Any) -> None:
        pass


@contextmanager
def _no_bar(description: str, total: int | None, extra: str = "") -> Iterator[tuple[Any, int]]:
    yield _NoProgress(), 0


def _no_train_progress(description: str) -> AbstractContextManager[Callable[[StepInfo], None] | None]:
    return nullcontext(None)


@dataclass(frozen=True)
class RetrainHooks:
    """Where the pipeline's words go; every default is silent, so a library caller hears nothing."""

    say: Callable[[str], None] = _quiet
    """A result line (the plan, the held-out draw, the dataset, the training, the daemon's reply)."""
    note: Callable[[str], None] = _quiet
    """A line about the hand-over (router, install), which the CLI keeps off stdout."""
    log: Callable[[str], None] = _quiet
    """Training's own lines about the run (examples, truncation, threads)."""
    bar: Bar = _no_bar
    train_progress: TrainProgress = _no_train_progress
    reload: Callable[[], str] | None = None
    """Ask the daemon to load the new student and return its reply; None: nobody to ask."""


@dataclass(frozen=True)
class RetrainRequest:
    config: AthanorConfig
    mode: Mode = "always"
    dry_run: bool = False
    log: Path | None = None
    """Distillation log (None: <state>/distill.jsonl)."""
    heldout: Path | None = None
    """Held-out set (None: [distill].heldout, else the one drawn from the log and kept)."""
    base: Path | None = None
    out_dir: Path | None = None
    """Work folder (None: <retrain dir>/<time>)."""
    min_records: int = MIN_RECORDS
    reload: bool = True
    keep_router: bool = False


@dataclass(frozen=True)
class EvaluateResult:
    retention: float | None
    answers: tuple[dict[str, Any], ...] = ()
    """Per-question answers with their agreement with the teacher (what a router refit learns from)."""
    categories: Mapping[str, float | None] = field(default_factory=dict)
    """Retention per category."""


@dataclass(frozen=True)
class DriftLine:
    """One category of recent traffic: how the current and the new student do on its newest questions."""

    category: str
    n: int
    old: float | None
    new: float | None

    @property
    def worse(self) -> bool:
        return self.old is not None and (self.new is None or self.new < self.old)


@dataclass(frozen=True)
class PlanResult:
    plan: RetrainPlan
    usable: tuple[Record, ...]
    dropped: Mapping[str, int]
    held: tuple[Record, ...]
    """The held-out set there is before training (empty until one is drawn)."""
    old_retention: float | None
    """The current student's retention, measured only when the mode hinges on a regression."""
    folder: Path
    drawn: Path
    """Where a held-out set drawn from the log is kept."""


@dataclass(frozen=True)
class DatasetResult:
    work: Path
    """The run's folder: the dataset, then the adapter and the export beside it."""
    path: Path
    records: tuple[Record, ...]
    dropped: Mapping[str, int]
    held_out: tuple[Record, ...]
    drawn: bool
    """True when this run drew the held-out set from the log."""
    recent: tuple[Record, ...] = ()
    """The newest log records, kept out of training: the gate measures this week's traffic on them."""


@dataclass(frozen=True)
class ExportResult:
    gguf: Path
    folder: Path


@dataclass(frozen=True)
class GateResult:
    new_retention: float | None
    old_retention: float | None
    passed: bool
    answers: tuple[dict[str, Any], ...] = ()
    recent: tuple[DriftLine, ...] = ()
    """Per category of recent traffic, the old and the new student's retention (reported; the fixed
    held-out set decides)."""


@dataclass(frozen=True)
class InstallResult:
    target: Path
    seen: int
    """Usable records at install, which the next `--when-due` counts new records from."""


@dataclass(frozen=True)
class RouterResult:
    outcome: str
    removed: Path | None = None
    """The router refitted on the old student, now gone."""
    installed: Path | None = None
    """The router refitted on the new student (None: the shipped router, or [routing].router's own)."""


@dataclass(frozen=True)
class ReloadResult:
    message: str


@dataclass(frozen=True)
class RetrainOutcome:
    plan: PlanResult
    dataset: DatasetResult | None = None
    trained: TrainResult | None = None
    export: ExportResult | None = None
    gate: GateResult | None = None
    install: InstallResult | None = None
    router: RouterResult | None = None
    reload: ReloadResult | None = None

    @property
    def installed(self) -> bool:
        return self.install is not None


def evaluate_student(student: Path, heldout: Sequence[Record], config: AthanorConfig, label: str,
                     hooks: RetrainHooks) -> EvaluateResult:
    from .evaluate import EvalSettings, evaluate
    from .students import open_runner

    settings = EvalSettings(target_quality=config.distill.target_quality,
                            confidence_quantile=config.routing.confidence_quantile)
    runner = open_runner(student, hold_tokens=config.routing.hold_tokens)
    try:
        with hooks.bar(f"evaluate {label}", len(heldout), "") as (progress, task):
            result = asyncio.run(evaluate(list(heldout), runner, settings,
                                          on_item=lambda i: progress.update(task, advance=1)))
    finally:
        runner.close()
    return EvaluateResult(result.overall.retention, tuple(result.answers),
                          {c.category: c.retention for c in result.categories})


def plan_stage(request: RetrainRequest, hooks: RetrainHooks) -> PlanResult:
    from ..paths import retrain_dir, state_dir
    from ..engine.model_source import resolve_student
    from .records import HELDOUT_FILE, read_dataset, resolve_dataset
    from .retrain import build_dataset
    from ..protocol.retrain_state import read_state
    from .retrain_plan import DRAWN_HELDOUT, RetrainInputs, plan_retrain

    config = request.config
    folder = retrain_dir()
    log = request.log or state_dir() / "distill.jsonl"
    heldout_path = request.heldout or config.distill.heldout
    drawn = folder / DRAWN_HELDOUT
    held = read_dataset(resolve_dataset(heldout_path, HELDOUT_FILE)) if heldout_path else (
        read_dataset(drawn) if drawn.is_file() else [])
    extra = read_dataset(config.distill.train_dataset) if config.distill.train_dataset else []
    embedder = None
    if config.distill.dedup_threshold:
        from ..cache.embedder import load_embedder

        embedder = load_embedder(config.cache.embedder)
    usable, dropped = build_dataset(log, [], extra, embedder, config.distill.language, config.distill.dedup_threshold)
    usable = _categorized(usable, embedder, config)
    old_retention = None
    # A regression only matters to the modes that may skip training; a hand run measures the old student at the gate.
    if request.mode != "always" and held:
        old_retention = evaluate_student(resolve_student(config.student).path, held, config, "current student",
                                         hooks).retention
    regressed = None if old_retention is None else old_retention < config.distill.retention_floor
    plan = plan_retrain(RetrainInputs(
        usable=len(usable), seen_at_last=read_state(folder).seen, retrain_after=config.distill.retrain_after,
        min_records=request.min_records, heldout=len(held), heldout_configured=heldout_path is not None,
        regressed=regressed, mode=request.mode))
    retention = f" (current student's retention {old_retention:.3f})" if old_retention is not None else ""
    hooks.say(plan.describe() + retention)
    return PlanResult(plan, tuple(usable), dict(dropped), tuple(held), old_retention, folder, drawn)


def _categorized(records: list[Record], embedder: Any, config: AthanorConfig) -> list[Record]:
    """Logged questions grouped into categories by what they ask (drift.py); harvested ones keep theirs."""
    from .drift import categorize
    from .retrain import LOG_CATEGORY

    logged = [i for i, r in enumerate(records) if r.category == LOG_CATEGORY]
    if not logged:
        return records
    if embedder is None:
        from ..cache.embedder import load_embedder

        embedder = load_embedder(config.cache.embedder)
    out = list(records)
    for i, record in zip(logged, categorize([records[i] for i in logged], embedder, config.distill.seed)):
        out[i] = record
    return out


def dataset_stage(request: RetrainRequest, planned: PlanResult, hooks: RetrainHooks) -> DatasetResult:
    from .drift import recent_count
    from .records import TRAIN_FILE, write_dataset
    from .split import stratified_split

    usable, held = list(planned.usable), list(planned.held)
    draw = planned.plan.draw_heldout
    if draw:
        _, held = stratified_split(usable, draw / len(usable), seed=request.config.distill.seed)
        planned.folder.mkdir(parents=True, exist_ok=True)
        write_dataset(planned.drawn, held)
        hooks.say(f"held-out set: {len(held)} log records drawn to {planned.drawn}; they are never trained on")
    held_keys = {r.key for r in held}
    # The newest logged questions are this week's traffic: measured at the gate, not trained on.
    logged = [r for r in usable if r.source == "log" and r.key not in held_keys]
    config = request.config.distill
    recent = logged[len(logged) - recent_count(len(logged), config.recent_share, config.recent_max):]
    held_keys |= {r.key for r in recent}
    records = [r for r in usable if r.key not in held_keys]
    work = request.out_dir or planned.folder / time.strftime("%Y%m%d-%H%M%S")
    dataset = work / TRAIN_FILE
    write_dataset(dataset, records)
    dropped = planned.dropped
    hooks.say(f"dataset: {len(records)} records ({', '.join(f'{n} {k}' for k, n in dropped.items()) or 'none'} "
              f"dropped, {len(held)} held out, {len(recent)} recent kept to measure drift on)")
    return DatasetResult(work, dataset, tuple(records), dropped, tuple(held), bool(draw), tuple(recent))


def train_stage(request: RetrainRequest, dataset: DatasetResult, hooks: RetrainHooks) -> TrainResult:
    from .common import default_base
    from .records import file_sha256
    from .train import TrainSettings, train

    config = request.config
    adapter = dataset.work / "adapter"
    with hooks.train_progress("train") as report:
        result = train(list(dataset.records), request.base or default_base(config), adapter,
                       TrainSettings.from_config(config.distill), dataset_sha256=file_sha256(dataset.path),
                       on_progress=report, on_log=hooks.log)
    hooks.say(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; adapter in {adapter}")
    return result


def export_student(dataset: DatasetResult, trained: TrainResult) -> ExportResult:
    from .retrain import export_stage

    adapter = trained.out_dir
    export = export_stage()
    if export is None:
        raise DistillError(f"export stage not available (no `export.pipeline` module); the trained adapter is in "
                           f"{adapter}; export it with `athanor export` and gate it by hand")
    folder = dataset.work / "export"
    return ExportResult(export(adapter, folder, dataset.path), folder)


def gate_stage(request: RetrainRequest, planned: PlanResult, dataset: DatasetResult, exported: ExportResult,
               hooks: RetrainHooks) -> GateResult:
    from ..engine.model_source import resolve_student
    from .retrain import passes_gate

    config = request.config
    new = evaluate_student(exported.gguf, dataset.held_out, config, "new student", hooks)
    old_retention = planned.old_retention
    if old_retention is None:
        old_retention = evaluate_student(resolve_student(config.student).path, dataset.held_out, config,
                                         "current student", hooks).retention
    recent = _drift(exported.gguf, resolve_student(config.student).path, dataset.recent, config, hooks)
    return GateResult(new.retention, old_retention, passes_gate(new.retention, old_retention), new.answers, recent)


def _drift(new_student: Path, old_student: Path, recent: Sequence[Record], config: AthanorConfig,
           hooks: RetrainHooks) -> tuple[DriftLine, ...]:
    """Both students on the newest traffic, per category: a line each, worse ones marked."""
    if not recent:
        return ()
    new = evaluate_student(new_student, recent, config, "new student on recent traffic", hooks)
    old = evaluate_student(old_student, recent, config, "current student on recent traffic", hooks)
    counts: dict[str, int] = {}
    for record in recent:
        counts[record.category] = counts.get(record.category, 0) + 1
    lines = tuple(DriftLine(c, counts[c], old.categories.get(c), new.categories.get(c)) for c in sorted(counts))
    hooks.say(f"recent traffic ({len(recent)} newest questions): retention {_fmt(old.retention)} -> "
              f"{_fmt(new.retention)}")
    for line in lines:
        hooks.say(f"  {'WORSE ' if line.worse else ''}{line.category} ({line.n}): {_fmt(line.old)} -> {_fmt(line.new)}")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def install_stage(request: RetrainRequest, planned: PlanResult, exported: ExportResult,
                  gate: GateResult | None = None) -> InstallResult:
    from ..paths import retrained_student_dir
    from .retrain import install
    from ..protocol.retrain_state import write_state

    target = request.config.student.path or retrained_student_dir()
    install(exported.gguf, exported.folder, target)
    write_state(planned.folder, len(planned.usable), target, gate.new_retention if gate else None,
                gate.old_retention if gate else None)
    return InstallResult(target, len(planned.usable))


def router_stage(answers: Sequence[dict[str, Any]], setting: str, hooks: RetrainHooks) -> RouterResult:
    """The router follows the student: the one refitted on the old student's traffic goes, and one fitted on
    the new student's held-out answers (evaluate's agreement with the teacher as labels) replaces the shipped
    one if it does at least as well on the questions it held back. With too few answers for that, the
    shipped router's threshold is placed on them (`rethreshold`). The router of the first tokens, which
    decides what streams with a teacher configured, is placed beside it the same way (`place_early`)."""
    from ..paths import refit_router_file
    from ..routing.decide import DEFAULT_ROUTER, early_path
    from ..routing.learned import LogisticRouter
    from ..routing.refit import examples_from_evaluation, refit, rethreshold

    target = refit_router_file()
    removed = None
    early_path(target).unlink(missing_ok=True)
    if target.is_file():
        target.unlink()
        removed = target
        hooks.note(f"removed the router refitted on the old student ({target})")
    if setting != "default":
        text = f"[routing].router = {setting!r} names its own router: not refitted"
        hooks.note(text)
        return RouterResult(text, removed)
    examples = examples_from_evaluation(list(answers))
    outcome = refit(examples, 0, LogisticRouter.load(DEFAULT_ROUTER), MIN_REFIT_LABELS)
    if outcome.install and outcome.router is not None:
        outcome.router.save(target)
        text = f"router refitted on the new student: {outcome.reason}; installed at {target}"
        hooks.note(text)
        return RouterResult(text + _place_early(answers, outcome.router, target, hooks), removed, target)
    # Too few to refit: the shipped weights, with the threshold (chosen for the embedded student, whose
    # answers it may keep none of) placed on the new student's held-out answers.
    placed = rethreshold(examples, LogisticRouter.load(DEFAULT_ROUTER))
    if placed is not None:
        placed.router.save(target)
        text = (f"router not refitted: {outcome.reason}; the shipped router routes the new student, its "
                f"threshold chosen on the new student's {placed.graded} held-out answers (it keeps {placed.kept} "
                f"of them, at most 5% wrong); installed at {target}")
        hooks.note(text)
        return RouterResult(text + _place_early(answers, placed.router, target, hooks), removed, target)
    text = f"router not refitted: {outcome.reason}; the shipped router routes the new student"
    hooks.note(text)
    return RouterResult(text, removed)


def _place_early(answers: Sequence[dict[str, Any]], router: LogisticRouter, target: Path, hooks: RetrainHooks) -> str:
    """Install the early router beside `target` for the new student; what became of it, for the summary."""
    from ..routing.decide import DEFAULT_ROUTER, early_path
    from ..routing.learned import LogisticRouter
    from ..routing.refit import examples_from_evaluation, place_early

    early = place_early(examples_from_evaluation(answers, early=True), router,
                        LogisticRouter.load(early_path(DEFAULT_ROUTER)), MIN_REFIT_LABELS)
    if early.router is not None:
        early.router.save(early_path(target))
    hooks.note(early.reason)
    return f"; {early.reason}"


def run_retrain(request: RetrainRequest, hooks: RetrainHooks | None = None) -> RetrainOutcome:
    """Rebuild the student from the daemon's distillation log; hand it over only if it does not regress.

    Not enough data yet is not an error: the outcome holds only the plan. A student that regresses
    raises DistillError (naming the candidate) and nothing is installed."""
    hooks = hooks or RetrainHooks()
    planned = plan_stage(request, hooks)
    if request.dry_run or not planned.plan.retrain:
        return RetrainOutcome(planned)
    from ..extras import require
    from .train import TrainSettings, preflight

    require("export", "athanor retrain (it trains, exports and gates)")
    preflight(TrainSettings.from_config(request.config.distill))  # e.g. QLoRA without a GPU: fail before any work
    dataset = dataset_stage(request, planned, hooks)
    trained = train_stage(request, dataset, hooks)
    exported = export_student(dataset, trained)
    gate = gate_stage(request, planned, dataset, exported, hooks)
    if not gate.passed:
        raise DistillError(f"the new student regresses (retention {gate.new_retention} < {gate.old_retention}); "
                           f"the daemon keeps the current one; the candidate is {exported.gguf}")
    installed = install_stage(request, planned, exported, gate)
    if request.keep_router:
        hooks.note("--keep-router: the router stays as it was")
        router = None
    else:
        router = router_stage(gate.answers, request.config.routing.router, hooks)
    hooks.note(f"new student installed at {installed.target} "
               f"(retention {gate.new_retention:.3f}, was {gate.old_retention:.3f})")
    reloaded = None
    if request.reload and hooks.reload is not None:
        reloaded = ReloadResult(hooks.reload())
        hooks.say(reloaded.message)
    return RetrainOutcome(planned, dataset, trained, exported, gate, installed, router, reloaded)
