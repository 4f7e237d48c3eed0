"""The export reports each artifact's state and each step through `ExportEvents`, and draws nothing itself."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from export.console import ConsoleEvents
from export.events import ArtifactState, ExportEvents, Step
from export.pipeline import ExportOptions, Plan, run_export
from export.verify import Gate, Threshold
from tests.tiny_student import LESSONS


class Recorder(ExportEvents):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_start(self, plan: Plan) -> None:
        self.calls.append(("start", plan))

    def on_step(self, step: Step) -> None:
        self.calls.append(("step", step))

    def on_artifact(self, state: ArtifactState) -> None:
        self.calls.append(("artifact", state))

    def on_end(self, error: BaseException | None) -> None:
        self.calls.append(("end", error))

    def states(self, label: str) -> list[ArtifactState]:
        return [s for kind, s in self.calls if kind == "artifact" and isinstance(s, ArtifactState) and s.label == label]

    def steps(self) -> list[Step]:
        return [s for kind, s in self.calls if kind == "step" and isinstance(s, Step)]


def test_an_artifact_moves_only_forward_through_its_stages():
    planned = ArtifactState("gguf", "q8_0")
    assert planned.stage == "planned" and planned.label == "gguf:q8_0" and not planned.final
    built = planned.advance("built", path=Path("w/s.q8_0.gguf"), size_bytes=10)
    verified = built.advance("verified", figures={"agreement": 0.9})
    published = verified.advance("published", path=Path("out/gguf/s.q8_0.gguf"))
    assert published.final and published.size_bytes == 10 and published.figures == {"agreement": 0.9}
    assert planned.stage == "planned"  # frozen: each stage is a new record
    rejected = verified.advance("rejected", reasons=("mean KL 0.1 > 0.06",))
    assert rejected.final and rejected.reasons == ("mean KL 0.1 > 0.06",)
    with pytest.raises(ValueError, match="without a reason"):
        verified.advance("rejected")
    for state, stage in [(planned, "verified"), (planned, "published"), (built, "published"), (published, "rejected"),
                         (rejected, "published"), (built, "built")]:
        with pytest.raises(ValueError, match="cannot move"):
            state.advance(stage)


def test_the_console_draws_what_the_cli_showed_before():
    buffer = io.StringIO()
    events = ConsoleEvents(Console(file=buffer, width=200, color_system=None))
    plan = type("P", (), {"progress_total": lambda self: 2})()
    events.on_start(plan)  # type: ignore[arg-type]
    events.on_step(Step("begin", "verifying gguf:f16"))
    rejected = ArtifactState("gguf", "f16", "rejected", reasons=("mean KL 0.0000 > -1.0",))
    events.on_step(Step("done", "rejected gguf:f16: mean KL 0.0000 > -1.0", 1.234, rejected))
    events.on_step(Step("done", "wrote out/manifest.json: 0 published, 1 rejected", 0.06))
    events.on_end(None)
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("done")]
    assert lines == ["done rejected gguf:f16: mean KL 0.0000 > -1.0 (1.2 s)",
                     "done wrote out/manifest.json: 0 published, 1 rejected (0.1 s)"]


@pytest.mark.e2e
def test_a_real_export_reports_every_artifact_planned_built_verified_then_published_or_rejected(
        tiny_adapter, tmp_path, capsys):
    _, adapter = tiny_adapter
    recorder = Recorder()
    # An impossible KL limit for q8_0 only: f16 is published, q8_0 rejected, both reported.
    gate = Gate({**Gate().thresholds, "q8_0": Threshold(0.0, -1.0)})
    manifest = run_export(ExportOptions(adapter=adapter, out=tmp_path / "export", gguf=["f16", "q8_0"],
                                        prompts=[LESSONS[0][0]], max_new_tokens=4, gate=gate), recorder)
    captured = capsys.readouterr()
    assert "done" not in captured.out + captured.err and "━" not in captured.out + captured.err

    kinds = [kind for kind, _ in recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and recorder.calls[-1][1] is None
    assert [a.label for a in manifest.artifacts] == ["gguf:f16"]
    assert [a.label for a in manifest.rejected] == ["gguf:q8_0"]

    f16 = recorder.states("gguf:f16")
    assert [s.stage for s in f16] == ["planned", "built", "verified", "published"]
    assert f16[1].path is not None and f16[1].path.parent.name == ".work" and f16[1].size_bytes
    assert f16[2].figures["agreement"] == manifest.artifacts[0].verification["agreement"]
    assert f16[3].path == tmp_path / "export" / manifest.artifacts[0].path and f16[3].path.is_file()
    assert f16[3].size_bytes == manifest.artifacts[0].size_bytes

    q8 = recorder.states("gguf:q8_0")
    assert [s.stage for s in q8] == ["planned", "built", "verified", "rejected"]
    assert q8[3].reasons == manifest.rejected[0].reasons and "mean KL" in q8[3].reasons[0]
    assert q8[3].path is not None and not q8[3].path.exists()

    steps = recorder.steps()
    done = [s for s in steps if s.phase == "done"]
    plan = recorder.calls[0][1]
    assert isinstance(plan, Plan) and len(done) == plan.progress_total()
    assert all(s.elapsed_s >= 0 for s in done)
    verdicts = [s.artifact for s in done if s.artifact is not None]
    assert [(v.label, v.stage) for v in verdicts] == [("gguf:f16", "published"), ("gguf:q8_0", "rejected")]
    assert done[-1].text.startswith("wrote ") and done[-1].text.endswith("1 published, 1 rejected")
    # Every begin is followed by its done before the next begins (a bar over one step at a time).
    phases = [s.phase for s in steps]
    assert all(a != b or a == "done" for a, b in zip(phases, phases[1:]))
