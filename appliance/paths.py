"""Every default location the appliance uses, from one place, each with an environment override.

`ATHANOR_HOME` moves all user state (tests point it at a temporary folder); systemd's
`STATE_DIRECTORY`/`RUNTIME_DIRECTORY` win when the daemon runs as a service.
"""

from __future__ import annotations

import os
from pathlib import Path


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def state_dir() -> Path:
    """Folder for the cache, logs and exports."""
    home = _env_path("ATHANOR_HOME")
    if home:
        return home / "state"
    systemd_state = _env_path("STATE_DIRECTORY")
    if systemd_state:
        return systemd_state
    xdg = _env_path("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return xdg / "athanor"


def models_dir() -> Path:
    """Folder for model files the appliance derives itself (the embedded default converted for
    batching); `ATHANOR_MODELS_DIR` lets several homes share one (the tests do)."""
    return _env_path("ATHANOR_MODELS_DIR") or state_dir() / "models"


RETRAIN_DIR = "retrain"


def retrain_dir() -> Path:
    """`athanor retrain`'s work: its state file, the held-out set drawn from the log, one folder per run."""
    return state_dir() / RETRAIN_DIR


def payer_spend_dir() -> Path:
    """Teacher spend per API key with a daily budget of its own (one SQLite ledger per key)."""
    return state_dir() / "teacher-spend-by-key"


def refit_router_file() -> Path:
    """Where `athanor router refit` installs a router learned from this appliance's own traffic; with
    `[routing].router = "default"` the daemon prefers it to the shipped one."""
    return state_dir() / "router" / "router.json"


def retrained_student_dir() -> Path:
    """Where `athanor retrain` installs a student when `[student].path` is unset; the daemon serves the
    export there in place of the embedded default once there is one."""
    return state_dir() / "student"


def runtime_dir() -> Path:
    """Folder for the socket: systemd's RuntimeDirectory, else the user's runtime dir."""
    home = _env_path("ATHANOR_HOME")
    if home:
        return home / "run"
    systemd_runtime = _env_path("RUNTIME_DIRECTORY")
    if systemd_runtime:
        return systemd_runtime
    xdg = _env_path("XDG_RUNTIME_DIR")
    if xdg:
        return xdg / "athanor"
    return Path(f"/tmp/athanor-{os.getuid()}")


def default_socket() -> Path:
    return runtime_dir() / "athanor.sock"


def config_file_candidates() -> list[Path]:
    """Where a config file is looked for when ATHANOR_CONFIG is unset; the first that exists wins."""
    home = _env_path("ATHANOR_HOME")
    if home:
        return [home / "athanor.toml"]
    xdg = _env_path("XDG_CONFIG_HOME") or Path.home() / ".config"
    return [xdg / "athanor" / "athanor.toml", Path("/etc/athanor/athanor.toml")]
