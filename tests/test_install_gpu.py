"""scripts/lib/install.sh: which llama.cpp build it picks (CPU or CUDA) and where it keeps the CUDA wheel,
run in bash against fake `nvcc` / `nvidia-smi` on a PATH of their own; then install_athanor's order of
pip commands, run by a fake `.venv/bin/python` that only writes them down. Nothing is installed."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT

LIB = ROOT / "scripts" / "lib" / "install.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LLAMA = next(dep.split("==")[1] for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("llama-cpp-python=="))
ONNX_GPU = PYPROJECT["project"]["optional-dependencies"]["gpu"][0]
# What the script runs besides nvcc, nvidia-smi and python: linked one by one, so that an nvcc in
# /usr/bin on a CUDA machine stays out of the tests' PATH.
TOOLS = ("sed", "timeout", "cat", "sha256sum", "cut", "tail", "touch", "mkdir", "mktemp", "mv", "rm")


def nvcc_says(release: str) -> str:
    return (f"nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2025 NVIDIA Corporation\n"
            f"Cuda compilation tools, release {release}, V{release}.85\nBuild cuda_{release}.r{release}/compiler.0\n")


class Machine:
    """A temporary machine: a PATH holding only the tools and whatever fakes a test adds, no
    /usr/local/cuda and no /dev/nvidia0 (the script's defaults, pointed into the temporary folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, f"{tool} is needed to run scripts/lib/install.sh"
            (self.bin / tool).symlink_to(found)
        self.cuda_home = root / "usr-local-cuda"
        self.device = root / "dev-nvidia0"
        self.cache = root / "cache"
        self.env = {"PATH": str(self.bin), "HOME": str(root / "home"), "XDG_CACHE_HOME": str(self.cache)}

    def fake(self, where: Path, name: str, body: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        path = where / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return path

    def nvcc(self, release: str = "12.4", where: Path | None = None) -> Path:
        return self.fake(where or self.bin, "nvcc", f"cat <<'EOF'\n{nvcc_says(release)}EOF\n")

    def nvidia_smi(self, works: bool = True) -> None:
        if works:
            self.fake(self.bin, "nvidia-smi", "echo 'GPU 0: NVIDIA L4 (UUID: GPU-0f0f)'\n")
        else:  # the driver's tool is there, its kernel module is not
            self.fake(self.bin, "nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n")

    def bash(self, script: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
        # set -euo pipefail: quickstart.sh and test.sh source the library under it.
        prelude = (f"set -euo pipefail; source {LIB}; athanor_cuda_home_default={self.cuda_home}; "
                   f"athanor_nvidia_device={self.device}; ")
        return subprocess.run([shutil.which("bash") or "/bin/bash", "-c", prelude + script], cwd=cwd,
                              env={**self.env, **env}, capture_output=True, text=True, timeout=60)

    def variant(self, **env: str) -> tuple[str, str]:
        """(the build chosen, why)."""
        done = self.bash('athanor_gpu_variant; echo "$athanor_variant_why"', **env)
        assert done.returncode == 0, done.stderr
        chosen, why = done.stdout.splitlines()
        return chosen, why


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


# --- the choice -------------------------------------------------------------------------------------

def test_no_nvcc_means_the_cpu_build(machine):
    machine.nvidia_smi()  # a GPU without the toolkit: nothing can compile for it
    chosen, why = machine.variant()
    assert chosen == "cpu" and "no nvcc" in why and "ATHANOR_GPU=cuda" in why


def test_nvcc_and_nvidia_smi_mean_the_cuda_build(machine):
    machine.nvcc("12.4")
    machine.nvidia_smi()
    chosen, why = machine.variant()
    assert chosen == "cuda"
    assert str(machine.bin / "nvcc") in why and "CUDA 12.4" in why and "nvidia-smi" in why


def test_nvcc_without_a_driver_is_the_cpu_build_unless_cuda_is_asked_for(machine):
    machine.nvcc()
    machine.nvidia_smi(works=False)
    chosen, why = machine.variant()
    assert chosen == "cpu" and "no NVIDIA driver" in why
    # Asked for, it is built anyway: the machine that builds need not be the one that runs it.
    chosen, why = machine.variant(ATHANOR_GPU="cuda")
    assert chosen == "cuda" and "no NVIDIA driver here" in why


def test_the_device_node_shows_a_driver_without_nvidia_smi(machine):
    machine.nvcc()
    machine.device.touch()
    chosen, why = machine.variant()
    assert chosen == "cuda" and str(machine.device) in why


@pytest.mark.parametrize("place", ["CUDA_HOME", "default"])
def test_nvcc_off_the_path_is_found_where_the_toolkit_lives(machine, tmp_path, place):
    home = tmp_path / "cuda-12.8" if place == "CUDA_HOME" else machine.cuda_home
    nvcc = machine.nvcc("12.8", where=home / "bin")
    machine.nvidia_smi()
    env = {"CUDA_HOME": str(home)} if place == "CUDA_HOME" else {}
    chosen, why = machine.variant(**env)
    assert chosen == "cuda" and str(nvcc) in why
    done = machine.bash("athanor_cuda_wheel_dir", **env)
    assert done.stdout.strip().endswith(f"llama-cpp-python-{LLAMA}-cuda12.8")


def test_cpu_is_kept_when_asked_for(machine):
    machine.nvcc()
    machine.nvidia_smi()
    assert machine.variant(ATHANOR_GPU="cpu") == ("cpu", "ATHANOR_GPU=cpu")


def test_cuda_without_nvcc_fails_naming_the_fix(machine):
    machine.nvidia_smi()
    done = machine.bash("athanor_gpu_variant", ATHANOR_GPU="cuda")
    assert done.returncode != 0 and done.stdout == ""
    assert "no nvcc" in done.stderr and "CUDA toolkit" in done.stderr and "ATHANOR_GPU=cpu" in done.stderr


def test_an_unknown_choice_fails(machine):
    done = machine.bash("athanor_gpu_variant", ATHANOR_GPU="rocm")
    assert done.returncode != 0 and "auto (the default), cuda or cpu" in done.stderr


# --- the wheel folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("release", ["12.4", "13.0"])
def test_the_wheel_folder_is_keyed_by_llama_and_cuda_versions(machine, release):
    machine.nvcc(release)
    done = machine.bash("athanor_cuda_wheel_dir")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{machine.cache}/athanor/wheels/llama-cpp-python-{LLAMA}-cuda{release}"


def test_the_wheel_folder_defaults_to_the_home_cache(machine):
    machine.nvcc()
    env = {k: v for k, v in machine.env.items() if k != "XDG_CACHE_HOME"}
    done = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", f"source {LIB}; athanor_cuda_wheel_dir"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"{machine.root}/home/.cache/athanor/wheels/llama-cpp-python-{LLAMA}-cuda12.4"


def test_the_versions_come_from_pyproject(machine):
    done = machine.bash("athanor_llama_version; athanor_onnxruntime_gpu_spec")
    assert done.stdout.splitlines() == [LLAMA, ONNX_GPU]
    assert ONNX_GPU.startswith("onnxruntime-gpu")


# --- install_athanor, with a python that only writes down what it is asked ----------------------------

FAKE_PYTHON = """\
echo "CMAKE_ARGS=${CMAKE_ARGS:-} $*" >> "$PIP_LOG"
if [ "$2 $3" = "pip wheel" ]; then  # what pip wheel leaves behind
    while [ $# -gt 0 ]; do
        if [ "$1" = --wheel-dir ]; then : > "$2/llama_cpp_python-%s-py3-none-linux_x86_64.whl"; fi
        shift
    done
fi
"""


@pytest.fixture
def checkout(machine, tmp_path) -> Path:
    """A checkout whose .venv exists and whose python is FAKE_PYTHON."""
    folder = tmp_path / "checkout"
    folder.mkdir()
    shutil.copy(ROOT / "pyproject.toml", folder)
    machine.fake(folder / ".venv" / "bin", "python", FAKE_PYTHON % LLAMA)
    return folder


def install(machine: Machine, checkout: Path, **env: str) -> list[str]:
    """install_athanor "" in `checkout`: the python commands it ran."""
    log = checkout / "pip.log"
    log.unlink(missing_ok=True)
    done = machine.bash('install_athanor ""', cwd=checkout, PIP_LOG=str(log), **env)
    assert done.returncode == 0, done.stderr + (checkout / ".venv" / "install.log").read_text()
    return log.read_text().splitlines() if log.exists() else []


def test_the_cpu_install_is_the_plain_one_and_happens_once(machine, checkout):
    ran = install(machine, checkout)
    assert ran == ["CMAKE_ARGS= -m pip install --disable-pip-version-check --upgrade pip",
                   "CMAKE_ARGS= -m pip install --disable-pip-version-check -e ."]
    stamps = [p.name for p in (checkout / ".venv").glob(".athanor-installed-*")]
    assert len(stamps) == 1 and stamps[0].endswith("-base-cpu")
    assert install(machine, checkout) == []  # the stamp holds


def test_the_cuda_install_builds_once_then_reuses_the_wheel_and_swaps_onnxruntime(machine, checkout):
    machine.nvcc("12.4")
    machine.nvidia_smi()
    wheels = machine.cache / "athanor" / "wheels" / f"llama-cpp-python-{LLAMA}-cuda12.4"
    wheel = wheels / f"llama_cpp_python-{LLAMA}-py3-none-linux_x86_64.whl"
    ran = install(machine, checkout)
    built = [line for line in ran if " -m pip wheel " in line]
    assert len(built) == 1
    assert built[0].startswith(f"CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_COMPILER={machine.bin}/nvcc ")
    assert "--no-cache-dir --no-deps" in built[0] and built[0].endswith(f"llama-cpp-python=={LLAMA}")
    assert wheel.is_file() and not list(wheels.glob(".build.*"))
    # The CUDA wheel goes in before Athanor, so pip never compiles the CPU one; then onnxruntime-gpu replaces onnxruntime.
    order = [line.split(" ", 1)[1] for line in ran if " -m pip wheel " not in line]
    assert order == ["-m pip install --disable-pip-version-check --upgrade pip",
                     f"-m pip install --disable-pip-version-check --force-reinstall --no-deps {wheel}",
                     "-m pip install --disable-pip-version-check -e .",
                     "-m pip uninstall --disable-pip-version-check -y onnxruntime onnxruntime-gpu",
                     f"-m pip install --disable-pip-version-check {ONNX_GPU}"]
    assert (checkout / ".venv" / ".athanor-variant").read_text() == "cuda\n"
    assert install(machine, checkout) == []
    # pyproject changes: the wheel is reused, not built again.
    with (checkout / "pyproject.toml").open("a") as f:
        f.write("\n# changed\n")
    again = install(machine, checkout)
    assert not [line for line in again if " -m pip wheel " in line]
    assert any(f"--force-reinstall --no-deps {wheel}" in line for line in again)


def test_a_cuda_build_without_a_gpu_is_portable_and_takes_the_callers_cmake_args(machine, checkout):
    machine.nvcc()
    ran = install(machine, checkout, ATHANOR_GPU="cuda", CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=89")
    built = [line for line in ran if " -m pip wheel " in line]
    # CMake's "native" architecture needs a GPU to look at; without one the build stops.
    assert built[0].startswith(f"CMAKE_ARGS=-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_COMPILER={machine.bin}/nvcc "
                               "-DCMAKE_CUDA_ARCHITECTURES=89 ")


def test_switching_back_to_cpu_removes_the_cuda_packages_first(machine, checkout):
    install(machine, checkout)  # cpu
    machine.nvcc()
    machine.nvidia_smi()
    install(machine, checkout)  # cuda
    ran = install(machine, checkout, ATHANOR_GPU="cpu")  # the cpu stamp is still there: the recorded build decides
    assert [line.split(" ", 1)[1] for line in ran] == [
        "-m pip install --disable-pip-version-check --upgrade pip",
        "-m pip uninstall --disable-pip-version-check -y llama-cpp-python onnxruntime onnxruntime-gpu",
        "-m pip install --disable-pip-version-check -e ."]
    assert (checkout / ".venv" / ".athanor-variant").read_text() == "cpu\n"


def test_a_cuda_install_without_nvcc_stops_before_pip(machine, checkout):
    log = checkout / "pip.log"
    done = machine.bash('install_athanor ""', cwd=checkout, PIP_LOG=str(log), ATHANOR_GPU="cuda")
    assert done.returncode != 0 and "ATHANOR_GPU=cpu" in done.stderr and not log.exists()
