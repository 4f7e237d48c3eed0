"""The systemd units pass `systemd-analyze verify` (and fail it when broken), keep their hardening,
and scripts/install.sh + uninstall.sh lay out a machine correctly (in a temporary root)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_config

from .conftest import ROOT

UNITS = ["athanor.socket", "athanor.service", "athanor-retrain.service", "athanor-retrain.timer"]
SHIPPED_BIN = "/opt/athanor/.venv/bin/athanor"
VENV_BIN = Path(sys.executable).parent / "athanor"


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    """systemd-analyze, installed from Debian's systemd package when missing (and we may)."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "systemd"], env=env,
                       capture_output=True, timeout=600)
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze missing and cannot be installed here (apt-get install systemd)")
    return found


def stage_units(folder: Path, replace: dict[str, tuple[str, str]] | None = None) -> list[Path]:
    """Copies of the units whose ExecStart= names an athanor that exists here (verify checks that),
    with optional (pattern, replacement) edits per unit to break them on purpose."""
    assert VENV_BIN.exists(), "the test venv has no athanor console script; pip install -e ."
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text().replace(SHIPPED_BIN, str(VENV_BIN))
        if replace and unit in replace:
            pattern, replacement = replace[unit]
            text, count = re.subn(pattern, replacement, text, flags=re.M)
            assert count, f"{pattern!r} not found in {unit}"
        (folder / unit).write_text(text)
        staged.append(folder / unit)
    return staged


def verify(systemd_analyze: str, units: list[Path]) -> tuple[bool, str]:
    """(clean, what verify said). verify exits 0 on most mistakes (unknown keys, unparsable values are
    'ignoring' warnings), so a clean result also means nothing was said about our units."""
    result = subprocess.run([systemd_analyze, "verify", *map(str, units)], capture_output=True, text=True,
                            timeout=120, cwd=units[0].parent)
    said = result.stdout + result.stderr
    ours = [line for line in said.splitlines()
            if str(units[0].parent) in line or any(unit.name in line for unit in units)]
    return result.returncode == 0 and not ours, said


def test_the_units_verify_cleanly(systemd_analyze, tmp_path):
    clean, said = verify(systemd_analyze, stage_units(tmp_path))
    assert clean, said


@pytest.mark.parametrize("unit, pattern, replacement", [
    # A typo in a key is only a warning ("Unknown key ... ignoring"): the hardening would silently vanish.
    ("athanor.service", r"^ProtectSystem=", "ProtectSytem="),
    # A value systemd cannot parse is ignored too: Restart= would fall back to "no".
    ("athanor.service", r"^Restart=on-failure", "Restart=sometimes"),
    # A wrong Type= would make systemd never wait for READY=1.
    ("athanor.service", r"^Type=notify", "Type=notfy"),
    # ExecStart= pointing at nothing: verify's one real error (exit code 1).
    ("athanor.service", r"^ExecStart=\S+", "ExecStart=/nonexistent/athanor"),
    # An unparsable calendar spec means the weekly retrain never runs.
    ("athanor-retrain.timer", r"^OnCalendar=.*", "OnCalendar=every sunday-ish"),
    # A socket mode that is not octal.
    ("athanor.socket", r"^SocketMode=.*", "SocketMode=rw-rw----"),
])
def test_a_broken_unit_fails_verification(systemd_analyze, tmp_path, unit, pattern, replacement):
    clean, said = verify(systemd_analyze, stage_units(tmp_path, {unit: (pattern, replacement)}))
    assert not clean, f"verify accepted {unit} with {replacement!r}: {said}"


def test_services_stay_hardened(systemd_analyze, tmp_path):
    """`systemd-analyze security` scores exposure 0-10 (shown) / 0-100 (threshold); ours is ~1.7 "OK"."""
    staged = stage_units(tmp_path)
    for unit in ("athanor.service", "athanor-retrain.service"):
        result = subprocess.run([systemd_analyze, "security", "--offline=true", "--threshold=25", "--no-pager",
                                 str(tmp_path / unit)], capture_output=True, text=True, timeout=120)
        if "--offline" in result.stderr and "unrecognized" in result.stderr:
            pytest.skip("this systemd-analyze has no --offline security review (systemd < 250)")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert staged


def test_service_unit_settings_the_issue_asks_for():
    unit = (ROOT / "systemd" / "athanor.service").read_text()
    settings = {line.split("=", 1)[0] for line in unit.splitlines() if "=" in line and not line.startswith("#")}
    for key in ("Type", "ExecReload", "Restart", "StartLimitIntervalSec", "StartLimitBurst", "User",
                "StateDirectory", "RuntimeDirectory", "ProtectSystem", "ProtectHome", "PrivateTmp",
                "NoNewPrivileges", "LoadCredential", "DevicePolicy", "SyslogIdentifier"):
        assert key in settings, key
    assert "Type=notify\n" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "PrivateDevices" not in settings  # it would hide /dev/nvidia* even from the GPU drop-in
    # Secrets through credentials, never the environment.
    assert not re.search(r"^Environment=.*(KEY|TOKEN|SECRET)", unit, flags=re.M | re.I)
    socket_unit = (ROOT / "systemd" / "athanor.socket").read_text()
    assert "ListenStream=/run/athanor/athanor.sock" in socket_unit and "SocketMode=0660" in socket_unit
    timer = (ROOT / "systemd" / "athanor-retrain.timer").read_text()
    assert "Persistent=true" in timer and "RandomizedDelaySec=" in timer


def test_the_config_template_is_valid():
    config = load_config(ROOT / "scripts" / "athanor.toml.example", environ={})
    assert str(config.server.socket) == "/run/athanor/athanor.sock"
    assert config.teacher.api_key_credential == "gemini-api-key"


# --- install.sh / uninstall.sh in a temporary root ------------------------------------------------

def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_lays_out_config_credentials_state_and_units(tmp_path, systemd_analyze):
    root = tmp_path / "root"
    out = run_script("install.sh", "--root", str(root), "--venv", str(VENV_BIN.parent.parent), "--no-gpu").stdout
    etc = root / "etc" / "athanor"
    assert mode(etc / "credentials") == 0o700
    key = etc / "credentials" / "gemini-api-key"
    assert key.read_text() == "" and mode(key) == 0o600  # LoadCredential= needs the file to exist
    assert mode(root / "var" / "lib" / "athanor") == 0o700  # not the socket group's
    assert load_config(etc / "athanor.toml", environ={}).teacher.provider == "none"
    units = root / "etc" / "systemd" / "system"
    for unit in UNITS:
        text = (units / unit).read_text()
        assert SHIPPED_BIN not in text
    assert f"ExecStart={VENV_BIN} " in (units / "athanor.service").read_text()
    assert not (units / "athanor.service.d").exists()  # no GPU: every device stays closed
    assert "not creating the athanor user" in out and "not enabling" in out
    clean, said = verify(systemd_analyze, [units / unit for unit in UNITS])
    assert clean, said


def test_install_again_keeps_the_config_and_key_and_toggles_the_gpu_drop_in(tmp_path, systemd_analyze):
    root = tmp_path / "root"
    venv = str(VENV_BIN.parent.parent)
    run_script("install.sh", "--root", str(root), "--venv", venv, "--no-gpu")
    config = root / "etc" / "athanor" / "athanor.toml"
    key = root / "etc" / "athanor" / "credentials" / "gemini-api-key"
    config.write_text('[teacher]\nprovider = "gemini"\n')
    key.write_text("my-key\n")
    out = run_script("install.sh", "--root", str(root), "--venv", venv, "--gpu").stdout
    assert config.read_text() == '[teacher]\nprovider = "gemini"\n' and "kept the existing" in out
    assert key.read_text() == "my-key\n"
    units = root / "etc" / "systemd" / "system"
    for unit in ("athanor.service", "athanor-retrain.service"):
        assert "DeviceAllow=char-nvidia* rw" in (units / f"{unit}.d" / "gpu.conf").read_text()
    clean, said = verify(systemd_analyze, [units / "athanor.service"])  # the drop-in beside it is read too
    assert clean, said
    run_script("install.sh", "--root", str(root), "--venv", venv, "--no-gpu")
    assert not (units / "athanor.service.d").exists()


def test_install_refuses_a_missing_venv(tmp_path):
    fake = tmp_path / "home-venv"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install.sh"), "--root", str(tmp_path / "r"),
                             "--venv", str(fake)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no virtual environment" in result.stderr


def test_uninstall_keeps_state_unless_purged(tmp_path):
    root = tmp_path / "root"
    run_script("install.sh", "--root", str(root), "--venv", str(VENV_BIN.parent.parent), "--gpu")
    (root / "var" / "lib" / "athanor" / "distill.jsonl").write_text("{}\n")
    run_script("uninstall.sh", "--root", str(root))
    units = root / "etc" / "systemd" / "system"
    assert not any(units.iterdir())  # units and GPU drop-ins gone
    assert (root / "etc" / "athanor" / "athanor.toml").exists()
    assert (root / "var" / "lib" / "athanor" / "distill.jsonl").exists()
    run_script("uninstall.sh", "--root", str(root))  # again: nothing left to do, still fine
    run_script("uninstall.sh", "--root", str(root), "--purge")
    assert not (root / "etc" / "athanor").exists() and not (root / "var" / "lib" / "athanor").exists()


# --- the teacher's key as a systemd credential (LoadCredential=) -----------------------------------

@pytest.mark.parametrize("credential, key_file, environ_key, expected", [
    # systemd handed the key over: it wins over the environment.
    ("cred-key\n", None, "env-key", "cred-key"),
    # The installer's empty placeholder counts as no credential: the environment still works.
    ("", None, "env-key", "env-key"),
    # An explicit [teacher].api_key_file wins over everything.
    ("cred-key", "file-key", "env-key", "file-key"),
    # No credentials directory at all (not under systemd): the environment.
    (None, None, "env-key", "env-key"),
])
def test_the_key_comes_from_the_credential_when_systemd_passes_one(tmp_path, credential, key_file, environ_key,
                                                                    expected):
    from appliance.config import TeacherConfig
    from appliance.teacher.keys import read_api_key

    environ = {"MY_KEY": environ_key}
    if credential is not None:
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "gemini-api-key").write_text(credential)
        environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
    path = None
    if key_file is not None:
        path = tmp_path / "key"
        path.write_text(key_file)
    cfg = TeacherConfig(provider="gemini", api_key_env="MY_KEY", api_key_file=path)
    assert read_api_key(cfg, environ).reveal() == expected


def test_no_key_anywhere_says_where_the_service_reads_it(tmp_path):
    from appliance.config import TeacherConfig
    from appliance.errors import ConfigError
    from appliance.teacher.keys import read_api_key

    (tmp_path / "gemini-api-key").write_text("")
    with pytest.raises(ConfigError) as caught:
        read_api_key(TeacherConfig(provider="gemini"), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "/etc/athanor/credentials/gemini-api-key" in str(caught.value)
