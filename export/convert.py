"""An HF-folder model to an f16 GGUF with llama.cpp's own converter, run as a tool.

`convert_hf_to_gguf.py` (with its `conversion/` package and its own `gguf-py`) ships in the
llama-cpp-python source distribution of the version installed here. It is fetched once with
pip into a cache folder and then used offline; `ATHANOR_LLAMA_CONVERTER` may point at any
llama.cpp checkout instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import ExportError

_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def cache_dir() -> Path:
    """Download cache of tools (not state): `ATHANOR_CACHE_DIR`, else `$XDG_CACHE_HOME/athanor`."""
    explicit = os.environ.get("ATHANOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "athanor"


def converter_dir() -> Path:
    """Where llama.cpp's converter is (or will be fetched to)."""
    explicit = os.environ.get("ATHANOR_LLAMA_CONVERTER")
    if explicit:
        return Path(explicit)
    return cache_dir() / f"llama.cpp-converter-{_llama_cpp_version()}"


def fetch_converter(target: Path) -> Path:
    """Download llama-cpp-python's sdist with pip and unpack only the converter into `target`."""
    version = _llama_cpp_version()
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary", ":all:",
                   "--no-deps", "--disable-pip-version-check", "-q", "-d", scratch]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(scratch).glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise ExportError(
                f"llama.cpp's converter is not installed and pip could not fetch llama-cpp-python=={version}'s "
                f"source ({done.stderr.strip()[-300:]}); connect to PyPI once, set ATHANOR_LLAMA_CONVERTER to a "
                "llama.cpp checkout, or pass a .gguf file as --base")
        return unpack_converter(archives[0], target)


def unpack_converter(sdist: Path, target: Path) -> Path:
    """Extract the converter, its `conversion/` package and `gguf-py/` from llama-cpp-python's sdist."""
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            _, _, inner = member.name.partition("/vendor/llama.cpp/")
            if inner and inner.startswith(_MEMBERS):
                member.name = inner
                archive.extract(member, staging, filter="data")
    if not (staging / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py; "
                          "set ATHANOR_LLAMA_CONVERTER to a llama.cpp checkout")
    staging.replace(target)
    return target


def ensure_converter() -> Path:
    """The converter script, fetching it first if this machine has none yet."""
    folder = converter_dir()
    script = folder / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    if os.environ.get("ATHANOR_LLAMA_CONVERTER"):
        raise ExportError(f"no convert_hf_to_gguf.py in ATHANOR_LLAMA_CONVERTER={folder}; point it at a llama.cpp checkout")
    return fetch_converter(folder) / "convert_hf_to_gguf.py"


def convert_hf_folder(folder: Path, out: Path, dtype: str = "f16") -> Path:
    """Run llama.cpp's converter on a saved HF model folder, writing `out` as `dtype` (f16/f32)."""
    script = ensure_converter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "NO_LOCAL_GGUF": ""}
    env.pop("NO_LOCAL_GGUF")  # the converter must use its own gguf-py, which matches it
    command = [sys.executable, str(script), str(folder), "--outtype", dtype, "--outfile", str(partial)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=script.parent, env=env)
    if done.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp's converter failed on {folder}:\n{tail}\n"
                          "check that the architecture is one llama.cpp supports, or pass a .gguf --base")
    try:
        _check_vocabulary(folder, partial)
    except ExportError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return out


def _check_vocabulary(folder: Path, gguf_file: Path) -> None:
    """Refuse a conversion that read a byte-level BPE tokenizer as SentencePiece.

    llama.cpp aborts the whole process when it later tokenizes with such a file, so it must never
    reach verification. It happens with a tokenizer.json that transformers rebuilt from a GGUF.
    """
    import json

    from gguf import GGUFReader

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        return
    pre_tokenizer = json.dumps(json.loads(tokenizer_json.read_text()).get("pre_tokenizer"))
    field = GGUFReader(gguf_file).fields.get("tokenizer.ggml.model")
    kind = field.contents() if field is not None else None
    if "ByteLevel" in pre_tokenizer and kind == "llama":
        raise ExportError(f"llama.cpp's converter read the byte-level BPE tokenizer in {folder} as SentencePiece, "
                          "which llama.cpp cannot use; if this folder came from a GGUF, pass that .gguf file as "
                          "--base (its tokenizer is copied as is), else use the model's original tokenizer files")
