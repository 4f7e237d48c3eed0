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


class ExportError(AthanorError):
    """An export step cannot go on (missing adapter, unsupported architecture, failed conversion), or an
    export's manifest cannot be read (the daemon reads manifests without loading the export package)."""


class ChecksumMismatch(AthanorError):
    """An artifact on disk is not the file its manifest describes."""

    def __init__(self, path: object, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {path}: the manifest says sha256 {expected}, the file has {actual}; "
            "the file is corrupted or was replaced; re-run `athanor export` to rebuild it"
        )


class DaemonUnavailable(AthanorError):
    """The client cannot reach the daemon's socket."""

    exit_code = 3
