"""`athanor router refit`: learn the router from the teacher's verdicts in this appliance's own log."""

from __future__ import annotations

import json
from pathlib import Path

import click

DEFAULT_MIN_LABELS = 60


@click.group()
def router() -> None:
    """The router that decides when the student's answer is kept."""


@router.command("refit")
@click.option("--log", "log_path", type=click.Path(path_type=Path), default=None,
              help="Distillation log (default: <state>/distill.jsonl, where the daemon writes it).")
@click.option("--min-labels", type=click.IntRange(min=20), default=DEFAULT_MIN_LABELS, show_default=True,
              help="Fewer checkable teacher verdicts than this: nothing is fitted.")
@click.option("--dry-run", is_flag=True, help="Fit and report; install nothing.")
@click.option("--json", "as_json", is_flag=True, help="The outcome as JSON on stdout.")
@click.option("--no-reload", is_flag=True, help="Install but do not ask the daemon to reload.")
@click.pass_context
def refit_command(ctx: click.Context, log_path: Path | None, min_labels: int, dry_run: bool, as_json: bool,
                  no_reload: bool) -> None:
    """Fit the router on the log's teacher verdicts about the current student; install it if it does no worse.

    Only answers the teacher's can check (yes/no, numbers, a few words) are labels. Three in ten
    questions are held back to judge the new router against the one in use; it is installed at
    <state>/router/router.json only when it separates right from wrong at least as well there, and
    the daemon, asked to reload, then routes by it (with `[routing].router = "default"`). Beside it goes
    the router of the answers' first `[routing].hold_tokens` tokens, which decides what streams with a
    teacher, placed on the same verdicts (router_early.json); or none, and answers are held to their end."""
    from .. import paths
    from ..protocol.distill_log import read_entries
    from .decide import DEFAULT_ROUTER, early_path, load_policy
    from .learned import LogisticRouter
    from .refit import examples, place_early, refit

    from ..config import load_config

    config = load_config(ctx.obj["config_path"])
    setting = config.routing.router
    records = list(read_entries(log_path or paths.state_dir() / "distill.jsonl"))
    versions = [r.student.version for r in records if r.student is not None and r.student.signals is not None]
    version = versions[-1] if versions else None
    found, unlabelled = examples(records, version)
    current = load_policy(setting) if setting != "off" else None
    outcome = refit(found, unlabelled, current, min_labels)
    target = paths.refit_router_file()
    installed = outcome.install and outcome.router is not None and not dry_run
    early = None
    if outcome.install and outcome.router is not None:
        # What streams with a teacher configured is decided by the router of the first tokens: it is
        # placed for this student too, or there is none and answers are held to their end.
        early = place_early(examples(records, version, early=True)[0], outcome.router,
                            LogisticRouter.load(early_path(DEFAULT_ROUTER)), min_labels)
    if installed:
        assert outcome.router is not None and early is not None
        outcome.router.save(target)
        early_path(target).unlink(missing_ok=True)
        if early.router is not None:
            early.router.save(early_path(target))
    if as_json:
        click.echo(json.dumps({"student_version": version, "labelled": outcome.labelled,
                               "unlabelled": outcome.unlabelled, "held_back": outcome.holdout,
                               "auroc_new": outcome.auroc_new, "auroc_current": outcome.auroc_current,
                               "installed": installed, "path": str(target) if installed else None,
                               "reason": outcome.reason, "early": early.reason if early is not None else None,
                               "early_installed": installed and early is not None and early.router is not None}))
    else:
        click.echo(f"student {version or '(none logged)'}: {outcome.labelled} checkable teacher verdicts, "
                   f"{outcome.unlabelled} free-text ones not used", err=True)
        click.echo(outcome.reason, err=True)
        if early is not None:
            click.echo(early.reason, err=True)
        if installed:
            click.echo(f"installed {target}", err=True)
        elif dry_run and outcome.install:
            click.echo("dry run: nothing installed", err=True)
    if installed and not no_reload and config.server.socket.exists():
        from ..clients.daemon_client import AthanorClient

        with AthanorClient(config.server.socket) as client:
            click.echo(client.reload().get("message", "reloaded"), err=True)
