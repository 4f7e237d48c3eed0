"""`athanor export`: the command line face of the export pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from .verify import DEFAULT_THRESHOLDS


def _types(value: str) -> list[str]:
    return [part for part in value.split(",") if part.strip()] if value else []


@click.command("export")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path), default=None,
              help="Base model: an HF folder or a .gguf file (default: the base named in ADAPTER/training.json).")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Export folder (manifest.json goes here).")
@click.option("--gguf", "gguf", default="q8_0,q4_k_m", show_default=True,
              help="GGUF types to build, comma-separated (f16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0 ...); '' for none.")
@click.option("--onnx", "onnx", default="", show_default=True, help="ONNX types to build: fp32, fp16, int8; '' for none.")
@click.option("--name", default=None, help="Student name (file names, default model id); default: the adapter folder's name.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="Held-out prompts for verification: one per line, or JSONL with `prompt`.")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=24, show_default=True,
              help="Tokens generated per prompt when verifying.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Override every type's least greedy-token agreement to publish.")
@click.option("--max-kl", type=click.FloatRange(min=0), default=None,
              help="Override every type's largest mean KL divergence (nats) to publish.")
@click.option("--dataset", type=click.Path(path_type=Path), default=None,
              help="The training JSONL, hashed into the manifest (default: from training.json).")
@click.option("--threads", type=int, default=0, help="CPU threads (0: all cores).")
@click.option("--keep-work", is_flag=True, help="Keep the merged model and intermediate files in OUT/.work.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit.")
def export_command(adapter: Path, base: Path | None, out: Path, gguf: str, onnx: str, name: str | None,
                   prompts_file: Path | None, max_new_tokens: int, min_agreement: float | None, max_kl: float | None,
                   dataset: Path | None, threads: int, keep_work: bool, dry_run: bool) -> None:
    """Merge ADAPTER into its base, build GGUF/ONNX students, verify them and publish those that pass.

    Default gates (least agreement / most mean KL per type): """
    from appliance.extras import require

    require("export", "athanor export")
    from .console import ConsoleEvents
    from .pipeline import ExportOptions, make_plan, read_prompts, run_export
    from .verify import Gate

    options = ExportOptions(adapter=adapter, out=out, base=base, gguf=_types(gguf), onnx=_types(onnx), name=name,
                            max_new_tokens=max_new_tokens, dataset=dataset, threads=threads, keep_work=keep_work,
                            gate=Gate().overridden(min_agreement, max_kl))
    if prompts_file is not None:
        options.prompts = read_prompts(prompts_file)
    plan = make_plan(options)
    if dry_run:
        for number, step in enumerate(plan.steps(), 1):
            click.echo(f"{number}. {step}")
        return
    manifest = run_export(options, ConsoleEvents())
    for artifact in manifest.artifacts:
        v = artifact.verification
        click.echo(f"published {artifact.label:<12} {artifact.size_bytes / 1e6:8.1f} MB  agreement {v['agreement']:.3f}  "
                   f"KL {v['kl_mean']:.4f}  {v['tokens_per_s']:.0f} tok/s  {out / artifact.path}")
    for artifact in manifest.rejected:
        click.echo(f"rejected  {artifact.label:<12} {'; '.join(artifact.reasons)}", err=True)
    if not manifest.artifacts:
        raise click.ClickException("no artifact passed its gate; nothing was published (see manifest.json `rejected`)")


export_command.help = (export_command.help or "") + ", ".join(
    f"{q} {t.min_agreement}/{t.max_kl}" for q, t in DEFAULT_THRESHOLDS.items()) + "."
