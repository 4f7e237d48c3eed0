"""What the distillation commands share: the config a command runs under and the base model to train.

Its own module so that `retrain_cli` and `cli` (which registers retrain) need not import each other."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import AthanorConfig, load_config


def command_config(ctx: click.Context) -> AthanorConfig:
    return load_config((ctx.obj or {}).get("config_path"))


def default_base(config: AthanorConfig) -> Path:
    from ..defaults import embedded_student_path

    return config.distill.base or embedded_student_path()
