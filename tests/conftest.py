"""Shared fixtures: every test gets its own ATHANOR_HOME; e2e tests share one real daemon."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.defaults import embedded_student_path
from tests.distill_tiny import records, tiny  # noqa: F401 - module fixtures for the training tests
from tests.tiny_student import tiny_adapter, tiny_export  # noqa: F401 - session fixtures for the export tests

ROOT = Path(__file__).resolve().parent.parent


_models_dir: Path | None = None
_converted = False


def shared_models_dir(convert: bool = True) -> Path:
    """One folder for the whole run where the embedded default is converted once (to F16, served
    when requests are batched, and Q8_0, served with parallel = 1) instead of once per test home;
    readable by all, so daemons that tests run as other users or in a namespace of their own find it.

    `convert=False` only names the folder: a pure test never pays for a model it does not use, and a
    test that loads the student in-process converts what it needs there on demand."""
    global _models_dir, _converted
    if _models_dir is None:
        _models_dir = Path(tempfile.mkdtemp(prefix="athanor-models-"))
        atexit.register(shutil.rmtree, _models_dir, True)
        _models_dir.chmod(0o755)
    if convert and not _converted:
        from appliance.engine.model_source import serve_embedded

        for quant in ("f16", "q8_0"):
            serve_embedded(quant, _models_dir).chmod(0o644)
        _converted = True
    return _models_dir


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("ATHANOR_") or name in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATHANOR_MODELS_DIR", str(shared_models_dir(convert=False)))


@pytest.fixture(scope="session")
def student_path() -> Path:
    return embedded_student_path()


def wait_for_socket(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = getattr(process, "log_path", None)
            out = process.stdout.read() if process.stdout else (log.read_text() if log else "")
            raise RuntimeError(f"daemon exited with {process.returncode}: {out}")
        if path.exists():
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://a") as client:
                    if client.get("/healthz").status_code == 200:
                        return
            except httpx.TransportError:
                pass
        time.sleep(0.1)
    raise TimeoutError(f"daemon did not answer on {path} within {timeout} s")


def start_daemon(home: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    home.mkdir(parents=True, exist_ok=True)
    socket_path = home / "run" / "athanor.sock"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATHANOR_")}
    full_env.update({"ATHANOR_HOME": str(home), "ATHANOR_MODELS_DIR": str(shared_models_dir()), **(env or {})})
    # Output goes to a file, not a pipe nobody reads: a chatty daemon would block once the pipe is full.
    log_path = home / "daemon.log"
    with log_path.open("a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "serve", *args],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    wait_for_socket(socket_path, process)
    return process, socket_path


def stop_daemon(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """One real daemon on the embedded student for the e2e tests: yields its socket path."""
    home = tmp_path_factory.mktemp("daemon-home")
    # The student path alone: no cache, so repeated questions really reach the student.
    process, socket_path = start_daemon(home, env={"ATHANOR_SERVER__MAX_QUEUE": "8", "ATHANOR_CACHE__ENABLED": "false"})
    yield socket_path
    stop_daemon(process)


def gemini_env(fake, key_variable: str = "ATHANOR_TEST_GEMINI_KEY", **extra: str) -> dict[str, str]:
    """A daemon's environment for a Gemini teacher served by `fake` (tests/fakes), its key in `key_variable`."""
    return {
        "ATHANOR_TEACHER__PROVIDER": "gemini",
        "ATHANOR_TEACHER__MODEL": "gemini-2.5-flash",
        "ATHANOR_TEACHER__BASE_URL": fake.url,
        "ATHANOR_TEACHER__API_KEY_ENV": key_variable,
        key_variable: fake.api_key,
        "ATHANOR_TEACHER__TIMEOUT_S": "5",
        **extra,
    }
