"""Which optional parts of the install a command needs, and the error that says how to add them.

Serving needs none of them: the base install (what `scripts/quickstart.sh` installs) answers over the
socket with the embedded student, the cache and a teacher. Training, export and ONNX students bring
torch, transformers, optimum and onnxruntime, several hundred MB that a serving box can do without.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

from .errors import AthanorError

DISTRIBUTION = "athanor-appliance"

Extra = Literal["onnx", "train", "export"]

_ONNX = ("onnxruntime", "transformers")
_TRAIN = ("torch", "transformers", "peft", "accelerate", "gguf")
# As pyproject.toml defines the extra: [export] is [train] and [onnx] plus optimum and onnx.
MODULES: dict[Extra, tuple[str, ...]] = {
    "onnx": _ONNX,
    "train": _TRAIN,
    "export": tuple(dict.fromkeys((*_TRAIN, *_ONNX, "optimum", "onnx"))),
}


class MissingExtra(AthanorError):
    """A command needs an optional part of the install that is not there."""


def missing(extra: Extra) -> list[str]:
    return [name for name in MODULES[extra] if importlib.util.find_spec(name) is None]


def require(extra: Extra, purpose: str) -> None:
    """Raise `MissingExtra`, naming the install command, when `extra`'s modules are not installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(f"{purpose} needs {', '.join(absent)}, which the base install leaves out: "
                           f"pip install '{DISTRIBUTION}[{extra}]' (in a checkout: .venv/bin/pip install -e '.[{extra}]'; "
                           "`bash scripts/test.sh` installs everything)")
