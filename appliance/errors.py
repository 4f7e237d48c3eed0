"""User-facing errors: each names the problem and the fix, and the CLI prints it as one line."""

from __future__ import annotations


class AthanorError(Exception):
    """An error a user can act on; `str()` is the whole message."""

    exit_code = 1


class ConfigError(AthanorError):
    """A setting is wrong; names the setting and how to fix it. Exit code 2."""

    exit_code = 2

    def __init__(self, setting: str, problem: str, fix: str = "") -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        message = f"config error: {setting}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class DaemonUnavailable(AthanorError):
    """The client cannot reach the daemon's socket."""

    exit_code = 3
