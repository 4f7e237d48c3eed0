"""Training checkpoints: the adapter, the optimizer and scheduler, the step, the losses and the RNG.

Each checkpoint is written to a temporary folder and renamed into place, so an interrupted save
never looks complete; the newest two are kept.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import DistillError

STATE_FILE = "trainer_state.pt"
KEEP = 2


@dataclass
class TrainState:
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, if any."""
    folders = _folders(root)
    return folders[-1] if folders else None


def save(root: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, fingerprint: dict) -> Path:
    """Write checkpoint `step-N` under `root` and drop all but the newest `KEEP`."""
    import torch

    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    torch.save({
        "step": state.step,
        "losses": state.losses,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "fingerprint": fingerprint,
    }, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _folders(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(folder: Path, model: Any, optimizer: Any, scheduler: Any, fingerprint: dict) -> TrainState:
    """Load a checkpoint into the live objects; refuses one made from other data or settings."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    if saved.get("fingerprint") != fingerprint:
        changed = sorted(k for k in fingerprint if saved.get("fingerprint", {}).get(k) != fingerprint[k])
        raise DistillError(
            f"the checkpoint {folder} was made with a different {', '.join(changed) or 'setup'}; "
            f"delete {folder.parent} to start over, or train into another --out folder"
        )
    weights = load_file(str(folder / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_cpu"])
    if saved.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    return TrainState(step=int(saved["step"]), losses=[tuple(x) for x in saved["losses"]])
