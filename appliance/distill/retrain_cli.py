"""`athanor retrain` (what athanor-retrain.service runs weekly, with --if-regressed)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from . import DistillError
from .cli import _config, _default_base
from .progress import bar, console


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


@click.command()
@click.option("--if-regressed", is_flag=True,
              help="First evaluate the current student; retrain only if its retention is under [distill].retention_floor.")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Distillation log (default: <state>/distill.jsonl, where the daemon writes it).")
@click.option("--heldout", type=click.Path(path_type=Path, exists=True), default=None,
              help="Held-out set the gate measures on ([distill].heldout).")
@click.option("--base", type=click.Path(path_type=Path, exists=True), default=None,
              help="Base model to train ([distill].base, else the embedded SmolLM2).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Work folder (default: <state>/retrain/<time>).")
@click.option("--min-records", type=click.IntRange(min=1), default=20, show_default=True,
              help="Fewer usable log records than this: nothing to learn yet, stop.")
@click.option("--no-reload", is_flag=True, help="Install the new student but do not ask the daemon to reload.")
@click.pass_context
def retrain(ctx: click.Context, if_regressed: bool, log_path: Path | None, heldout: Path | None, base: Path | None,
            out_dir: Path | None, min_records: int, no_reload: bool) -> None:
    """Rebuild the student from the daemon's distillation log; hand it over only if it does not regress."""
    from ..defaults import embedded_student_path
    from ..paths import state_dir
    from .records import HELDOUT_FILE, TRAIN_FILE, file_sha256, read_dataset, resolve_dataset, write_dataset
    from .retrain import build_dataset, export_stage, install, passes_gate
    from .train import TrainSettings, train

    config = _config(ctx)
    heldout_path = heldout or config.distill.heldout
    if heldout_path is None:
        raise DistillError("retrain needs a held-out set to gate on: set [distill].heldout to the heldout.jsonl "
                           "of an `athanor harvest` (or pass --heldout)")
    held = read_dataset(resolve_dataset(heldout_path, HELDOUT_FILE))
    current = config.student.path or embedded_student_path()
    old_retention = None
    if if_regressed:
        old_retention, _ = _retention(current, held, config, "current student")
        floor = config.distill.retention_floor
        if old_retention is not None and old_retention >= floor:
            click.echo(f"retention {old_retention:.3f} >= floor {floor:.3f}: the student holds up; nothing to do")
            return
    log = log_path or state_dir() / "distill.jsonl"
    extra = read_dataset(config.distill.train_dataset) if config.distill.train_dataset else []
    embedder = None
    if config.distill.dedup_threshold:
        from ..cache.embedder import load_embedder

        embedder = load_embedder(config.cache.embedder)
    records, dropped = build_dataset(log, held, extra, embedder, config.distill.language, config.distill.dedup_threshold)
    if len(records) < min_records:
        raise DistillError(f"only {len(records)} usable records in {log} (+ [distill].train_dataset); "
                           f"need {min_records}: let the daemon log more teacher answers, or lower --min-records")
    work = out_dir or state_dir() / "retrain" / time.strftime("%Y%m%d-%H%M%S")
    dataset = work / TRAIN_FILE
    write_dataset(dataset, records)
    click.echo(f"dataset: {len(records)} records ({', '.join(f'{n} {k}' for k, n in dropped.items()) or 'none'} dropped)")
    adapter = work / "adapter"
    with bar("train", None, "") as (progress, task):
        result = train(records, base or _default_base(config), adapter, TrainSettings.from_config(config.distill),
                       dataset_sha256=file_sha256(dataset),
                       on_step=lambda s, n, loss: progress.update(task, completed=s, total=n, extra=f"loss {loss:.4f}"))
    click.echo(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; adapter in {adapter}")
    export = export_stage()
    if export is None:
        raise DistillError(f"export stage not available (no `export.pipeline` module); the trained adapter is in "
                           f"{adapter}; export it with `athanor export` and gate it by hand")
    gguf = export(adapter, work / "export", dataset)
    new_retention, _ = _retention(gguf, held, config, "new student")
    if old_retention is None:
        old_retention, _ = _retention(current, held, config, "current student")
    if not passes_gate(new_retention, old_retention):
        raise DistillError(f"the new student regresses (retention {new_retention} < {old_retention}); "
                           f"the daemon keeps the current one; the candidate is {gguf}")
    if config.student.path is None:
        raise DistillError(f"the new student ({gguf}) passes the gate, but [student].path is unset (the embedded "
                           f"model is served); set [student].path to a file in the state folder to let retrain swap it")
    install(gguf, work / "export", config.student.path)
    console().print(f"new student installed at {config.student.path} "
                    f"(retention {new_retention:.3f}, was {old_retention:.3f})")
    if not no_reload:
        from ..client import AthanorClient

        with AthanorClient(config.server.socket) as client:
            click.echo(client.reload().get("message", "reloaded"))
