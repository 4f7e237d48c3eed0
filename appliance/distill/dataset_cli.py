"""`athanor dataset export`: a harvested dataset in OpenAI's fine-tuning form, for other trainers.

Importing needs no command: every command that reads a dataset also reads OpenAI `messages` lines.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def dataset() -> None:
    """Move datasets to and from other trainers (OpenAI `messages` JSONL)."""


@dataset.command("export")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The JSONL to write, one {\"messages\": [...]} per record.")
def export_dataset(source: Path, out_path: Path) -> None:
    """Write SOURCE (a dataset JSONL, or a harvest folder's train.jsonl) as OpenAI fine-tuning JSONL."""
    from .records import TRAIN_FILE, read_dataset, resolve_dataset, write_dataset

    records = read_dataset(resolve_dataset(source, TRAIN_FILE))
    count = write_dataset(out_path, [r.to_openai() for r in records])
    click.echo(f"wrote {count} records to {out_path} (OpenAI messages; any command here reads it back)", err=True)
