"""`athanor doctor`: each check on its own (temporary folders, probed values passed in), the report,
the command's exit code, and one run against the real daemon."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance import doctor
from appliance.cli import main
from appliance.config import StudentConfig, TeacherConfig
from appliance.doctor import (
    GIB,
    MIB,
    Check,
    check_config,
    check_disk,
    check_gpu,
    check_llama_build,
    check_model,
    check_onnxruntime,
    check_socket,
    check_teacher_key,
    failed,
    format_report,
    free_bytes,
    manifest_sha256,
    state_dir_in_use,
)

from .conftest import ROOT

KEY = "AIzaSy-doctor-must-never-print-this"


def model_file(folder: Path, content: bytes = b"GGUF fake model bytes") -> tuple[Path, str]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "student.gguf"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


# --- config -----------------------------------------------------------------------------------------

def test_a_valid_config_is_ok(tmp_path):
    path = tmp_path / "athanor.toml"
    path.write_text("[routing]\nconfidence_threshold = 0.3\n")
    check, config = check_config(path, {})
    assert check.status == "ok" and str(path) in check.message
    assert config is not None and config.routing.confidence_threshold == 0.3


@pytest.mark.parametrize("text, words", [
    ("[routing]\nconfidence_threshold = 3\n", ["[routing].confidence_threshold"]),  # out of range
    ("[student]\npth = 'x.gguf'\n", ["[student].pth", "unknown setting"]),          # a typo
    ("[server\n", ["not valid TOML"]),                                               # broken syntax
])
def test_an_invalid_config_fails_naming_the_setting(tmp_path, text, words):
    path = tmp_path / "athanor.toml"
    path.write_text(text)
    check, config = check_config(path, {})
    assert check.status == "fail" and config is None and check.fix
    for word in words:
        assert word in check.message


# --- model ------------------------------------------------------------------------------------------

def test_a_model_without_a_recorded_checksum_is_a_warning(tmp_path):
    path, _ = model_file(tmp_path)
    check = check_model(StudentConfig(path=path))
    assert check.status == "warn" and "no checksum recorded" in check.message
    assert f"sha256sum {path}" in check.fix


@pytest.mark.parametrize("matches", [True, False])
def test_a_sha256_file_beside_the_model_is_checked(tmp_path, matches):
    path, digest = model_file(tmp_path)
    recorded = digest if matches else "0" * 64
    path.with_name("student.gguf.sha256").write_text(f"{recorded}  student.gguf\n")  # sha256sum's format
    check = check_model(StudentConfig(path=path))
    assert check.status == ("ok" if matches else "fail")
    if not matches:
        assert "does not match" in check.message and "athanor export" in check.fix


def test_a_manifest_beside_the_model_is_checked(tmp_path):
    path, digest = model_file(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [{"path": "exports/student.gguf", "sha256": digest}]}))
    assert check_model(StudentConfig(path=path)).status == "ok"
    path.write_bytes(b"tampered")
    assert check_model(StudentConfig(path=path)).status == "fail"


DIGEST = "ab" * 32


@pytest.mark.parametrize("manifest, expected", [
    ({"artifacts": [{"file": "student.gguf", "sha256": DIGEST}]}, DIGEST),        # a list of entries
    ({"gguf": {"q4_k_m": {"path": "/x/student.gguf", "sha256": DIGEST}}}, DIGEST),  # nested by kind
    ({"student.gguf": DIGEST}, DIGEST),                                           # name -> digest
    ({"student.gguf": {"sha256": DIGEST.upper()}}, DIGEST),                       # upper case hex
    ({"files": [{"path": "other.gguf", "sha256": DIGEST}]}, None),                # another file's
    ({"files": [{"path": "student.gguf", "sha256": "not-hex"}]}, None),           # not a digest
])
def test_manifest_shapes(manifest, expected):
    assert manifest_sha256(manifest, "student.gguf") == expected


def test_a_missing_model_fails(tmp_path):
    check = check_model(StudentConfig.model_construct(path=tmp_path / "gone.gguf"))
    assert check.status == "fail" and "no student model" in check.message


def test_the_embedded_model_is_checked_against_its_package_record(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHANOR_MODELS_DIR", str(tmp_path))
    check = check_model(StudentConfig())
    assert check.status == "ok" and "RECORD" in check.message
    # It says where the daemon serves it from, and that the copy is still to be made.
    assert f"served as {tmp_path}/" in check.message and ".f16.gguf (converted at the first start" in check.message
    assert ".q8_0.gguf (converted" in check_model(StudentConfig(parallel=1)).message
    assert "served as" not in check_model(StudentConfig(quant="q4_1")).message


def test_a_quant_the_embedded_model_cannot_take_fails():
    check = check_model(StudentConfig(quant="q5_k_m"))
    assert check.status == "fail" and "f16, q8_0, q4_1" in check.message and "[student].quant" in check.fix


# --- socket -----------------------------------------------------------------------------------------

def test_no_socket_fails_with_how_to_start_the_daemon(tmp_path):
    check = check_socket(tmp_path / "athanor.sock")
    assert check.status == "fail" and "systemctl start athanor.socket" in check.fix


def test_a_socket_nobody_listens_on_fails(tmp_path):
    path = tmp_path / "athanor.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: like the file a crashed daemon leaves
    check = check_socket(path)
    assert check.status == "fail" and "journalctl -u athanor" in check.fix


# --- GPU --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers, built, devices, unit_allows, status, words", [
    # The config asks for no GPU: nothing to check.
    (0, True, [], None, "ok", "not used"),
    # A CPU build of llama.cpp on a machine without a GPU: the normal small-server case.
    (-1, False, [], None, "ok", "CPU build"),
    # A GPU sits idle because llama.cpp was built without CUDA: check_llama_build warns, not this.
    (-1, False, ["/dev/nvidia0"], None, "ok", "CPU build"),
    # Built for CUDA, asked to offload, but no device: the model would fall back or fail.
    (-1, True, [], None, "fail", "no NVIDIA GPU is visible"),
    # Visible here, but the installed unit keeps /dev closed (no gpu.conf drop-in).
    (20, True, ["/dev/nvidia0"], False, "warn", "drop-in"),
    # Visible, and the service may open it.
    (-1, True, ["/dev/nvidia0", "/dev/nvidia1"], True, "ok", "/dev/nvidia1"),
    # Visible, no service installed (run by hand).
    (-1, True, ["/dev/nvidia0"], None, "ok", "visible"),
])
def test_gpu_visibility(layers, built, devices, unit_allows, status, words):
    check = check_gpu(layers, built, devices, unit_allows)
    assert check.status == status and words in check.message
    if status != "ok":
        assert check.fix


@pytest.mark.parametrize("built, seen, layers, status, words", [
    # The small-server case: CPU build, no GPU.
    (False, None, -1, "ok", "CPU build; no GPU visible, so [student].n_gpu_layers = -1 offloads nothing"),
    (False, None, 0, "ok", "CPU build; no GPU visible"),
    # A GPU sits idle because llama.cpp was built without CUDA, whichever way the GPU showed.
    (False, "/dev/nvidia0", -1, "warn", "CPU build, but a GPU is visible (/dev/nvidia0)"),
    (False, "nvidia-smi: GPU 0: NVIDIA H200", 20, "warn", "[student].n_gpu_layers = 20 offloads nothing"),
    (False, "NVML: 2 GPUs", -1, "warn", "NVML: 2 GPUs"),
    # ... unless the config asks for no offload.
    (False, "/dev/nvidia0", 0, "ok", "as [student].n_gpu_layers = 0 asks"),
    # The CUDA build, used or not.
    (True, "/dev/nvidia0", -1, "ok", "GPU build; [student].n_gpu_layers = -1"),
    (True, "/dev/nvidia0", 0, "ok", "the student decodes on the CPU"),
    (True, None, -1, "ok", "GPU build"),  # no device: check_gpu fails it, once
])
def test_which_llama_build_is_loaded(built, seen, layers, status, words):
    check = check_llama_build(built, seen, layers)
    assert check.name == "llama.cpp" and check.status == status and words in check.message
    if status == "warn":
        assert check.fix == "ATHANOR_GPU=cuda bash scripts/quickstart.sh"


@pytest.mark.parametrize("providers, seen, status, words", [
    (["CPUExecutionProvider"], None, "ok", "providers: CPUExecutionProvider"),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], "/dev/nvidia0", "ok",
     "providers: CUDAExecutionProvider, CPUExecutionProvider"),
    # onnxruntime (CPU) where onnxruntime-gpu belongs.
    (["AzureExecutionProvider", "CPUExecutionProvider"], "nvidia-smi: GPU 0: NVIDIA L4", "warn", "without CUDAExecutionProvider"),
    # Not importable with a GPU there (say, one of onnxruntime / onnxruntime-gpu uninstalled over the other).
    (None, "/dev/nvidia0", "warn", "does not import"),
    # Left out by the base install, which serves GGUF students only.
    (None, None, "ok", "athanor-appliance[onnx]"),
])
def test_onnxruntime_providers(providers, seen, status, words):
    check = check_onnxruntime(providers, seen)
    assert check.name == "onnxruntime" and check.status == status and words in check.message
    if status == "warn" and seen:
        assert check.fix == "ATHANOR_GPU=cuda bash scripts/quickstart.sh"


def test_the_gpu_is_seen_through_nvidia_smi_when_no_device_node_shows(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0123)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor.probe_gpu_seen([]) == "nvidia-smi: GPU 0: NVIDIA H200"
    assert doctor.probe_gpu_seen(["/dev/nvidia1"]) == "/dev/nvidia1"
    smi.write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr("pynvml.nvmlInit", no_driver)  # NVML is the last resort, and finds nothing either
    assert doctor.probe_gpu_seen([]) is None


# --- teacher key ------------------------------------------------------------------------------------

def test_no_teacher_needs_no_key(tmp_path):
    assert check_teacher_key(TeacherConfig(), {}, tmp_path).status == "ok"


@pytest.mark.parametrize("where", ["env", "credential", "store"])
def test_a_teacher_key_is_found_and_never_printed(tmp_path, where):
    environ: dict[str, str] = {}
    if where == "env":
        environ["GEMINI_API_KEY"] = KEY
    elif where == "credential":
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "gemini-api-key").write_text(KEY)
        environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
    else:  # the file LoadCredential= reads, checked from outside the service
        (tmp_path / "gemini-api-key").write_text(KEY + "\n")
    check = check_teacher_key(TeacherConfig(provider="gemini"), environ, tmp_path)
    assert check.status == "ok", check
    assert KEY not in format_report([check])


def test_a_missing_teacher_key_fails_with_where_to_put_it(tmp_path):
    (tmp_path / "gemini-api-key").write_text("")  # the installer's empty placeholder
    check = check_teacher_key(TeacherConfig(provider="gemini"), {}, tmp_path)
    assert check.status == "fail"
    assert str(tmp_path / "gemini-api-key") in check.fix and "restart" in check.fix


# --- disk -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("free, status", [
    (50 * GIB, "ok"),
    (GIB, "ok"),            # exactly the warning line is still fine
    (GIB - 1, "warn"),
    (100 * MIB, "warn"),
    (100 * MIB - 1, "fail"),
    (0, "fail"),
])
def test_disk_space_thresholds(tmp_path, free, status):
    assert check_disk(free, tmp_path).status == status


def test_free_space_is_measured_where_the_state_folder_will_be(tmp_path):
    free, where = free_bytes(tmp_path / "not" / "yet" / "created")
    assert where == tmp_path and free > 0


def test_the_state_folder_is_the_services_when_the_unit_is_installed(tmp_path):
    unit = tmp_path / "athanor.service"
    assert state_dir_in_use({}, unit) != doctor.SYSTEM_STATE  # no unit: this user's folder
    unit.write_text("[Service]\n")
    assert state_dir_in_use({}, unit) == doctor.SYSTEM_STATE
    assert state_dir_in_use({"ATHANOR_HOME": str(tmp_path)}, unit) != doctor.SYSTEM_STATE  # explicit wins


# --- report and command -----------------------------------------------------------------------------

def test_the_report_shows_fixes_only_for_problems():
    checks = [Check("config", "ok", "fine", "never shown"), Check("disk", "fail", "0.0 GiB free", "free space")]
    report = format_report(checks)
    assert "never shown" not in report and "fix: free space" in report
    assert report.splitlines()[0].startswith("OK ") and report.splitlines()[1].startswith("FAIL ")
    assert failed(checks) and not failed(checks[:1])


def test_the_command_exits_non_zero_when_a_check_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("ATHANOR_SERVER__SOCKET", str(tmp_path / "nobody.sock"))
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert "FAIL  socket" in result.output and "fix:" in result.output
    as_json = CliRunner().invoke(main, ["doctor", "--json"])
    assert as_json.exit_code == 1
    checks = {c["name"]: c for c in json.loads(as_json.stdout)}
    assert checks["socket"]["status"] == "fail" and "athanor serve" in checks["socket"]["fix"]
    assert {"name", "status", "message", "fix"} == set(checks["config"])


@pytest.mark.e2e
def test_doctor_against_the_running_daemon(daemon):
    env = {**os.environ, "ATHANOR_SERVER__SOCKET": str(daemon)}
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "doctor"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "OK    socket" in result.stdout and "smollm2-135m-instruct" in result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def test_doctor_says_where_the_retrain_loop_stands():
    from appliance.doctor import check_retrain

    alone = check_retrain("none", "nothing to do: 0 records", False, 0, None)
    assert alone.status == "warn" and "never retrains" in alone.message and "[teacher].provider" in alone.fix
    waiting = check_retrain("gemini", "nothing to do: 12 new teacher-labelled records", False, 12, None)
    assert waiting.status == "ok" and "the weekly timer would wait: 12 new" in waiting.message
    due = check_retrain("gemini", "retrain: 240 new", True, 240, "2026-11-30T00:00:00Z")
    assert "would retrain: 240 new" in due.message and "last student installed 2026-11-30" in due.message


def test_the_router_check_says_what_judges_answers_and_what_pre_routing_remembers():
    from appliance.doctor import check_router

    off = check_router("off", None, 0, False, 0, 0)
    assert off.status == "ok" and "quantile rule" in off.message
    used = check_router("default", "/x/default_router.json", 160, True, 320, 12)
    assert used.status == "ok"
    assert "fitted on 160" in used.message and "record on 332 past questions (320 shipped, 12 graded" in used.message
    assert "record" not in check_router("default", "/x/router.json", 40, False, 0, 0).message
    missing = check_router("/x/router.json", None, 0, False, 0, 0)
    assert missing.status == "warn" and "router refit" in missing.fix
    assert "keeps none" not in used.message
    strict = check_router("default", "/x/default_router.json", 160, False, 0, 0, keeps_none=True, explore_share=0.1)
    assert "keeps none of the student's answers" in strict.message and "10% the student answers first" in strict.message
    assert "streams" not in strict.message and "held to their end" not in strict.message
    # What streams with a teacher: the router of the first tokens, or nothing until the answer ends.
    assert "held to their end" in used.message
    streaming = check_router("default", "/x/router.json", 40, False, 0, 0, early_router="/x/router_early.json",
                             hold_tokens=8)
    assert "streams once its first 8 tokens pass /x/router_early.json" in streaming.message


def test_doctor_says_whether_the_router_in_use_keeps_any_answer(tmp_path, monkeypatch):
    from appliance.config import AthanorConfig
    from appliance.doctor import router_outlook
    from appliance.routing.learned import LogisticRouter
    from appliance.routing.signals import Signals

    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    names = tuple(Signals.names())
    zeros, ones = tuple(0.0 for _ in names), tuple(1.0 for _ in names)
    for threshold, keeps_none in ((1.0, True), (0.6, False)):
        router = tmp_path / f"router-{threshold}.json"
        LogisticRouter(names, zeros, ones, zeros, 0.0, threshold, 1.0).save(router)
        check = router_outlook(AthanorConfig(routing={"router": str(router), "explore_share": 0.25}))
        assert str(router) in check.message
        assert ("keeps none" in check.message and "25%" in check.message) is keeps_none


def test_doctor_counts_the_graded_questions_of_the_log_in_the_router_check(tmp_path, monkeypatch):
    from appliance.config import AthanorConfig
    from appliance.doctor import router_outlook
    from appliance.routing.signals import Signals

    monkeypatch.setenv("ATHANOR_HOME", str(tmp_path))
    (tmp_path / "state").mkdir()
    entry = {"messages": [{"role": "user", "content": "Is a whale a fish?"}],
             "student": {"model": "s", "version": "v1", "text": "Yes.", "signals": dict.fromkeys(Signals.names(), 0.0)},
             "teacher": {"text": "No.", "cost_usd": 0.001}}
    (tmp_path / "state" / "distill.jsonl").write_text(json.dumps(entry) + "\n", encoding="utf-8")
    check = router_outlook(AthanorConfig())
    assert check.status == "ok" and "(320 shipped, 1 graded in the distillation log)" in check.message
