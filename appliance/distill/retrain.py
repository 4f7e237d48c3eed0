"""`athanor retrain`: the daemon's distillation log -> dataset -> LoRA -> export -> gate -> hand-over.

The gate: the new student's retention on the held-out set must not fall below the current
student's (the daemon keeps the old one otherwise). The hand-over replaces the file at
`[student].path` atomically and asks the daemon to reload.
"""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

from ..protocol.distill_log import read_entries
from ..protocol.log_entry import LogEntry
from ..protocol.manifest import choose_artifact, verify_artifact
from .dedup import Embeds, dedup_records
from .filters import rule_reason
from .records import Record

LOG_CATEGORY = "daemon"
EXPORT_MODULE = "export.pipeline"


def record_from_log(entry: LogEntry) -> Record | None:
    """A dataset record from one distillation-log entry (None when it holds no usable teacher answer)."""
    teacher = entry.teacher
    if teacher is None or not teacher.text:
        return None
    system = [m["content"] for m in entry.messages if m["role"] in ("system", "developer")]
    turns = [m for m in entry.messages if m["role"] in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        return None
    return Record(
        prompt=turns[-1]["content"], answer=teacher.text, role="\n\n".join(system) or None,
        category=LOG_CATEGORY, history=tuple(turns[:-1]), input_tokens=teacher.input_tokens,
        output_tokens=teacher.output_tokens, cost_usd=teacher.cost_usd, teacher_model=teacher.model, source="log",
    )


def build_dataset(log: Path, heldout: Sequence[Record], extra: Sequence[Record], embedder: Embeds | None,
                  language: str = "auto", dedup_threshold: float | None = 0.65) -> tuple[list[Record], dict[str, int]]:
    """Training records from the log (plus `extra`), never a held-out question; and the drop counts."""
    dropped: dict[str, int] = {}
    held = {r.key for r in heldout}
    seen: set[str] = set()
    records: list[Record] = []
    for record in [*extra, *(r for r in map(record_from_log, read_entries(log)) if r is not None)]:
        reason = "heldout" if record.key in held else "duplicate" if record.key in seen else rule_reason(record, language)
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add(record.key)
        records.append(record)
    if dedup_threshold is not None and embedder is not None:
        records, duplicates = dedup_records(records, embedder, dedup_threshold)
        if duplicates:
            dropped["near_duplicate"] = len(duplicates)
    return records, dropped


def export_stage() -> Callable[[Path, Path, Path], Path] | None:
    """`export(adapter, out, dataset) -> GGUF path` through the `export` package, or None if it is not there."""
    try:
        pipeline = importlib.import_module(EXPORT_MODULE)
        console = importlib.import_module("export.console")
    except ImportError:
        return None

    def export(adapter: Path, out: Path, dataset: Path) -> Path:
        # The export stage merges, writes GGUF, quantizes, verifies each build against the merged model
        # and publishes a manifest; the daemon serves the smallest GGUF that passed.
        # Its progress bar and "done ..." lines are drawn here, from the pipeline's events.
        published = pipeline.run_export(pipeline.ExportOptions(adapter=adapter, out=out, dataset=dataset),
                                        console.ConsoleEvents())
        return verify_artifact(choose_artifact(published, "gguf"), out)

    return export


def passes_gate(new_retention: float | None, old_retention: float | None, tolerance: float = 0.0) -> bool:
    """True when the new student keeps at least the old one's retention (within `tolerance`)."""
    if new_retention is None:
        return False
    return old_retention is None or new_retention >= old_retention - tolerance


def install(gguf: Path, export_dir: Path, target: Path) -> Path:
    """Put the new student where `[student].path` points, keeping the old one beside it as `.prev`.

    A GGUF file is replaced by the new GGUF (copied beside it, then renamed over it); an export
    folder (or its manifest.json, or a folder not made yet) by the whole new export folder, swapped in
    by two renames.
    """
    if target.name == "manifest.json" or target.is_dir() or target.suffix != ".gguf":
        folder = target.parent if target.name == "manifest.json" else target
        staging, previous = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".prev")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(export_dir, staging)
        shutil.rmtree(previous, ignore_errors=True)
        if folder.exists():
            folder.rename(previous)
        staging.rename(folder)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".new")
    shutil.copyfile(gguf, staging)
    with staging.open("rb") as handle:
        os.fsync(handle.fileno())
    if target.exists():
        shutil.copyfile(target, target.with_name(target.name + ".prev"))
    os.replace(staging, target)
    return target
