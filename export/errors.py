"""Errors of the export stage; each names the problem and the fix."""

from __future__ import annotations

from appliance.errors import AthanorError


class ExportError(AthanorError):
    """An export step cannot go on (missing adapter, unsupported architecture, failed conversion)."""


class ChecksumMismatch(AthanorError):
    """An artifact on disk is not the file its manifest describes."""

    def __init__(self, path, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"checksum mismatch for {path}: the manifest says sha256 {expected}, the file has {actual}; "
            "the file is corrupted or was replaced; re-run `athanor export` to rebuild it"
        )
