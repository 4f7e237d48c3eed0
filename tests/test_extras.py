"""The base install serves; training, export and ONNX students say which extra they need."""

from __future__ import annotations

import importlib.util

import pytest

from appliance import extras
from appliance.extras import MissingExtra, require


def test_nothing_is_asked_for_when_the_extra_is_installed():
    # The test install has every extra (scripts/test.sh installs `.[test,export]`).
    for extra in ("onnx", "train", "export"):
        assert extras.missing(extra) == []
        require(extra, "a test")


def test_a_missing_module_names_the_extra_and_the_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(MissingExtra) as caught:
        require("train", "athanor train")
    message = str(caught.value)
    assert message.startswith("athanor train needs torch")
    assert "pip install 'athanor-appliance[train]'" in message and "scripts/test.sh" in message
    require("onnx", "an ONNX student")  # torch is not part of it


def test_serving_imports_none_of_the_heavy_stacks():
    """The daemon's modules, imported in a fresh interpreter, pull in no torch, transformers, peft, optimum or onnx."""
    import subprocess
    import sys

    code = ("import sys; import appliance.server.daemon, appliance.cli, appliance.tui.app, appliance.routing.cli; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'optimum', 'onnx', 'onnxruntime', "
            "'sentence_transformers') if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
