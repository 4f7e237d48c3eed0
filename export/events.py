"""What an export run reports while it works: each artifact's state, and each step as it begins and ends.

The pipeline draws nothing itself; it calls an `ExportEvents` (the default does nothing) and the
caller decides how to show it (the CLI's progress bar lives in `export.console`). Light on purpose:
standard library only.

Every requested artifact moves through

    planned -> built -> verified -> published
                                 -> rejected

`verified` means measured against the merged model (its figures are known); the gate's verdict,
`published` or `rejected` (with reasons), comes next and is final.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .pipeline import Plan

Format = Literal["gguf", "onnx"]
Stage = Literal["planned", "built", "verified", "published", "rejected"]
Phase = Literal["begin", "done"]

NEXT: dict[Stage, tuple[Stage, ...]] = {
    "planned": ("built",),
    "built": ("verified",),
    "verified": ("published", "rejected"),
    "published": (),
    "rejected": (),
}
"""The stages an artifact may move to from each stage."""


@dataclass(frozen=True)
class ArtifactState:
    """One requested artifact at one stage of its export."""

    format: Format
    quant: str
    stage: Stage = "planned"
    path: Path | None = None
    """Where it lies now: the build in the work folder (built, verified), the published path, or, once
    rejected, the path it would have been published at (nothing is left there)."""
    size_bytes: int | None = None
    """All of its files together, once built."""
    figures: dict[str, Any] = field(default_factory=dict)
    """What verification measured and the gate's limits (the manifest's `verification`), once verified."""
    reasons: tuple[str, ...] = ()
    """Why the gate rejected it (rejected only)."""

    @property
    def label(self) -> str:
        return f"{self.format}:{self.quant}"

    @property
    def final(self) -> bool:
        return not NEXT[self.stage]

    def advance(self, stage: Stage, **changes: Any) -> ArtifactState:
        """The same artifact at `stage` (with `changes`); raises ValueError for a move the stages do not allow."""
        if stage not in NEXT[self.stage]:
            raise ValueError(f"{self.label} cannot move from {self.stage} to {stage}")
        if stage == "rejected" and not changes.get("reasons", self.reasons):
            raise ValueError(f"{self.label} cannot be rejected without a reason")
        return dataclasses.replace(self, stage=stage, **changes)


@dataclass(frozen=True)
class Step:
    """One step of the plan (merge, reference run, each build and verification, the manifest) beginning or done."""

    phase: Phase
    text: str
    """What is happening (begin) or what was done (done), plain text."""
    elapsed_s: float = 0.0
    """Seconds since the step began (done only)."""
    artifact: ArtifactState | None = None
    """A verification step's verdict, `published` or `rejected` (done only)."""


class ExportEvents:
    """Callbacks for one `run_export`; every one does nothing here, so subclass and override what you need.

    Order: `on_start` once, then `on_step` and `on_artifact` as the run goes, then `on_end` once,
    also when the run fails (`error` is the exception, which `run_export` then raises).
    The number of `done` steps a full run reports is `plan.progress_total()`.
    """

    def on_start(self, plan: Plan) -> None:
        """The plan is validated; the work begins."""

    def on_step(self, step: Step) -> None:
        """A step began or finished."""

    def on_artifact(self, state: ArtifactState) -> None:
        """A requested artifact reached a new stage (each is first reported `planned`)."""

    def on_end(self, error: BaseException | None) -> None:
        """The run is over: the manifest is written (error None), or it failed."""
