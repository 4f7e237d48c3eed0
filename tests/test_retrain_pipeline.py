"""`run_retrain` as a library: typed stage results, words through callbacks, and no import cycle with the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.distill.retrain_pipeline import RetrainHooks, RetrainOutcome, RetrainRequest, run_retrain
from appliance.paths import retrain_dir


def _log(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}],
                                "teacher": {"text": f"The answer is {2 * i}.", "model": "fake"}}) + "\n")
    return path


def _request(log: Path, **fields) -> RetrainRequest:
    config = load_config(None)
    # No embedder: near-duplicate removal would load a model these decisions do not need.
    config = config.model_copy(update={"distill": config.distill.model_copy(update={"dedup_threshold": None})})
    return RetrainRequest(config=config, log=log, **fields)


def _run(request: RetrainRequest) -> tuple[RetrainOutcome, list[str]]:
    said: list[str] = []
    reloads: list[str] = []
    outcome = run_retrain(request, RetrainHooks(say=said.append, note=said.append, log=said.append,
                                                reload=lambda: reloads.append("asked") or "reloaded"))
    assert not reloads  # nothing installed, so nobody is asked to reload
    return outcome, said


def test_nothing_to_do_returns_the_plan_alone_and_trains_nothing(tmp_path):
    outcome, said = _run(_request(_log(tmp_path / "distill.jsonl", 5), mode="due"))
    assert not outcome.plan.plan.retrain and not outcome.installed
    assert (outcome.dataset, outcome.trained, outcome.export, outcome.gate, outcome.install, outcome.router,
            outcome.reload) == (None,) * 7
    assert len(outcome.plan.usable) == 5 and outcome.plan.held == () and outcome.plan.old_retention is None
    assert said == [outcome.plan.plan.describe()]
    assert said[0].startswith("nothing to do: 5 teacher-labelled records in the log, 20 needed to train plus 20")
    assert not (retrain_dir() / "heldout.jsonl").exists()


def test_a_dry_run_plans_to_retrain_and_stops_there(tmp_path):
    outcome, said = _run(_request(_log(tmp_path / "distill.jsonl", 60), dry_run=True))
    assert outcome.plan.plan.retrain and outcome.plan.plan.draw_heldout == 20
    assert outcome.dataset is None and not outcome.installed and said == [outcome.plan.plan.describe()]
    assert not retrain_dir().exists() or not any(retrain_dir().iterdir())


@pytest.mark.parametrize("first, second", [("retrain_cli", "cli"), ("cli", "retrain_cli")])
def test_the_retrain_command_and_the_distill_commands_import_in_either_order(first, second):
    code = (f"import sys, appliance.distill.{first}, appliance.distill.{second}\n"
            "assert 'retrain' in appliance.distill.cli.__dict__\n"
            "import importlib\n"
            # The library itself stays off the CLI and the daemon's client: the CLI hands it the reload.
            "for name in [n for n in sys.modules if n.startswith('appliance')]: del sys.modules[name]\n"
            "importlib.import_module('appliance.distill.retrain_cli')\n"
            "assert 'appliance.distill.cli' not in sys.modules, 'retrain_cli imports distill.cli again'\n"
            "assert 'appliance.clients.daemon_client' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
