"""The teacher's API key: read once from a file or the environment, then kept out of every printout."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, NoReturn
from urllib.parse import quote

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
        """`text` without the secret or any other credential (see `redact`), for provider messages that echo them."""
        return redact(text, self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __reduce__(self) -> NoReturn:
        # Pickling would write the key to wherever the pickle goes (caches, crash dumps).
        raise TypeError("a Secret cannot be pickled")


# A run of this many leading characters of the key is redacted too: a message cut short can echo part of it.
MIN_SECRET_RUN = 8
# Where an echoed URL or request carries a credential: `?key=...` (Gemini's REST form), `api_key=`/`token=`
# query parameters, `Authorization: Bearer ...` / `x-goog-api-key: ...` headers (as text, a dict or JSON),
# and the password in `https://user:password@host`.
_CARRIERS = re.compile(
    r"(?i)(?P<query>[?&;](?:key|api[_-]?key|access[_-]?token|token)=)[^&#\s'\"]+"
    r"|(?P<header>\b(?:authorization|x-goog-api-key|api-key|x-api-key)['\"]?\s*[:=]\s*['\"]?(?:bearer\s+)?)"
    r"[^\s'\",;}]+"
    r"|(?P<userinfo>//[^/@\s:]+:)[^/@\s]+@"
)


def redact(text: str, secret: str = "") -> str:
    """`text` with credentials replaced by `***` (pure; for messages that may echo a request).

    Replaced: the `secret` itself, also URL- or JSON-escaped and any run of at least `MIN_SECRET_RUN`
    of its leading characters (a truncated echo), and whatever value `_CARRIERS` finds in a URL's
    query, a credential header or a URL's user-info, whoever's key it is.
    """
    if secret:
        for form in dict.fromkeys((secret, quote(secret, safe=""), json.dumps(secret)[1:-1])):
            text = text.replace(form, "***")
        if len(secret) >= MIN_SECRET_RUN:
            text = _redact_runs(text, secret)
    return _CARRIERS.sub(_mask_carrier, text)


def _mask_carrier(match: re.Match[str]) -> str:
    if match["userinfo"]:
        return f"{match['userinfo']}***@"
    return f"{match['query'] or match['header']}***"


def _redact_runs(text: str, secret: str) -> str:
    """`text` with every run of `secret`'s first MIN_SECRET_RUN or more characters replaced by `***`."""
    head = secret[:MIN_SECRET_RUN]
    out, start = [], 0
    while (found := text.find(head, start)) >= 0:
        end = found + MIN_SECRET_RUN
        while end < len(text) and end - found < len(secret) and text[end] == secret[end - found]:
            end += 1
        out += [text[start:found], "***"]
        start = end
    return "".join(out) + text[start:]


def read_api_key(cfg: TeacherConfig, environ: Mapping[str, str] | None = None) -> Secret:
    """The key from `[teacher].api_key_file` if set, else the systemd credential `[teacher].api_key_credential`
    (when `$CREDENTIALS_DIRECTORY` is set and the credential is not empty), else the variable `[teacher].api_key_env`.
    """
    if cfg.api_key_file is not None:
        value = _read_key_file(cfg.api_key_file, "[teacher].api_key_file", "unset api_key_file")
        if not value:
            raise ConfigError("[teacher].api_key_file", f"{cfg.api_key_file} is empty", "put the API key in it")
        return Secret(value)
    environ = os.environ if environ is None else environ
    credential = read_credential(cfg.api_key_credential, environ)
    if credential:
        return Secret(credential)
    value = environ.get(cfg.api_key_env, "").strip()
    if not value:
        raise ConfigError(
            "[teacher].api_key_env",
            f"no API key in the environment variable {cfg.api_key_env}",
            "set the variable or [teacher].api_key_file (as a service: put the key in the file "
            f"LoadCredential={cfg.api_key_credential}:... names, /etc/athanor/credentials/{cfg.api_key_credential})",
        )
    return Secret(value)


def read_credential(name: str, environ: Mapping[str, str]) -> str:
    """The systemd credential `name` from `$CREDENTIALS_DIRECTORY` (stripped), or "" when there is none.

    An empty credential counts as none: the installer leaves an empty key file so that the unit's
    LoadCredential= always finds one, also on appliances that have no teacher.
    """
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return ""
    path = Path(directory) / name
    if not path.exists():
        return ""
    return _read_key_file(path, "[teacher].api_key_credential", "check the unit's LoadCredential= line")


def _read_key_file(path: Path, setting: str, fix_missing: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(setting, f"no key file at {path}", f"create it or {fix_missing}") from None
    except PermissionError:
        raise ConfigError(setting, f"cannot read {path} (permission denied)", "fix its owner or mode") from None
    except (OSError, UnicodeDecodeError) as exc:
        # The exception names the path and errno only, never the content.
        raise ConfigError(setting, f"cannot read {path}: {type(exc).__name__}", "check the file") from None
