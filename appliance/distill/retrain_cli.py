"""`athanor retrain` (what athanor-retrain.service runs weekly, with --if-regressed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from . import DistillError
from .cli import _config, _default_base
from .progress import bar, console, train_progress
from .retrain_plan import MIN_RECORDS


def _retention(student: Path, heldout: list, config, label: str) -> tuple[float | None, object]:
    from .evaluate import EvalSettings, evaluate
    from .students import open_runner

    settings = EvalSettings(target_quality=config.distill.target_quality,
                            confidence_quantile=config.routing.confidence_quantile)
    runner = open_runner(student)
    try:
        with bar(f"evaluate {label}", len(heldout), "") as (progress, task):
            result = asyncio.run(evaluate(heldout, runner, settings, on_item=lambda i: progress.update(task, advance=1)))
    finally:
        runner.close()
    return result.overall.retention, result


MIN_REFIT_LABELS = 40


def _route_new_student(answers: list, setting: str) -> None:
    """The router follows the student: the one refitted on the old student's traffic goes, and one fitted on
    the new student's held-out answers (evaluate's agreement with the teacher as labels) replaces the shipped
    one if it does at least as well on the questions it held back."""
    from ..paths import refit_router_file
    from ..routing.decide import DEFAULT_ROUTER
    from ..routing.learned import LogisticRouter
    from ..routing.refit import examples_from_evaluation, refit

    target = refit_router_file()
    if target.is_file():
        target.unlink()
        console().print(f"removed the router refitted on the old student ({target})")
    if setting != "default":
        console().print(f"[routing].router = {setting!r} names its own router: not refitted")
        return
    outcome = refit(examples_from_evaluation(answers), 0, LogisticRouter.load(DEFAULT_ROUTER), MIN_REFIT_LABELS)
    if outcome.install and outcome.router is not None:
        outcome.router.save(target)
        console().print(f"router refitted on the new student: {outcome.reason}; installed at {target}")
    else:
        console().print(f"router not refitted: {outcome.reason}; the shipped router routes the new student")


@click.command()
@click.option("--when-due", is_flag=True,
              help="Retrain only when [distill].retrain_after new teacher-labelled records have arrived since the "
                   "last install, or the student has regressed (what the weekly timer runs).")
@click.option("--if-regressed", is_flag=True,
              help="Retrain only if the current student's retention is under [distill].retention_floor.")
@click.option("--dry-run", is_flag=True, help="Say what would be done and why; train nothing.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Distillation log (default: <state>/distill.jsonl, where the daemon writes it).")
@click.option("--heldout", type=click.Path(path_type=Path, exists=True), default=None,
              help="Held-out set the gate measures on ([distill].heldout; default: drawn once from the log and kept).")
@click.option("--base", type=click.Path(path_type=Path, exists=True), default=None,
              help="Base model to train ([distill].base, else the embedded SmolLM2).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Work folder (default: <state>/retrain/<time>).")
@click.option("--min-records", type=click.IntRange(min=1), default=MIN_RECORDS, show_default=True,
              help="Fewer usable log records than this to train on: nothing to learn yet.")
@click.option("--no-reload", is_flag=True, help="Install the new student but do not ask the daemon to reload.")
@click.option("--keep-router", is_flag=True,
              help="Leave the router as it is; by default it is refitted on the new student's held-out answers.")
@click.pass_context
def retrain(ctx: click.Context, when_due: bool, if_regressed: bool, dry_run: bool, log_path: Path | None,
            heldout: Path | None, base: Path | None, out_dir: Path | None, min_records: int, no_reload: bool,
            keep_router: bool) -> None:
    """Rebuild the student from the daemon's distillation log; hand it over only if it does not regress.

    Not enough data yet is not an error: it says what is missing and exits 0."""
    from ..paths import retrain_dir, retrained_student_dir, state_dir
    from ..students import resolve_student
    from .records import HELDOUT_FILE, TRAIN_FILE, file_sha256, read_dataset, resolve_dataset, write_dataset
    from .retrain import build_dataset, export_stage, install, passes_gate
    from .retrain_plan import DRAWN_HELDOUT, RetrainInputs, plan_retrain, read_state, write_state
    from .split import stratified_split
    from .train import TrainSettings, preflight, train

    if when_due and if_regressed:
        raise click.UsageError("--when-due already retrains on a regression; give one of --when-due, --if-regressed")
    config = _config(ctx)
    folder = retrain_dir()
    log = log_path or state_dir() / "distill.jsonl"
    heldout_path = heldout or config.distill.heldout
    drawn = folder / DRAWN_HELDOUT
    held = read_dataset(resolve_dataset(heldout_path, HELDOUT_FILE)) if heldout_path else (
        read_dataset(drawn) if drawn.is_file() else [])
    extra = read_dataset(config.distill.train_dataset) if config.distill.train_dataset else []
    embedder = None
    if config.distill.dedup_threshold:
        from ..cache.embedder import load_embedder

        embedder = load_embedder(config.cache.embedder)
    usable, dropped = build_dataset(log, [], extra, embedder, config.distill.language, config.distill.dedup_threshold)
    target = config.student.path or retrained_student_dir()
    old_retention = None
    mode = "regressed" if if_regressed else "due" if when_due else "always"
    if mode != "always" and held:
        old_retention, _ = _retention(resolve_student(config.student).path, held, config, "current student")
    regressed = None if old_retention is None else old_retention < config.distill.retention_floor
    plan = plan_retrain(RetrainInputs(
        usable=len(usable), seen_at_last=read_state(folder).seen, retrain_after=config.distill.retrain_after,
        min_records=min_records, heldout=len(held), heldout_configured=heldout_path is not None, regressed=regressed,
        mode=mode))
    retention = f" (current student's retention {old_retention:.3f})" if old_retention is not None else ""
    click.echo(plan.describe() + retention)
    if dry_run or not plan.retrain:
        return
    from ..extras import require

    require("export", "athanor retrain (it trains, exports and gates)")
    preflight(TrainSettings.from_config(config.distill))  # e.g. QLoRA without a GPU: fail before any work
    if plan.draw_heldout:
        _, held = stratified_split(usable, plan.draw_heldout / len(usable), seed=config.distill.seed)
        folder.mkdir(parents=True, exist_ok=True)
        write_dataset(drawn, held)
        click.echo(f"held-out set: {len(held)} log records drawn to {drawn}; they are never trained on")
    held_keys = {r.key for r in held}
    records = [r for r in usable if r.key not in held_keys]
    work = out_dir or folder / time.strftime("%Y%m%d-%H%M%S")
    dataset = work / TRAIN_FILE
    write_dataset(dataset, records)
    click.echo(f"dataset: {len(records)} records ({', '.join(f'{n} {k}' for k, n in dropped.items()) or 'none'} "
               f"dropped, {len(usable) - len(records)} held out)")
    adapter = work / "adapter"
    with train_progress("train") as report:
        result = train(records, base or _default_base(config), adapter, TrainSettings.from_config(config.distill),
                       dataset_sha256=file_sha256(dataset), on_progress=report,
                       on_log=lambda line: click.echo(line, err=True))
    click.echo(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; adapter in {adapter}")
    export = export_stage()
    if export is None:
        raise DistillError(f"export stage not available (no `export.pipeline` module); the trained adapter is in "
                           f"{adapter}; export it with `athanor export` and gate it by hand")
    gguf = export(adapter, work / "export", dataset)
    new_retention, new_evaluation = _retention(gguf, held, config, "new student")
    if old_retention is None:
        old_retention, _ = _retention(resolve_student(config.student).path, held, config, "current student")
    if not passes_gate(new_retention, old_retention):
        raise DistillError(f"the new student regresses (retention {new_retention} < {old_retention}); "
                           f"the daemon keeps the current one; the candidate is {gguf}")
    install(gguf, work / "export", target)
    write_state(folder, len(usable), target)
    if keep_router:
        console().print("--keep-router: the router stays as it was")
    else:
        _route_new_student(getattr(new_evaluation, "answers", []), config.routing.router)
    console().print(f"new student installed at {target} (retention {new_retention:.3f}, was {old_retention:.3f})")
    if not no_reload:
        from ..client import AthanorClient

        with AthanorClient(config.server.socket) as client:
            click.echo(client.reload().get("message", "reloaded"))
