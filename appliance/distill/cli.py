"""The distillation commands: `athanor harvest`, `train`, `evaluate`, `retrain` (thin faces on the modules)."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path

import click

from ..config import AthanorConfig
from . import DistillError
from .common import command_config as _config
from .common import default_base as _default_base
from .progress import bar, console
from .retrain_cli import retrain


def _teacher(config: AthanorConfig, model: str | None = None):
    from ..paths import state_dir
    from ..teacher import make_teacher

    cfg = config.teacher if model is None else config.teacher.model_copy(update={"model": model})
    teacher = make_teacher(cfg, state_dir())
    if teacher is None:
        raise DistillError("this needs a teacher: set [teacher].provider (gemini or openai) and its key")
    return teacher


@click.command()
@click.argument("prompts", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option("--from-log", "from_log", is_flag=True,
              help="Instead of PROMPTS: have the teacher answer the questions the daemon logged as pending (its "
                   "student was unsure and no teacher answered), within the budget; answers go to the log.")
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --from-log: the distillation log (default: <state>/distill.jsonl).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Dataset folder: raw.jsonl, train.jsonl, heldout.jsonl, dropped.jsonl, report.json.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Requests in flight ([distill].concurrency).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest answer ([distill].max_tokens).")
@click.option("--reasoning", is_flag=True, help="Ask the teacher to reason in <thinking>…</thinking>; both parts are kept.")
@click.option("--judge-model", default=None, help="A second model of the teacher's provider that vets each answer.")
@click.option("--heldout-fraction", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option("--no-dedup", is_flag=True, help="Keep near-duplicate prompts.")
@click.option("--dry-run", is_flag=True, help="Estimate tokens and cost; send nothing.")
@click.pass_context
def harvest(ctx: click.Context, prompts: Path | None, from_log: bool, log_path: Path | None, out_dir: Path | None,
            concurrency: int | None, max_tokens: int | None, reasoning: bool, judge_model: str | None,
            heldout_fraction: float | None, no_dedup: bool, dry_run: bool) -> None:
    """Ask the teacher every prompt in PROMPTS (JSONL, CSV or YAML) and build a train / held-out dataset.

    Resumable: a re-run skips the prompts already answered. Spends under [teacher]'s rate limit and daily budget.
    """
    from .harvest import HarvestSettings, estimate, finalize, run_harvest
    from .prompts import read_prompts
    from .records import RAW_FILE

    config = _config(ctx)
    if from_log:
        if prompts is not None:
            raise click.UsageError("give PROMPTS or --from-log, not both")
        _label_pending(config, log_path, max_tokens or config.distill.max_tokens, dry_run)
        return
    if prompts is None or out_dir is None:
        raise click.UsageError("harvest needs PROMPTS and --out (or --from-log)")
    items = read_prompts(prompts)
    settings = HarvestSettings.from_config(
        config.distill, concurrency=concurrency, max_tokens=max_tokens, reasoning=reasoning,
        heldout_fraction=heldout_fraction,
    )
    if no_dedup:
        settings = HarvestSettings(**{**asdict(settings), "dedup_threshold": None})
    if dry_run:
        from ..teacher.pricing import price_for

        plan = estimate(items, settings, price_for(config.teacher), out_dir / RAW_FILE)
        likely = f", likely ${plan.likely_cost_usd:.4f}" if plan.likely_cost_usd is not None else ""
        click.echo(f"{plan.pending} of {plan.prompts} prompts to ask {config.teacher.model}: "
                   f"~{plan.input_tokens} input tokens, at most {plan.max_output_tokens} output tokens; "
                   f"at most ${plan.max_cost_usd:.4f}{likely} (daily budget ${config.teacher.daily_budget_usd:.2f})")
        return

    async def go():
        teacher = _teacher(config)
        judge = _teacher(config, judge_model) if judge_model or config.distill.judge_model else None
        try:
            with bar("harvest", None, "$0.0000") as (progress, task):
                def advance(record, cost: float) -> None:
                    progress.update(task, advance=1, extra=f"${cost:.4f}")

                from .harvest import done_keys, pending_items
                progress.update(task, total=len(pending_items(items, done_keys(out_dir / RAW_FILE))))
                run = await run_harvest(items, teacher, out_dir, settings, advance)
            embedder = None
            if settings.dedup_threshold is not None:
                from ..cache.embedder import load_embedder

                embedder = load_embedder(config.cache.embedder)
            report = await finalize(out_dir, settings, embedder, judge)
        finally:
            await teacher.aclose()
            if judge is not None:
                await judge.aclose()
        return run, report

    run, report = asyncio.run(go())
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())) or "none"
    click.echo(f"asked {run.asked}, answered {run.answered} for ${run.cost_usd:.4f}; dataset: {report.train} train, "
               f"{report.heldout} held out; dropped: {dropped} (see {out_dir / 'report.json'})")
    for prompt, error in run.failures[:5]:
        click.echo(f"  failed: {prompt[:60]!r}: {error}", err=True)
    if run.failures or run.stopped:
        reason = run.stopped or f"{len(run.failures)} prompts failed"
        raise DistillError(f"harvest incomplete ({reason}); run the same command again to finish")




def _label_pending(config: AthanorConfig, log_path: Path | None, max_tokens: int, dry_run: bool) -> None:
    from ..protocol.distill_log import DistillLog, read_entries
    from ..paths import state_dir
    from ..teacher.base import TeacherParams
    from .pending import label_pending, pending_entries

    log = log_path or state_dir() / "distill.jsonl"
    entries = pending_entries(read_entries(log))
    if dry_run or not entries:
        click.echo(f"{len(entries)} pending questions in {log}" + ("" if entries else ": nothing to label"))
        return
    teacher = _teacher(config)
    writer = DistillLog(log)

    async def go():
        try:
            with bar("label pending", len(entries), "") as (progress, task):
                return await label_pending(entries, teacher, writer.append,
                                           TeacherParams(max_tokens=max_tokens, temperature=config.distill.temperature),
                                           lambda: progress.update(task, advance=1))
        finally:
            await teacher.aclose()
            writer.close()

    report = asyncio.run(go())
    click.echo(f"labelled {report.labelled} of {len(entries)} pending questions (${report.spent_usd:.4f}); "
               f"{report.failed} failed" + (f"; stopped: {report.stopped}; {report.left} left for later"
                                            if report.stopped else ""))


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path, exists=True))
@click.option("--base", type=click.Path(path_type=Path, exists=True), default=None,
              help="Base model: a Hugging Face folder or a .gguf file (default: [distill].base, else the embedded SmolLM2).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), required=True,
              help="Adapter folder (peft save_pretrained + training.json + loss.png + checkpoints/).")
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--lr", "learning_rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lora-r", type=click.IntRange(min=1), default=None)
@click.option("--lora-alpha", type=click.IntRange(min=1), default=None)
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option("--target-modules", default=None, help="Comma-separated LoRA targets ([distill].target_modules).")
@click.option("--modules-to-save", default=None, help="Comma-separated modules trained in full (e.g. lm_head).")
@click.option("--max-seq-len", type=click.IntRange(min=16), default=None)
@click.option("--with-reasoning", is_flag=True, help="Also teach the teacher's <thinking> part.")
@click.option("--kd-teacher", type=click.Path(path_type=Path, exists=True), default=None,
              help="A local model (same tokenizer) whose logits the student also learns (white-box distillation).")
@click.option("--kd-alpha", type=click.FloatRange(0, 1), default=None)
@click.option("--kd-temperature", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps (resume later).")
@click.option("--validation-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share held back for validation loss and early stopping ([distill].validation_fraction; 0: off).")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Validations without a new lowest loss before stopping ([distill].patience; 0: never early).")
@click.option("--balance-max", type=click.IntRange(min=1), default=None,
              help="Repeat rarer labels of a label category up to N times each ([distill].balance_max; 1: off).")
@click.option("--lora-layers", type=click.IntRange(min=1), default=None,
              help="Adapt only the top N layers: faster on a CPU ([distill].lora_layers; default all).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="Base weights and forward pass ([distill].precision; auto: bf16 on a GPU that has it, fp16 on an "
                   "older GPU, fp32 on a CPU). LoRA weights stay fp32.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=None,
              help="Micro-batches per optimizer step: an effective batch of batch size × N ([distill].grad_accum).")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute activations in the backward pass: much less memory, about a third slower "
                   "([distill].gradient_checkpointing).")
@click.option("--quantize-base", type=click.Choice(["none", "4bit"]), default=None,
              help="4bit: QLoRA, the base in NF4; needs CUDA and bitsandbytes ([distill].quantize_base).")
@click.option("--seed", type=int, default=None)
@click.option("--no-group-by-length", "group_by_length", flag_value=False, default=None,
              help="Batch in plain random order instead of grouping similar lengths (more padding, slower).")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True,
              help="Without a terminal: a progress line every this many steps (and at least every 30 s).")
@click.pass_context
def train(ctx: click.Context, dataset: Path, base: Path | None, out_dir: Path, target_modules: str | None,
          modules_to_save: str | None, kd_teacher: Path | None, log_every: int, **options) -> None:
    """LoRA-train a student on DATASET (a train.jsonl, or a harvest folder). Resumes from OUT/checkpoints."""
    from .progress import train_progress
    from .records import TRAIN_FILE, file_sha256, read_dataset, resolve_dataset
    from .train import TrainSettings, preflight
    from .train import train as run_training

    config = _config(ctx)
    split = lambda text: tuple(p.strip() for p in text.split(",") if p.strip()) if text else None  # noqa: E731
    settings = TrainSettings.from_config(config.distill, target_modules=split(target_modules),
                                         modules_to_save=split(modules_to_save), **options)
    preflight(settings)  # settings this machine cannot train with fail before the dataset is read
    path = resolve_dataset(dataset, TRAIN_FILE)
    records = read_dataset(path)
    base = base or _default_base(config)
    with train_progress("train", every=log_every) as report:
        result = run_training(records, base, out_dir, settings, dataset_sha256=file_sha256(path),
                              kd_teacher=kd_teacher, on_progress=report,
                              on_log=lambda line: click.echo(line, err=True))
    resumed = f" (resumed at step {result.resumed_from})" if result.resumed_from else ""
    if not result.finished:
        click.echo(f"stopped at step {result.steps} of {result.total_steps}{resumed}; run again to resume")
        return
    kept = ""
    if result.best_step is not None:
        best = dict(result.val_losses)[result.best_step]
        kept = (f"; kept step {result.best_step} (validation loss {best:.4f})"
                f"{', stopped early' if result.stopped_early else ''}")
    click.echo(f"trained {result.steps} steps{resumed}, final loss {result.final_loss:.4f}{kept}; adapter in {out_dir}")


@click.command()
@click.option("--dataset", type=click.Path(path_type=Path, exists=True), required=True,
              help="Held-out JSONL (or a harvest folder: its heldout.jsonl).")
@click.option("--student", "student_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="The student: a .gguf file, a peft adapter folder or a model folder.")
@click.option("--teacher", "teacher_spec", default=None,
              help="Re-ask a teacher: a model name at [teacher]'s provider, or a local model path. "
                   "Default: the harvested answers.")
@click.option("--judge-model", default=None, help="Judge for open answers (default: [distill].judge_model, else "
                                                  "the configured teacher, else word-overlap F1).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--target-quality", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Quality the recommended threshold must keep ([distill].target_quality).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where evaluation.json and cost_quality.png go (default: next to the dataset).")
@click.pass_context
def evaluate(ctx: click.Context, dataset: Path, student_path: Path, teacher_spec: str | None,
             judge_model: str | None, max_tokens: int, target_quality: float | None, out_dir: Path | None) -> None:
    """Student against teacher on held-out prompts: quality and retention per category, and the routing threshold."""
    from .evaluate import EvalSettings, write_outputs
    from .evaluate import evaluate as run_evaluation
    from .records import HELDOUT_FILE, read_dataset, resolve_dataset
    from .report import print_evaluation
    from .students import open_runner

    config = _config(ctx)
    path = resolve_dataset(dataset, HELDOUT_FILE)
    records = read_dataset(path)
    settings = EvalSettings(max_tokens=max_tokens, target_quality=target_quality or config.distill.target_quality,
                            confidence_quantile=config.routing.confidence_quantile)
    out_dir = out_dir or path.parent / f"eval-{student_path.stem}"

    async def go():
        student = open_runner(student_path, hold_tokens=config.routing.hold_tokens)
        teacher = judge = None
        try:
            if teacher_spec is not None:
                teacher = open_runner(Path(teacher_spec)) if Path(teacher_spec).exists() else _teacher(config, teacher_spec)
            judge_name = judge_model or config.distill.judge_model
            if judge_name or config.teacher.provider != "none":
                judge = _teacher(config, judge_name)
            with bar("evaluate", len(records), "") as (progress, task):
                return await run_evaluation(records, student, settings, teacher, judge,
                                            lambda item: progress.update(task, advance=1))
        finally:
            student.close()
            for remote in (teacher, judge):
                if remote is not None and hasattr(remote, "aclose"):
                    await remote.aclose()
                elif remote is not None:
                    remote.close()

    evaluation = asyncio.run(go())
    report, png = write_outputs(evaluation, out_dir)
    print_evaluation(evaluation, console())
    click.echo(f"report: {report}; curve: {png}")


def register(group: click.Group) -> None:
    """Add the distillation commands to the `athanor` group."""
    for command in (harvest, train, evaluate, retrain):
        group.add_command(command)
