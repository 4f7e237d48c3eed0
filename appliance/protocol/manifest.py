"""`manifest.json`: what an export published, with checksums, and how a loader picks and checks a file.

Light on purpose (standard library only): the daemon reads manifests at start and on reload.

    {"format": 1, "created": ..., "base": ..., "adapter": ..., "dataset_sha256": ...,
     "artifacts": [{"format": "gguf", "quant": "q8_0", "path": "gguf/student.q8_0.gguf",
                    "sha256": ..., "size_bytes": ..., "files": [...], "verification": {...}}],
     "rejected": [{... same, "reasons": [...]}]}

Paths are relative to the manifest's folder, so an export folder can be moved as a whole.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ChecksumMismatch, ExportError
from ..fingerprint import sha256_file


MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact, relative to the manifest's folder."""

    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Artifact:
    """One servable build: a GGUF file, or an ONNX folder (model, weights, tokenizer)."""

    format: str
    """`gguf` or `onnx`."""
    quant: str
    """f16, q8_0, q4_k_m ... for GGUF; fp32, fp16 or int8 for ONNX."""
    path: str
    """The GGUF file, or the ONNX folder."""
    sha256: str
    """Of the GGUF file, or of the ONNX folder's model.onnx."""
    size_bytes: int
    """All of the artifact's files together."""
    files: tuple[FileEntry, ...] = ()
    verification: dict[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    """Why the gate rejected it (rejected artifacts only)."""

    @property
    def label(self) -> str:
        return f"{self.format}:{self.quant}"


@dataclass
class Manifest:
    """Everything one `athanor export` run produced."""

    base: str
    adapter: str
    dataset_sha256: str | None = None
    created: str = ""
    student_name: str | None = None
    merged_reference: dict[str, Any] = field(default_factory=dict)
    """How the merged model itself ran (tokens/s), for comparison."""
    prompts: list[str] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    rejected: list[Artifact] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["format"] = data.pop("format_version")
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _artifact(data: dict[str, Any]) -> Artifact:
    files = tuple(FileEntry(**entry) for entry in data.get("files", ()))
    return Artifact(
        format=data["format"], quant=data["quant"], path=data["path"], sha256=data["sha256"],
        size_bytes=int(data["size_bytes"]), files=files, verification=dict(data.get("verification", {})),
        reasons=tuple(data.get("reasons", ())),
    )


def parse_manifest(data: dict[str, Any]) -> Manifest:
    """Build a `Manifest` from decoded JSON; raises `ExportError` on an unknown format."""
    if not isinstance(data, dict):
        raise ExportError(f"a manifest is a JSON object, not {type(data).__name__}; re-run `athanor export`")
    version = data.get("format")
    if version != FORMAT_VERSION:
        raise ExportError(f"manifest format {version!r} is not supported (expected {FORMAT_VERSION}); "
                          "re-run `athanor export` with this version of Athanor")
    return Manifest(
        base=data["base"], adapter=data["adapter"], dataset_sha256=data.get("dataset_sha256"),
        created=data.get("created", ""), student_name=data.get("student_name"),
        merged_reference=dict(data.get("merged_reference", {})), prompts=list(data.get("prompts", [])),
        artifacts=[_artifact(a) for a in data.get("artifacts", [])],
        rejected=[_artifact(a) for a in data.get("rejected", [])],
    )


def find_manifest(path: Path) -> Path | None:
    """The manifest `path` names, when it names an export: the manifest file itself (its name is
    enough, so that reading it reports a missing one) or a folder holding one; else None.

    The one answer to "is this path an export?", for the daemon, the doctor and the runners.
    """
    path = Path(path)
    if path.name == MANIFEST_NAME:
        return path
    file = path / MANIFEST_NAME
    return file if file.is_file() else None


def is_export(path: Path) -> bool:
    """Whether `path` names an `athanor export` folder or its manifest (see `find_manifest`)."""
    return find_manifest(path) is not None


def manifest_path(path: Path) -> Path:
    """The manifest file for `path`, which may name the file itself or the export folder."""
    return path / MANIFEST_NAME if path.is_dir() else path


def read_manifest(path: Path) -> Manifest:
    """Read an export's manifest (`path` is the file or its folder)."""
    file = manifest_path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise ExportError(f"no manifest at {file}; run `athanor export` to create one") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{file} is not a valid manifest ({exc}); re-run `athanor export`") from None
    try:
        return parse_manifest(data)
    except (KeyError, TypeError) as exc:
        raise ExportError(f"{file} lacks field {exc}; re-run `athanor export`") from None


def write_manifest(manifest: Manifest, folder: Path) -> Path:
    """Write `manifest.json` atomically into `folder` (a reader never sees half a file)."""
    target = folder / MANIFEST_NAME
    temporary = folder / f".{MANIFEST_NAME}.tmp"
    temporary.write_text(manifest.to_json())
    temporary.replace(target)
    return target


def file_entries(root: Path, paths: list[Path]) -> tuple[FileEntry, ...]:
    """Checksummed entries for `paths`, stored relative to `root`."""
    return tuple(
        FileEntry(str(p.relative_to(root)), sha256_file(p), p.stat().st_size) for p in sorted(paths)
    )


def choose_artifact(manifest: Manifest, fmt: str | None = None, quant: str | None = None) -> Artifact:
    """The published artifact to serve: the one of `quant` if given, else the smallest of `fmt` (GGUF first)."""
    candidates = [a for a in manifest.artifacts if fmt is None or a.format == fmt]
    if quant is not None:
        chosen = [a for a in candidates if a.quant == quant]
        if not chosen:
            have = ", ".join(a.label for a in manifest.artifacts) or "none"
            raise ExportError(f"the export has no published {quant} artifact (published: {have}); "
                              f"set [student].quant to one of them or re-run `athanor export` with it")
        return chosen[0]
    if not candidates:
        raise ExportError("the export published no artifact (all failed their gate or none was built); "
                          "see `rejected` in its manifest and re-run `athanor export`")
    gguf = [a for a in candidates if a.format == "gguf"]
    return min(gguf or candidates, key=lambda a: a.size_bytes)


def verify_artifact(artifact: Artifact, root: Path) -> Path:
    """Check every file of `artifact` against its recorded sha256; return the artifact's path.

    Raises `ChecksumMismatch` naming the file, the expected and the actual hash.
    """
    entries = artifact.files or (FileEntry(artifact.path, artifact.sha256, artifact.size_bytes),)
    for entry in entries:
        file = root / entry.path
        if not file.is_file():
            raise ExportError(f"{file} listed in {root / MANIFEST_NAME} is missing; re-run `athanor export`")
        actual = sha256_file(file)
        if actual != entry.sha256:
            raise ChecksumMismatch(file, entry.sha256, actual)
    return root / artifact.path
