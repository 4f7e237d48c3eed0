"""The daemon serving exports: students from a manifest, several side by side, a new export swapped in on SIGHUP."""

from __future__ import annotations

import signal
import time

import pytest

from appliance.clients.daemon_client import AthanorClient, ApiRequestError
from tests.conftest import start_daemon, stop_daemon
from tests.tiny_student import LESSONS

pytestmark = pytest.mark.e2e


def _write_config(home, export, quant: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "athanor.toml").write_text(
        f'[student]\nname = "tiny"\npath = "{export}"\nquant = "{quant}"\nparallel = 2\nn_ctx = 256\n\n'
        f'[[students]]\nname = "tiny-onnx"\npath = "{export}"\nquant = "onnx:int8"\nn_ctx = 256\n'
    )


def _paths(client) -> dict[str, str]:
    return {m["id"]: m["athanor"]["path"] for m in client.models()}


def test_exports_served_side_by_side_and_swapped_on_sighup(tiny_export, tmp_path):
    export, _ = tiny_export
    home = tmp_path / "home"
    _write_config(home, export, "q8_0")
    process, socket_path = start_daemon(home, env={"ATHANOR_CACHE__ENABLED": "false"})
    try:
        question = [{"role": "user", "content": LESSONS[0][0]}]
        with AthanorClient(socket_path) as client:
            paths = _paths(client)
            assert paths["tiny"].endswith("q8_0.gguf") and paths["tiny-onnx"].endswith("int8/model.onnx")
            gguf = client.chat(question, model="tiny", temperature=0, max_tokens=12)
            onnx = client.chat(question, model="tiny-onnx", temperature=0, max_tokens=12)
            # Both builds passed the gate with full agreement on this prompt: the same answer.
            assert gguf["choices"][0]["message"]["content"] == onnx["choices"][0]["message"]["content"]
            assert gguf["model"] == "tiny" and onnx["model"] == "tiny-onnx"
            # JSON mode needs llama.cpp's grammar sampler: an ONNX student says so instead of answering unheld.
            with pytest.raises(ApiRequestError) as refused:
                client.chat(question, model="tiny-onnx", max_tokens=8, response_format={"type": "json_object"})
            assert refused.value.status == 400 and "cannot hold its answer to JSON" in str(refused.value)

            _write_config(home, export, "f16")  # export B: another build replaces the served one
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not _paths(client)["tiny"].endswith("f16.gguf"):
                assert time.monotonic() < deadline, "the reload did not swap in the f16 build"
                time.sleep(0.2)
            after = client.chat(question, model="tiny", temperature=0, max_tokens=12)
            assert after["choices"][0]["message"]["content"] == gguf["choices"][0]["message"]["content"]
    finally:
        stop_daemon(process)
