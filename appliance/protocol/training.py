"""`training.json`: what `athanor train` records beside an adapter, as one typed record.

The trainer writes it and the export stage and the local runners read it; both sides go through
`TrainingMeta` so that the keys are named in one place. Standard library only: the export stage and
`athanor evaluate` read it without the training stack.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRAINING_FILE = "training.json"

# Accepted on read for the canonical keys. No `athanor train` in this repository's history wrote
# them (it has written `base_model` and `dataset_sha256` since it first appeared, commit 38df6f3),
# but the export stage accepted them from that same commit on, so a hand-written or tool-written
# training.json may rely on them. The canonical key wins when both are there.
_ALIASES = {"base_model": "base", "dataset_sha256": "dataset_hash"}


@dataclass(frozen=True)
class TrainingMeta:
    """One training run's record: the base and data it used, its settings and its loss curve.

    Field order is the key order of the file, which people read by eye.
    """

    adapter_format: str = "peft-lora"
    base_model: str | None = None
    """The base the adapter was trained on (resolved path): the export stage's default `--base`."""
    base_format: str | None = None
    """`gguf` or `hf`."""
    dataset_sha256: str | None = None
    """Of the training JSONL, so that an export names its data."""
    examples: int = 0
    skipped_examples: int = 0
    truncated_examples: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    kd_teacher: str | None = None
    precision: str = "fp32"
    effective_batch_size: int | None = None
    grad_accum: int | None = None
    gradient_checkpointing: bool = False
    quantize_base: str = "none"
    steps: int = 0
    final_loss: float | None = None
    losses: tuple[tuple[int, float], ...] = ()
    validation_losses: tuple[tuple[int, float], ...] = ()
    best_step: int | None = None
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TrainingMeta:
        """Parse a training.json; unknown keys are ignored (newer writers may add some), missing ones
        take their defaults. Raises `ValueError` when it is not a JSON object."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key, alias in _ALIASES.items():
            chosen = data.get(key) or data.get(alias)
            # A path or hash written as a number by hand still names something; None means unknown.
            values[key] = str(chosen) if chosen else None
        for key in ("losses", "validation_losses"):
            if key in values:
                values[key] = tuple((int(step), float(loss)) for step, loss in values[key] or ())
        return cls(**values)

    def write(self, folder: Path) -> Path:
        target = folder / TRAINING_FILE
        target.write_text(self.to_json())
        return target


def read_training_meta(adapter: Path) -> TrainingMeta | None:
    """The record beside `adapter`, or None when there is none (an adapter trained elsewhere).

    Raises `ValueError` (e.g. `json.JSONDecodeError`) when the file is not a training record.
    """
    file = Path(adapter) / TRAINING_FILE
    if not file.is_file():
        return None
    return TrainingMeta.from_json(file.read_text())
