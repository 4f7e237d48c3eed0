"""The dataset record: one teacher answer with everything training and evaluation need.

Datasets are JSONL. Raw harvests are appended through `DistillLog` (one whole line per write,
fsynced), so an interrupted harvest leaves at most one torn last line, which readers skip.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from ..protocol.distill_log import read_records
from . import DistillError
from ..fingerprint import sha256_file

# Files `athanor harvest --out DIR` writes.
RAW_FILE = "raw.jsonl"
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
DROPPED_FILE = "dropped.jsonl"
REPORT_FILE = "report.json"


def _sha(parts: Iterable[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def prompt_key(prompt: str, role: str | None, history: Iterable[dict[str, str]] = ()) -> str:
    """Identity of a question (what a resumed harvest checks): its persona, earlier turns and text."""
    return _sha(["prompt", role or "", [[m.get("role"), m.get("content")] for m in history], prompt])[:32]


@dataclass(frozen=True)
class Record:
    """A prompt and the teacher's answer to it."""

    prompt: str
    answer: str
    role: str | None = None
    category: str = "general"
    format: str = "text"
    language: str | None = None
    expected: str | None = None
    history: tuple[dict[str, str], ...] = ()
    """Earlier turns of the conversation (user/assistant messages), oldest first."""
    reasoning: str | None = None
    """The teacher's `<thinking>` part, when it was asked for."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    teacher_model: str = ""
    finish_reason: str = "stop"
    source: str = "harvest"
    key: str = field(default="")
    content_hash: str = field(default="")

    def __post_init__(self) -> None:
        # Derived, so a record read back or built by hand carries the same identity.
        object.__setattr__(self, "history", tuple(dict(m) for m in self.history))
        if not self.key:
            object.__setattr__(self, "key", prompt_key(self.prompt, self.role, self.history))
        if not self.content_hash:
            object.__setattr__(self, "content_hash", self.compute_hash())

    def compute_hash(self) -> str:
        """sha256 over what the record teaches: persona, turns, prompt, reasoning and answer."""
        turns = [[m.get("role"), m.get("content")] for m in self.history]
        return _sha(["record", self.role or "", turns, self.prompt, self.reasoning or "", self.answer])

    def messages(self) -> list[dict[str, str]]:
        """The chat up to the question: the persona as a system message, earlier turns, the prompt."""
        system = [{"role": "system", "content": self.role}] if self.role else []
        return [*system, *self.history, {"role": "user", "content": self.prompt}]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["history"] = list(self.history)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        """A record from its JSON form; unknown keys (the log's timestamp) are ignored. A line in OpenAI's
        fine-tuning form (`{"messages": [...]}`, as other trainers write it) is read as one too."""
        if "messages" in data and "prompt" not in data:
            return record_from_messages(data["messages"])
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's fine-tuning form: the chat, ending with the teacher's answer as the assistant's turn."""
        return {"messages": [*self.messages(), {"role": "assistant", "content": self.answer}]}


def record_from_messages(messages: Any) -> Record:
    """A record from an OpenAI-style chat: an optional system message (the persona), earlier turns, a user
    turn and the assistant's answer to it, last. Raises ValueError naming what is wrong."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError("`messages` must be a list of {role, content} objects")
    turns = [{"role": str(m.get("role")), "content": m.get("content")} for m in messages]
    for turn in turns:
        if turn["role"] not in ("system", "user", "assistant") or not isinstance(turn["content"], str):
            raise ValueError(f"a message with role {turn['role']!r} and non-text content: roles are system, "
                             "user and assistant, contents plain text")
    role = None
    if turns and turns[0]["role"] == "system":
        role = turns.pop(0)["content"]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        raise ValueError("the messages must end with a user turn and then the assistant's answer to learn")
    history = tuple({"role": t["role"], "content": t["content"]} for t in turns[:-2])
    return Record(prompt=turns[-2]["content"], answer=turns[-1]["content"], role=role, history=history,
                  source="import")


def read_dataset(path: Path) -> list[Record]:
    """Every complete record of a dataset JSONL (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"no dataset at {path}; run `athanor harvest PROMPTS --out DIR` first")
    records = []
    for number, data in enumerate(read_records(path), 1):
        try:
            records.append(Record.from_dict(data))
        except (TypeError, ValueError) as exc:
            raise DistillError(f"{path}: record {number} is not a dataset record ({exc}); a line is either "
                               "Athanor's record (prompt, answer, ...) or OpenAI's {\"messages\": [...]}") from None
    return records


def resolve_dataset(path: Path, default_name: str) -> Path:
    """`path` itself, or `path/default_name` when `path` is a harvest folder."""
    path = Path(path)
    return path / default_name if path.is_dir() else path


def write_dataset(path: Path, records: Iterable[Record | dict[str, Any]]) -> int:
    """Replace `path` atomically with these records (written to a temporary file, fsynced, renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            data = record.to_dict() if isinstance(record, Record) else record
            handle.write(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return count


# The dataset's sha256, recorded in training.json so a run names its data.
file_sha256 = sha256_file
