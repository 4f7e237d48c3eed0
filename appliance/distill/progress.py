"""Rich progress bars for the long distillation steps (the library modules take plain callbacks)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def console() -> Console:
    """Progress and tables go to stderr, so stdout stays clean for `--json`."""
    return Console(stderr=True)


@contextmanager
def bar(description: str, total: int | None, extra: str = "") -> Iterator[tuple[Progress, int]]:
    """A progress bar with a free-text field (`extra`: running cost, loss) updated through `progress.update`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console(), transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, extra=extra)
        yield progress, task
