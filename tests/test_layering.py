"""The tree is the map only while the processes keep to their parts: the daemon and the dashboard load
none of the offline jobs (`appliance.distill`, `export`) nor the training stack (torch, transformers, peft);
what they share with those jobs is in `appliance.protocol`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

OFFLINE = ("export", "torch", "transformers", "peft", "optimum")


def offline_loaded_after(code: str, timeout: int = 120) -> list[str]:
    """The offline modules a fresh interpreter holds after running `code` (this test process has imported
    everything already)."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {OFFLINE!r}\n"
             f"                        or m.startswith('appliance.distill'))))")
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", ["appliance.server.daemon", "appliance.tui.app", "appliance.clients.llm_plugin"])
def test_a_serving_process_loads_no_offline_package(module):
    loaded = offline_loaded_after(f"import {module}")
    assert loaded == [], f"{module} imports {loaded}"


def test_the_offline_jobs_read_the_daemon_contracts_from_protocol():
    # The export package writes the manifest the daemon reads; both name the one definition.
    from appliance.errors import ExportError
    from appliance.protocol import manifest
    from export import errors, pipeline

    assert pipeline.mf is manifest and errors.ExportError is ExportError


def test_serving_a_converted_embedded_student_needs_no_offline_package(tmp_path):
    # The default serves a copy of the embedded student converted at the first start: llama.cpp's
    # quantizer is the engine's, not the export package's.
    copy = tmp_path / "copy"
    loaded = offline_loaded_after("from pathlib import Path\n"
                                  "from appliance.engine.model_source import serve_embedded\n"
                                  f"serve_embedded('q8_0', Path({str(tmp_path)!r})).rename({str(copy)!r})",
                                  timeout=300)
    assert copy.is_file() and loaded == []
