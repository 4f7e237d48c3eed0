"""Distillation: harvest a teacher's answers, train a LoRA student on them, evaluate it, retrain it.

The modules each do one job; `cli.py` is the face (`athanor harvest|train|evaluate|retrain`).
Heavy imports (torch, transformers, peft, google.genai) load only in the modules that need them.
"""

from __future__ import annotations

from ..errors import AthanorError


class DistillError(AthanorError):
    """A distillation step cannot go on; the message names the problem and the fix."""
