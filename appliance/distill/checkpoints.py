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
BEST = "best"
KEEP = 2


@dataclass
class TrainState:
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    """(step, mean validation loss) at each validation; the adapter of the lowest is in `best/`."""

    @property
    def best_val(self) -> tuple[int, float] | None:
        return min(self.val_losses, key=lambda x: x[1]) if self.val_losses else None

    def evals_since_best(self) -> int:
        best = self.best_val
        return 0 if best is None else sum(1 for step, _ in self.val_losses if step > best[0])


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under `root`, if any."""
    folders = _folders(root)
    return folders[-1] if folders else None


def save(root: Path, model: Any, optimizer: Any, scheduler: Any, state: TrainState, fingerprint: dict,
         scaler: Any = None) -> Path:
    """Write checkpoint `step-N` under `root` and drop all but the newest `KEEP` (`scaler`: fp16's loss scaler)."""
    import torch

    final = root / f"step-{state.step:07d}"
    tmp = root / f".tmp-step-{state.step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    torch.save({
        "step": state.step,
        "losses": state.losses,
        "val_losses": state.val_losses,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        # The loss scale adapts as training goes; a resumed run must start from where it had got to.
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "fingerprint": fingerprint,
    }, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _folders(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def restore(folder: Path, model: Any, optimizer: Any, scheduler: Any, fingerprint: dict,
            scaler: Any = None) -> TrainState:
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
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng_cpu"])
    if saved.get("rng_cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    return TrainState(step=int(saved["step"]), losses=[tuple(x) for x in saved["losses"]],
                      val_losses=[tuple(x) for x in saved.get("val_losses", [])])


def save_best(root: Path, model: Any) -> Path:
    """The adapter as it is now, as `best/` under `root` (written beside and renamed, like a checkpoint)."""
    final, tmp = root / BEST, root / f".tmp-{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_best(root: Path, model: Any) -> bool:
    """Put the `best/` adapter's weights into `model`; False when there is none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = root / BEST / "adapter_model.safetensors"
    if not weights.is_file():
        return False
    set_peft_model_state_dict(model, load_file(str(weights)))
    return True
