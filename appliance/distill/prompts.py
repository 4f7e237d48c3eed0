"""Prompt files for `athanor harvest`: JSONL, CSV or YAML, read into typed `PromptItem`s.

Each item needs a `prompt`; `role` (a system persona), `category`, `format` ("text" or "json"),
`language` and `expected` (a known right answer, used by `athanor evaluate`) are optional.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import DistillError

FORMATS = ("text", "json")
DEFAULT_CATEGORY = "general"
_FIELDS = ("prompt", "role", "category", "format", "language", "expected")


@dataclass(frozen=True)
class PromptItem:
    """One question for the teacher."""

    prompt: str
    role: str | None = None
    """System persona the teacher answers as ("You are a careful legal analyst")."""
    category: str = DEFAULT_CATEGORY
    format: str = "text"
    """"json" asks for (and the quality filter checks) a JSON answer."""
    language: str | None = None
    """Language the answer must be in; None means the config's rule (by default, the prompt's)."""
    expected: str | None = None
    """A known right answer, when there is one."""


def item_from_mapping(data: Any, where: str) -> PromptItem:
    """A `PromptItem` from one parsed row; `DistillError` naming `where` (file:line) when it is malformed."""
    if not isinstance(data, dict):
        raise DistillError(f"{where}: expected an object with a \"prompt\" field, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise DistillError(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(_FIELDS)}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DistillError(f"{where}: \"prompt\" is missing or empty; every item needs the question to ask")
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for name in ("role", "category", "format", "language", "expected"):
        value = data.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, (str, int, float)):
            raise DistillError(f"{where}: \"{name}\" must be text, got {type(value).__name__}")
        values[name] = str(value).strip()
    fmt = values.get("format", "text").lower()
    if fmt not in FORMATS:
        raise DistillError(f"{where}: \"format\" is {fmt!r}; use one of {', '.join(FORMATS)}")
    values["format"] = fmt
    return PromptItem(**values)


def _read_jsonl(path: Path) -> Iterable[PromptItem]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise DistillError(f"{path}:{number}: not valid JSON ({exc.msg}); one JSON object per line") from None
            yield item_from_mapping(data, f"{path}:{number}")


def _read_csv(path: Path) -> Iterable[PromptItem]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise DistillError(f"{path}:1: the header row needs a \"prompt\" column (got {reader.fieldnames})")
        for row in reader:
            # The reader's line_num is the line the row ended on; a quoted cell may span lines.
            yield item_from_mapping({k: v for k, v in row.items() if k is not None}, f"{path}:{reader.line_num}")


def _read_yaml(path: Path) -> Iterable[PromptItem]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DistillError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list):
        raise DistillError(f"{path}: expected a list of items (or a \"prompts:\" list)")
    for index, entry in enumerate(data, 1):
        if isinstance(entry, str):
            entry = {"prompt": entry}
        yield item_from_mapping(entry, f"{path}: item {index}")


_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv, ".yaml": _read_yaml, ".yml": _read_yaml}


def read_prompts(path: Path) -> list[PromptItem]:
    """Every item in a prompt file; `DistillError` with the file and line of the first bad one."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DistillError(f"{path}: unknown prompt file type {path.suffix!r}; use .jsonl, .csv, .yaml or .yml")
    if not path.is_file():
        raise DistillError(f"no prompt file at {path}")
    items = list(reader(path))
    if not items:
        raise DistillError(f"{path} holds no prompts")
    return items
