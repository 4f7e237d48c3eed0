"""The teacher's key handling (never printed) and its price table (exact names, variants, config overrides)."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.config import TeacherConfig
from appliance.errors import ConfigError
from appliance.teacher.keys import Secret, read_api_key
from appliance.teacher.pricing import PRICES, Price, lookup, price_for

KEY = "AIzaSy-very-secret-test-key-1234"


def test_secret_prints_as_stars_and_reveals_on_request():
    secret = Secret(KEY)
    assert str(secret) == "***"
    assert KEY not in repr(secret) and "***" in repr(secret)
    assert KEY not in f"{secret} {secret!r} {[secret]} {({'k': secret})}"
    assert secret.reveal() == KEY
    assert secret.scrub(f"bad key {KEY}!") == "bad key ***!"


def test_secret_refuses_to_be_pickled():
    with pytest.raises(TypeError):
        pickle.dumps(Secret(KEY))


def test_key_file_wins_over_the_environment_and_is_stripped(tmp_path):
    key_file = tmp_path / "gemini.key"
    key_file.write_text(f"  {KEY}\n")
    cfg = TeacherConfig(provider="gemini", api_key_file=key_file, api_key_env="MY_KEY")
    assert read_api_key(cfg, environ={"MY_KEY": "from-env"}).reveal() == KEY


def test_key_comes_from_the_named_variable():
    cfg = TeacherConfig(provider="gemini", api_key_env="MY_KEY")
    assert read_api_key(cfg, environ={"MY_KEY": f"{KEY}\n"}).reveal() == KEY


def test_key_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("MY_KEY", KEY)
    assert read_api_key(TeacherConfig(provider="gemini", api_key_env="MY_KEY")).reveal() == KEY


@pytest.mark.parametrize(
    "environ, file_text, setting, words",
    [
        # No variable at all: name the variable and both ways to fix it.
        ({}, None, "[teacher].api_key_env", ["MY_KEY", "set the variable or [teacher].api_key_file"]),
        # A variable holding only whitespace is as good as none.
        ({"MY_KEY": "  \n"}, None, "[teacher].api_key_env", ["MY_KEY"]),
        # An empty key file is a mistake, not a fallback to the environment.
        ({"MY_KEY": KEY}, "\n", "[teacher].api_key_file", ["is empty"]),
        # A key file that is named but missing.
        ({"MY_KEY": KEY}, "MISSING", "[teacher].api_key_file", ["no key file"]),
    ],
)
def test_missing_keys_name_the_setting_and_the_fix(tmp_path, environ, file_text, setting, words):
    key_file = None
    if file_text is not None:
        key_file = tmp_path / "key"
        if file_text != "MISSING":
            key_file.write_text(file_text)
    cfg = TeacherConfig(provider="gemini", api_key_env="MY_KEY", api_key_file=key_file)
    with pytest.raises(ConfigError) as caught:
        read_api_key(cfg, environ=environ)
    assert caught.value.setting == setting
    for word in words:
        assert word in str(caught.value)
    assert KEY not in str(caught.value)


def test_config_dump_holds_no_key(tmp_path):
    cfg = TeacherConfig(provider="gemini", api_key_env="MY_KEY")
    read_api_key(cfg, environ={"MY_KEY": KEY})
    assert KEY not in repr(cfg) and KEY not in cfg.model_dump_json()


@pytest.mark.parametrize(
    "model, expected",
    [
        ("gemini-2.5-flash", (0.30, 2.50)),
        ("gemini-2.5-flash-lite", (0.10, 0.40)),
        ("gemini-2.5-pro", (1.25, 10.00)),
        ("gemini-2.0-flash", (0.10, 0.40)),
        ("gpt-4o-mini", (0.15, 0.60)),
        ("gpt-4.1-mini", (0.40, 1.60)),
        ("gpt-4o", (2.50, 10.00)),
        # A dated variant is priced as its family.
        ("gemini-2.5-flash-001", (0.30, 2.50)),
        ("gpt-4o-2024-08-06", (2.50, 10.00)),
        # The longest known prefix wins: flash-lite is not flash, gpt-4o-mini is not gpt-4o.
        ("gemini-2.5-flash-lite-preview-06-17", (0.10, 0.40)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
        # The SDK's "models/" spelling and upper case still match.
        ("models/gemini-2.5-pro", (1.25, 10.00)),
        ("GPT-4o-mini", (0.15, 0.60)),
        # A prefix that does not end at a separator is another model, not a variant.
        ("gpt-4oo", None),
        ("llama-3.1-8b-instruct", None),
    ],
)
def test_price_table_lookup(model, expected):
    price = lookup(model)
    assert (None if price is None else (price.input_per_mtok, price.output_per_mtok)) == expected


@pytest.mark.parametrize(
    "model, given_in, given_out, expected",
    [
        # Both overrides win over the table.
        ("gemini-2.5-flash", 1.0, 2.0, (1.0, 2.0)),
        # One override: the other price still comes from the table.
        ("gemini-2.5-flash", 1.0, None, (1.0, 2.50)),
        ("gemini-2.5-flash", None, 9.0, (0.30, 9.0)),
        # An unknown model is fine when the config prices it fully.
        ("my-local-model", 0.0, 0.0, (0.0, 0.0)),
        # Nothing given: the table.
        ("gpt-4o-mini", None, None, (0.15, 0.60)),
    ],
)
def test_price_for_prefers_config_overrides(model, given_in, given_out, expected):
    cfg = TeacherConfig(model=model, price_input_per_mtok=given_in, price_output_per_mtok=given_out)
    price = price_for(cfg)
    assert (price.input_per_mtok, price.output_per_mtok) == expected


@pytest.mark.parametrize(
    "given_in, given_out, setting",
    [
        (None, None, "[teacher].price_input_per_mtok"),
        # Half an override for an unknown model names the half that is missing.
        (1.0, None, "[teacher].price_output_per_mtok"),
        (None, 1.0, "[teacher].price_input_per_mtok"),
    ],
)
def test_unknown_model_without_prices_is_a_config_error(given_in, given_out, setting):
    cfg = TeacherConfig(model="mystery-model", price_input_per_mtok=given_in, price_output_per_mtok=given_out)
    with pytest.raises(ConfigError) as caught:
        price_for(cfg)
    assert caught.value.setting == setting
    assert "mystery-model" in str(caught.value)
    assert "set [teacher].price_input_per_mtok and [teacher].price_output_per_mtok" in str(caught.value)


def test_cost_is_per_million_tokens():
    flash = PRICES["gemini-2.5-flash"]
    assert flash.cost(1_000_000, 0) == pytest.approx(0.30)
    assert flash.cost(0, 1_000_000) == pytest.approx(2.50)
    assert flash.cost(1000, 500) == pytest.approx(0.0003 + 0.00125)
    assert flash.cost(0, 0) == 0


@given(
    st.floats(0, 100), st.floats(0, 100), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7)
)
def test_cost_is_additive_and_never_negative(p_in, p_out, a, b, out):
    price = Price(p_in, p_out)
    assert price.cost(a, out) >= 0
    assert price.cost(a + b, out) == pytest.approx(price.cost(a, out) + price.cost(b, 0))
