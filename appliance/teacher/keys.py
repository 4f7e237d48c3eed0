"""The teacher's API key: read once from a file or the environment, then kept out of every printout."""

from __future__ import annotations

import os
from typing import Mapping

from ..config import TeacherConfig
from ..errors import ConfigError


class Secret:
    """A string that prints as `***`; only `.reveal()` gives the value, so accidental logging is harmless."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for the one place that must send it (an HTTP header)."""
        return self._value

    def scrub(self, text: str) -> str:
        """`text` with every occurrence of the secret replaced by `***` (for provider messages that echo it)."""
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __reduce__(self) -> tuple:
        # Pickling would write the key to wherever the pickle goes (caches, crash dumps).
        raise TypeError("a Secret cannot be pickled")


def read_api_key(cfg: TeacherConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The key from `[teacher].api_key_file` (stripped) if set, else from the variable `[teacher].api_key_env`."""
    if cfg.api_key_file is not None:
        path = cfg.api_key_file
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError("[teacher].api_key_file", f"no key file at {path}", "create it or unset api_key_file") from None
        except PermissionError:
            raise ConfigError(
                "[teacher].api_key_file", f"cannot read {path} (permission denied)", "fix its owner or mode"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            # The exception names the path and errno only, never the content.
            raise ConfigError("[teacher].api_key_file", f"cannot read {path}: {type(exc).__name__}", "check the file") from None
        if not value:
            raise ConfigError("[teacher].api_key_file", f"{path} is empty", "put the API key in it")
        return Secret(value)
    environ = os.environ if environ is None else environ
    value = environ.get(cfg.api_key_env, "").strip()
    if not value:
        raise ConfigError(
            "[teacher].api_key_env",
            f"no API key in the environment variable {cfg.api_key_env}",
            "set the variable or [teacher].api_key_file",
        )
    return Secret(value)
