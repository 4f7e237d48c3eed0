"""Bad files: a damaged model, an unreadable config, a damaged cache. Each is one clear line (and exit 2)
or, for the cache, a rebuild from what survives; never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from appliance.cache import CacheKey, SemanticCache, load_embedder
from appliance.config import CacheConfig

from .conftest import ROOT, start_daemon, stop_daemon


def run_cli(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "ATHANOR_HOME": str(home), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def one_clear_line(result, code: int = 2) -> str:
    """Config errors exit 2; a model llama.cpp refuses exits 1 (the setting may be right, the file is not)."""
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- the model file ------------------------------------------------------------------------------------


def _damaged_models(good: Path, folder: Path) -> dict[str, Path]:
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "random bytes": os.urandom(4096),
        "bad magic": b"XXXX" + data[4:4 << 20],
        "cut in the header": data[:2000],
        "cut in the weights": data[: len(data) // 2],
        "last byte missing": data[:-1],
    }
    paths = {}
    for name, content in cases.items():
        path = folder / (name.replace(" ", "-") + ".gguf")
        path.write_bytes(content)
        paths[name] = path
    return paths


def test_a_damaged_model_file_is_one_clear_line(tmp_path, student_path):
    models = _damaged_models(student_path, tmp_path)
    for name, path in models.items():
        result = run_cli(tmp_path / "home", "serve", env={"ATHANOR_STUDENT__PATH": str(path)})
        line = one_clear_line(result, code=1)
        assert str(path) in line, (name, line)
        assert "athanor export" in line or "[student].path" in line, (name, line)
        assert not (tmp_path / "home" / "run" / "athanor.sock").exists(), name


# --- the config file -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"\xff\xfe[server]\n"), "not UTF-8"),
    (lambda p: p.write_bytes(os.urandom(256) + b"\x00"), "not"),
    (lambda p: p.write_text("[server\nsocket = 1"), "not valid TOML"),
    (lambda p: p.write_text("[student]\nn_ctx = 'big'\n"), "[student].n_ctx"),
    (lambda p: p.write_text("[nonsense]\nx = 1\n"), "nonsense"),
    (lambda p: p.symlink_to(p.parent / "gone.toml"), "no config file"),
], ids=["folder", "utf-16", "binary", "syntax", "type", "unknown-section", "broken-link"])
def test_an_unreadable_config_is_one_clear_line(tmp_path, make, words):
    home = tmp_path / "home"
    home.mkdir()
    make(home / "athanor.toml")
    for command in ("config", "serve"):
        line = one_clear_line(run_cli(home, command))
        assert line.startswith("athanor: config error:"), line
        assert words in line, line


# --- the cache -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(None)


KEY = CacheKey("0", "v1", "{}")


@pytest.mark.parametrize("damage", ["truncated", "wal-garbage", "header-garbage"])
def test_a_damaged_cache_is_rebuilt_from_what_survives(tmp_path, embedder, damage):
    cfg = CacheConfig()
    db = tmp_path / "cache.sqlite3"
    with SemanticCache(db, embedder, cfg) as cache:
        for i in range(200):
            cache.put(KEY, f"Question number {i} about the history of bridge {i * 13}?", f"answer {i}")
    size = db.stat().st_size
    if damage == "truncated":
        os.truncate(db, size // 2)
    elif damage == "wal-garbage":
        Path(f"{db}-wal").write_bytes(os.urandom(64 << 10))
    else:
        with db.open("r+b") as handle:
            handle.write(os.urandom(100))
    with SemanticCache(db, embedder, cfg) as cache:  # must not raise
        entries = cache.stats()["entries"]
        assert 0 <= entries <= 200
        if damage == "wal-garbage":
            assert entries == 200  # a WAL SQLite cannot read is ignored: the checkpointed pages hold everything
        survivors = [i for i in range(200)
                     if (hit := cache.lookup(KEY, f"Question number {i} about the history of bridge {i * 13}?"))
                     and hit.answer == f"answer {i}"]
        assert len(survivors) == entries  # what is counted is served, and served right
        cache.put(KEY, "A new question after the damage?", "a new answer")
        assert cache.lookup(KEY, "A new question after the damage?").answer == "a new answer"


@pytest.mark.e2e
def test_the_daemon_starts_and_serves_over_a_garbage_cache(tmp_path):
    home = tmp_path / "home"
    state = home / "state"
    state.mkdir(parents=True)
    (state / "cache.sqlite3").write_bytes(os.urandom(1 << 16))
    process, path = start_daemon(home)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a", timeout=120) as c:
            answer = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hi."}],
                                                          "max_tokens": 4})
            assert answer.status_code == 200, answer.text
            assert c.get("/v1/stats").json()["cache"] is not None
    finally:
        stop_daemon(process)
    assert list(state.glob("cache.sqlite3.corrupt-*"))  # the damaged file is kept aside, not deleted
