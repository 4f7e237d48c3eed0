"""Progress for the long distillation steps (the library modules take plain callbacks).

On a terminal: rich progress bars. Without one (a log file, journald under a systemd timer) a bar
redraws nothing until it ends, so there progress is written as plain lines instead: one every few
steps and at least every `INTERVAL` seconds, each complete in itself (step, loss, rate, ETA).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from .train import StepInfo

INTERVAL = 30.0
"""Longest silence (seconds) between two progress lines when no terminal is attached."""
TRAIN_EVERY = 10
"""A progress line every this many training steps when no terminal is attached."""
LOSS_WINDOW = 10
"""Steps the running mean of the loss covers."""


def console() -> Console:
    """Progress and tables go to stderr, so stdout stays clean for `--json`."""
    return Console(stderr=True)


def stderr_is_terminal() -> bool:
    """Whether stderr is a TTY (rich's own test also says yes to FORCE_COLOR, which a log is not)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def duration(seconds: float | None) -> str:
    """A short human duration: 42s, 3m05s, 1h02m; `?` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Lines:
    """Writes a line when `every` units have passed since the last one, `interval` seconds have, or at the end."""

    def __init__(self, stream: IO[str] | None, every: int, interval: float, clock: Callable[[], float]):
        self.stream, self.every, self.interval, self.clock = stream, max(1, every), interval, clock
        self.last_done: int | None = None
        self.last_time = clock()

    def due(self, done: int, total: float | None) -> bool:
        return (self.last_done is None or done - self.last_done >= self.every or done == total
                or self.clock() - self.last_time >= self.interval)

    def write(self, done: int, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text + "\n")
        stream.flush()
        self.last_done, self.last_time = done, self.clock()


class TrainLog:
    """`on_progress` for `train` without a terminal: a line per `every` steps, at least every `interval`
    seconds, on the first step (so a log shows the pace early) and on the last:

        train step 20/135 (15%) epoch 1/3 loss 0.4123 (mean of 10: 0.5210) 480 tok/s 8.1 s/step elapsed 2m41s ETA 15m28s

    The loss's mean covers the last `window` steps; tok/s (real, non-padding tokens) and the ETA are
    this run's averages so far (a resumed run's, from its own first step).
    """

    def __init__(self, description: str = "train", stream: IO[str] | None = None, every: int = TRAIN_EVERY,
                 interval: float = INTERVAL, window: int = LOSS_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.description = description
        self.lines = _Lines(stream, every, interval, clock)
        self.losses: deque[float] = deque(maxlen=max(1, window))

    def line(self, info: StepInfo) -> str:
        mean = sum(self.losses) / len(self.losses)
        return (f"{self.description} step {info.step}/{info.total} ({info.step / info.total:.0%}) "
                f"epoch {info.epoch}/{info.epochs} loss {info.loss:.4f} (mean of {len(self.losses)}: {mean:.4f}) "
                f"{info.tokens_per_s:.0f} tok/s {info.elapsed / max(1, info.run_steps):.1f} s/step "
                f"elapsed {duration(info.elapsed)} ETA {duration(info.eta)}")

    def __call__(self, info: StepInfo) -> None:
        self.losses.append(info.loss)
        if self.lines.due(info.step, info.total):
            self.lines.write(info.step, self.line(info))


def _rich_progress(remaining: bool = True) -> Progress:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[extra]}"), TimeElapsedColumn()]
    return Progress(*columns, *([TimeRemainingColumn()] if remaining else []), console=console(), transient=False)


@contextmanager
def train_progress(description: str = "train", every: int = TRAIN_EVERY, interval: float = INTERVAL,
                   stream: IO[str] | None = None) -> Iterator[Callable[[StepInfo], None]]:
    """An `on_progress` callback for `train`: a live bar on a terminal, `TrainLog` lines otherwise
    (or whenever `stream` is given)."""
    if stream is not None or not stderr_is_terminal():
        yield TrainLog(description, stream, every, interval)
        return
    losses: deque[float] = deque(maxlen=LOSS_WINDOW)
    # The ETA is train's own (rich's would count a resumed run's first jump as speed).
    with _rich_progress(remaining=False) as progress:
        task = progress.add_task(description, total=None, extra="")

        def update(info: StepInfo) -> None:
            losses.append(info.loss)
            extra = (f"epoch {info.epoch}/{info.epochs} loss {sum(losses) / len(losses):.4f} "
                     f"{info.tokens_per_s:.0f} tok/s ETA {duration(info.eta)}")
            progress.update(task, completed=info.step, total=info.total, extra=extra)

        yield update


class LineProgress:
    """The part of rich's `Progress` that `bar` callers use (`add_task`, `update`), as plain lines:
    one per ~5% of the total (or `every` updates when the total is unknown) and at least every `interval` s."""

    def __init__(self, stream: IO[str] | None = None, every: int | None = None, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.every, self.interval, self.clock = stream, every, interval, clock
        self.tasks: dict[int, dict[str, Any]] = {}

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": 0, "fields": fields,
                            "start": self.clock(), "first": None,
                            "lines": _Lines(self.stream, self.every or 10, self.interval, self.clock)}
        return task

    def update(self, task: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, **fields: Any) -> None:
        state = self.tasks[task]
        if total is not None:
            state["total"] = total
        if completed is not None:
            state["completed"] = completed
        if advance is not None:
            state["completed"] += advance
        state["fields"].update(fields)
        done, total = int(state["completed"]), state["total"]
        if state["first"] is None:
            # Where the pace is measured from: the task's start for work counted up from it, the first
            # update for a count set outright (a resumed training starts past 0, after loading a model).
            state["first"] = (done - advance, state["start"]) if advance is not None else (done, self.clock())
        lines: _Lines = state["lines"]
        if total and self.every is None:
            lines.every = max(1, int(total) // 20)
        if lines.due(done, total):
            lines.write(done, self.line(state))

    def finish(self, task: int) -> None:
        """The last line, unless the last update already wrote it."""
        state = self.tasks[task]
        if state["first"] is not None and state["lines"].last_done != int(state["completed"]):
            state["lines"].write(int(state["completed"]), self.line(state))

    def line(self, state: dict[str, Any]) -> str:
        done, total = state["completed"], state["total"]
        elapsed = self.clock() - state["start"]
        first_done, first_time = state["first"]
        rate_time = self.clock() - first_time
        count = f"{int(done)}/{int(total)} ({done / total:.0%})" if total else f"{int(done)}"
        eta = None
        if total and done > first_done and rate_time > 0:
            eta = (total - done) * rate_time / (done - first_done)
        extra = str(state["fields"].get("extra", "")).strip()
        return " ".join(p for p in (state["description"], count, extra, f"elapsed {duration(elapsed)}",
                                    f"ETA {duration(eta)}" if total else "") if p)


@contextmanager
def bar(description: str, total: int | None, extra: str = "") -> Iterator[tuple[Any, int]]:
    """A progress bar with a free-text field (`extra`: running cost, loss) updated through `progress.update`.

    Without a terminal, `LineProgress` writes the same as lines, so a log shows the work moving."""
    if not stderr_is_terminal():
        lines = LineProgress()
        task = lines.add_task(description, total=total, extra=extra)
        yield lines, task
        lines.finish(task)
        return
    progress = _rich_progress()
    with progress:
        task = progress.add_task(description, total=total, extra=extra)
        yield progress, task
