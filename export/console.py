"""The export's progress on a terminal: one rich progress bar over the plan's steps, and a line per finished step.

What `athanor export` and `athanor retrain` show while an export runs; the pipeline itself only
reports `export.events`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from .events import ArtifactState, ExportEvents, Step

if TYPE_CHECKING:
    from .pipeline import Plan


class ConsoleEvents(ExportEvents):
    """Draws the bar (transient: gone when the run ends) and prints `done <what> (<s> s)` per step."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def on_start(self, plan: Plan) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.task = self.progress.add_task("export", total=plan.progress_total())
        self.progress.start()

    def on_step(self, step: Step) -> None:
        if self.progress is None or self.task is None:
            return
        if step.phase == "begin":
            self.progress.update(self.task, description=step.text)
            return
        self.progress.advance(self.task)
        self.console.print(f"[green]done[/] {self._describe(step)} [dim]({step.elapsed_s:.1f} s)[/]")

    def on_end(self, error: BaseException | None) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = self.task = None

    @staticmethod
    def _describe(step: Step) -> str:
        artifact: ArtifactState | None = step.artifact
        if artifact is not None and artifact.stage == "rejected":
            return f"[red]rejected[/] {artifact.label}: {'; '.join(artifact.reasons)}"
        return step.text
