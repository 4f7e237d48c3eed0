"""Errors of the export stage; each names the problem and the fix.

They are defined beside the appliance's other user errors, because the daemon raises them too when it
reads an export's manifest, without importing this package.
"""

from __future__ import annotations

from appliance.errors import ChecksumMismatch, ExportError

__all__ = ["ChecksumMismatch", "ExportError"]
