import subprocess
import sys

import pytest

from appliance.config import apply_env, load_config, parse_config
from appliance.errors import ConfigError

from .conftest import ROOT


def test_defaults_put_the_socket_under_the_runtime_dir(tmp_path):
    config = parse_config({})
    assert config.server.socket == tmp_path / "home" / "run" / "athanor.sock"
    assert config.student.path is None
    assert config.server.socket_mode == 0o660


def test_env_overrides_the_file(tmp_path):
    file = tmp_path / "a.toml"
    file.write_text('[student]\nn_ctx = 1024\nname = "from-file"\n')
    config = load_config(file, environ={"ATHANOR_STUDENT__N_CTX": "4096"})
    assert config.student.n_ctx == 4096
    assert config.student.name == "from-file"
    assert config.source == file


def test_apply_env_ignores_unrelated_variables():
    assert apply_env({"a": {"b": 1}}, {"PATH": "/bin", "ATHANOR_HOME": "/x", "ATHANOR_A__C": "2"}) == {
        "a": {"b": 1, "c": "2"}
    }


@pytest.mark.parametrize(
    "data, setting, words",
    [
        # A missing model file must name the setting and tell how to get a model.
        ({"student": {"path": "/nope/model.gguf"}}, "[student].path", ["no student model at /nope/model.gguf", "athanor export"]),
        # Out-of-range numbers say which bound they broke and echo the value.
        ({"student": {"n_ctx": 10}}, "[student].n_ctx", ["greater than or equal to 64", "10"]),
        ({"server": {"max_queue": 0}}, "[server].max_queue", ["greater than or equal to 1"]),
        # Types that cannot be coerced.
        ({"student": {"n_ctx": "lots"}}, "[student].n_ctx", ["valid integer", "lots"]),
        # A typo is an unknown setting, not silently ignored.
        ({"student": {"n_cxt": 1}}, "[student].n_cxt", ["unknown setting"]),
        ({"studnet": {}}, "[studnet]", ["unknown setting"]),
    ],
)
def test_bad_values_name_the_setting(data, setting, words):
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    message = str(raised.value)
    assert raised.value.setting == setting
    for word in words:
        assert word in message


def test_invalid_toml_is_one_clear_error(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text("[student\npath=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(file, environ={})


def test_missing_explicit_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no config file at"):
        load_config(environ={"ATHANOR_CONFIG": str(tmp_path / "absent.toml")})


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"ATHANOR_STUDENT__PATH": "/no/such.gguf"}, "config error: [student].path: no student model at /no/such.gguf"),
        ({"ATHANOR_SERVER__MAX_BODY_BYTES": "-5"}, "config error: [server].max_body_bytes"),
    ],
)
def test_cli_exits_2_with_one_line(env, expected, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "serve"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "ATHANOR_HOME": str(tmp_path), **env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_config_command_prints_the_effective_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "config"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "ATHANOR_HOME": str(tmp_path), "ATHANOR_STUDENT__N_CTX": "777"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"n_ctx": 777' in result.stdout


def test_a_student_the_user_brings_is_named_after_its_file_or_folder_unless_named(tmp_path):
    from appliance.config import StudentConfig

    gguf = tmp_path / "qwen2.5-0.5b-instruct-q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    export = tmp_path / "qwen-v1"
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    assert StudentConfig().name == "smollm2-135m-instruct"  # the embedded default
    assert StudentConfig(path=gguf).name == "qwen2.5-0.5b-instruct-q8_0"
    assert StudentConfig(path=export).name == StudentConfig(path=export / "manifest.json").name == "qwen-v1"
    assert StudentConfig(path=gguf, name="mine").name == "mine"
    assert load_config(None, environ={"ATHANOR_STUDENT__PATH": str(export)}).student.name == "qwen-v1"
