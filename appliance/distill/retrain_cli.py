"""`athanor retrain` (what athanor-retrain.service runs weekly, with --if-regressed): options in, lines out;
the work is `retrain_pipeline.run_retrain`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import command_config
from .progress import bar, console, train_progress
from .retrain_pipeline import RetrainHooks, RetrainRequest, run_retrain
from .retrain_plan import MIN_RECORDS


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
    if when_due and if_regressed:
        raise click.UsageError("--when-due already retrains on a regression; give one of --when-due, --if-regressed")
    config = command_config(ctx)

    def reload() -> str:
        from ..clients.daemon_client import AthanorClient

        with AthanorClient(config.server.socket) as client:
            return str(client.reload().get("message", "reloaded"))

    # Result lines on stdout (a script or the journal reads them); the hand-over's lines on stderr with the
    # progress, through rich, as before.
    hooks = RetrainHooks(say=click.echo, note=lambda line: console().print(line),
                         log=lambda line: click.echo(line, err=True), bar=bar,
                         train_progress=lambda description: train_progress(description), reload=reload)
    run_retrain(RetrainRequest(
        config=config, mode="regressed" if if_regressed else "due" if when_due else "always", dry_run=dry_run,
        log=log_path, heldout=heldout, base=base, out_dir=out_dir, min_records=min_records, reload=not no_reload,
        keep_router=keep_router), hooks)
