"""API keys for the TCP listener: bearer keys kept hashed in a file, each its own cache namespace.

The file has one key per line, `NAME SHA256-HEX [daily_usd=X]`; `athanor keys add NAME` makes a key, prints
it once and stores only its hash. `daily_usd` caps what the teacher may cost for that key's requests per
UTC day (within `[teacher].daily_budget_usd`, which caps them all). The daemon re-reads the file when it changes, so a key added or removed takes
effect at the next request. On the Unix socket nothing changes: the kernel says who is asking.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import AthanorError
from .http import Handler, HttpRequest, HttpResponse, json_response

PREFIX = "athk-"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    name: str
    daily_usd: float | None = None
    """The most the teacher may cost for this key's requests per UTC day; None: only the global cap."""


_BUDGET = re.compile(r"^daily_usd=([0-9]+(?:\.[0-9]+)?)$")


def parse_key_file(text: str) -> dict[str, KeyRecord]:
    """{sha256 hex: record} from the file's text; blank lines and `#` comments skipped. A malformed line is an
    error naming its number (a key silently dropped would lock its owner out without a word)."""
    keys: dict[str, KeyRecord] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        budget = _BUDGET.match(parts[2]) if len(parts) == 3 else None
        if len(parts) not in (2, 3) or not _NAME.match(parts[0]) or not _HASH.match(parts[1]) \
                or (len(parts) == 3 and budget is None):
            raise AthanorError(f"API key file line {number} is not `NAME SHA256-HEX [daily_usd=X]`: fix or delete "
                               "it (`athanor keys remove NAME`, then `athanor keys add NAME`)")
        keys[parts[1]] = KeyRecord(parts[0], float(budget.group(1)) if budget else None)
    return keys


def parse_keys(text: str) -> dict[str, str]:
    """{sha256 hex: name}."""
    return {digest: record.name for digest, record in parse_key_file(text).items()}


def read_key_records(path: Path) -> dict[str, KeyRecord]:
    return parse_key_file(path.read_text()) if path.is_file() else {}


def read_keys(path: Path) -> dict[str, str]:
    return {digest: record.name for digest, record in read_key_records(path).items()}


SERVICE_GROUP = "athanor"


def _write(path: Path, keys: dict[str, KeyRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("# athanor API keys: NAME SHA256-of-the-key [daily_usd=X] (the keys themselves are never stored)\n")
        f.writelines(f"{r.name} {digest}{'' if r.daily_usd is None else f' daily_usd={r.daily_usd:g}'}\n"
                     for digest, r in sorted(keys.items(), key=lambda kv: kv[1].name))
    if os.geteuid() == 0:
        # `sudo athanor keys add` for the service: its user (group athanor) must read what root wrote.
        import grp

        try:
            os.chown(tmp, 0, grp.getgrnam(SERVICE_GROUP).gr_gid)
            os.chmod(tmp, 0o640)
        except KeyError:
            pass  # no service installed: root's own daemon reads it
    os.replace(tmp, path)


def _check_budget(daily_usd: float | None) -> None:
    if daily_usd is not None and not (daily_usd >= 0 and daily_usd < float("inf")):
        raise AthanorError(f"daily teacher budget {daily_usd!r}: give a number of USD, 0 or more")


def add_key(path: Path, name: str, daily_usd: float | None = None) -> str:
    """Make a key for `name`, store its hash, and return the key (shown once)."""
    if not _NAME.match(name):
        raise AthanorError(f"key name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    _check_budget(daily_usd)
    keys = read_key_records(path)
    if any(r.name == name for r in keys.values()):
        raise AthanorError(f"a key named {name!r} exists; `athanor keys remove {name}` first to replace it")
    key = PREFIX + secrets.token_urlsafe(32)
    keys[hash_key(key)] = KeyRecord(name, daily_usd)
    _write(path, keys)
    return key


def set_budget(path: Path, name: str, daily_usd: float | None) -> None:
    """Give `name`'s key a daily teacher budget (None: only the global cap)."""
    _check_budget(daily_usd)
    keys = read_key_records(path)
    found = [digest for digest, r in keys.items() if r.name == name]
    if not found:
        raise AthanorError(f"no key named {name!r} in {path}")
    for digest in found:
        keys[digest] = KeyRecord(name, daily_usd)
    _write(path, keys)


def remove_key(path: Path, name: str) -> None:
    keys = read_key_records(path)
    kept = {digest: r for digest, r in keys.items() if r.name != name}
    if len(kept) == len(keys):
        raise AthanorError(f"no key named {name!r} in {path}")
    _write(path, kept)


def _unauthorized(message: str) -> HttpResponse:
    return json_response(401, {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                         "code": "invalid_api_key"}}, [("www-authenticate", 'Bearer realm="athanor"')])


@dataclass
class _Cache:
    mtime: float | None = None
    keys: dict[str, KeyRecord] | None = None


class KeyAuth:
    """Requests over TCP must carry `Authorization: Bearer KEY` for a key in the file; they then go on as
    `key:NAME` (their own cache namespace). Socket requests pass untouched."""

    def __init__(self, inner: Handler, path: Path) -> None:
        self.inner = inner
        self.path = path
        self._cache = _Cache()

    def keys(self) -> dict[str, KeyRecord]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if self._cache.keys is None or mtime != self._cache.mtime:
            self._cache = _Cache(mtime, read_key_records(self.path))
        return self._cache.keys or {}

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.remote is None:
            return await self.inner(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("this listener needs an API key: send `Authorization: Bearer KEY` "
                                 "(the daemon's owner makes one with `athanor keys add NAME`)")
        try:
            record = self.keys().get(hash_key(token.strip()))
        except (AthanorError, OSError) as exc:
            message = str(exc) if isinstance(exc, AthanorError) else (
                f"cannot read the API key file {self.path}: {exc.strerror or exc}; make it readable by the "
                f"daemon's user (`chgrp {SERVICE_GROUP} {self.path}; chmod 640 {self.path}`)")
            return json_response(500, {"error": {"message": message, "type": "server_error", "param": None,
                                                 "code": "api_keys_unreadable"}})
        if record is None:
            return _unauthorized("unknown API key")
        return await self.inner(replace(request, client=f"key:{record.name}", client_budget_usd=record.daily_usd))


CORS_HEADERS = "authorization, content-type, x-request-id, x-athanor-namespace, cache-control"


class Cors:
    """Browser access for the origins listed in `[server].cors_origins` ("*" for any): preflights answered,
    answers marked. Without a list nothing changes (browsers then refuse cross-origin reads)."""

    def __init__(self, inner: Handler, origins: list[str]) -> None:
        self.inner = inner
        self.origins = set(origins)

    def _allowed(self, request: HttpRequest) -> str | None:
        origin = request.headers.get("origin")
        if origin is None or not self.origins:
            return None
        return origin if ("*" in self.origins or origin in self.origins) else None

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        origin = self._allowed(request)
        if origin is not None and request.method == "OPTIONS":
            return HttpResponse(204, b"", [("access-control-allow-origin", origin), ("vary", "origin"),
                                           ("access-control-allow-methods", "GET, POST, OPTIONS"),
                                           ("access-control-allow-headers", CORS_HEADERS),
                                           ("access-control-max-age", "600")])
        response = await self.inner(request)
        if origin is not None:
            response.headers.extend([("access-control-allow-origin", origin), ("vary", "origin")])
        return response
