"""The TCP listener's keys: stored hashed, checked on every TCP request, each key its own namespace; CORS."""

from __future__ import annotations

import asyncio
import json
import stat

import pytest
from click.testing import CliRunner

from appliance.cli import main
from appliance.errors import AthanorError
from appliance.server.api import namespace_for
from appliance.server.api_keys import (Cors, KeyAuth, KeyRecord, add_key, hash_key, parse_key_file, parse_keys,
                                      read_key_records, read_keys, remove_key, set_budget)
from appliance.server.http import HttpRequest, HttpResponse, Peer, json_response


def _request(remote: str | None, headers: dict | None = None, method: str = "POST") -> HttpRequest:
    peer = None if remote else Peer(1, 1000, 1000)
    return HttpRequest(method, "/v1/chat/completions", headers or {}, b"{}", peer, "r1", remote=remote)


async def _echo(request: HttpRequest) -> HttpResponse:
    return json_response(200, {"namespace": namespace_for(request)})


def _call(handler, request) -> HttpResponse:
    return asyncio.run(handler(request))


def test_keys_are_stored_hashed_and_readable_only_by_the_owner(tmp_path):
    path = tmp_path / "api-keys"
    key = add_key(path, "webui")
    assert key.startswith("athk-") and key not in path.read_text()
    assert read_keys(path) == {hash_key(key): "webui"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(AthanorError, match="exists"):
        add_key(path, "webui")
    with pytest.raises(AthanorError, match="1-64 letters"):
        add_key(path, "has space")
    remove_key(path, "webui")
    assert read_keys(path) == {}
    with pytest.raises(AthanorError, match="no key named"):
        remove_key(path, "webui")
    with pytest.raises(AthanorError, match="line 2 is not"):
        parse_keys("# comment\nname not-a-hash\n")


def test_tcp_requests_need_a_known_key_and_get_its_namespace(tmp_path):
    path = tmp_path / "api-keys"
    key = add_key(path, "phone")
    auth = KeyAuth(_echo, path)
    socket_side = _call(auth, _request(None))
    assert json.loads(socket_side.body) == {"namespace": "1000"}  # the socket is untouched
    for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}, {"authorization": "Bearer nope"}):
        refused = _call(auth, _request("10.0.0.5:5555", headers))
        assert refused.status == 401 and json.loads(refused.body)["error"]["code"] == "invalid_api_key"
        assert ("www-authenticate", 'Bearer realm="athanor"') in refused.headers
    ok = _call(auth, _request("10.0.0.5:5555", {"authorization": f"Bearer {key}"}))
    assert ok.status == 200 and json.loads(ok.body) == {"namespace": "key:phone"}
    # A key removed while the daemon runs stops working at the next request.
    remove_key(path, "phone")
    assert _call(auth, _request("10.0.0.5:5555", {"authorization": f"Bearer {key}"})).status == 401


def test_cors_only_for_listed_origins():
    cors = Cors(_echo, ["http://nas.local:3000"])
    preflight = _call(cors, _request("1.2.3.4:1", {"origin": "http://nas.local:3000"}, method="OPTIONS"))
    assert preflight.status == 204 and ("access-control-allow-origin", "http://nas.local:3000") in preflight.headers
    assert any(k == "access-control-allow-headers" and "authorization" in v for k, v in preflight.headers)
    answered = _call(cors, _request("1.2.3.4:1", {"origin": "http://nas.local:3000"}))
    assert ("access-control-allow-origin", "http://nas.local:3000") in answered.headers
    stranger = _call(cors, _request("1.2.3.4:1", {"origin": "http://evil.example"}))
    assert not any(k.startswith("access-control") for k, _ in stranger.headers)
    assert not any(k.startswith("access-control") for k, _ in _call(Cors(_echo, []), _request(
        "1.2.3.4:1", {"origin": "http://nas.local:3000"})).headers)


def test_keys_command_adds_lists_and_removes(tmp_path):
    runner = CliRunner()
    config = tmp_path / "athanor.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    added = runner.invoke(main, ["--config", str(config), "keys", "add", "laptop"])
    assert added.exit_code == 0, added.output
    key = added.output.splitlines()[0]
    assert read_keys(tmp_path / "api-keys") == {hash_key(key): "laptop"}
    assert runner.invoke(main, ["--config", str(config), "keys", "list"]).output == "laptop\n"
    assert runner.invoke(main, ["--config", str(config), "keys", "remove", "laptop"]).exit_code == 0
    gone = runner.invoke(main, ["--config", str(config), "keys", "remove", "laptop"])
    assert gone.exit_code != 0 and "no key named 'laptop'" in gone.output


def test_a_key_may_carry_a_daily_teacher_budget(tmp_path):
    path = tmp_path / "api-keys"
    key = add_key(path, "phone", daily_usd=0.25)
    add_key(path, "laptop")
    assert read_key_records(path) == {hash_key(key): KeyRecord("phone", 0.25),
                                      **{d: r for d, r in read_key_records(path).items() if r.name == "laptop"}}
    assert read_keys(path)[hash_key(key)] == "phone"
    set_budget(path, "phone", None)
    assert read_key_records(path)[hash_key(key)] == KeyRecord("phone", None)
    set_budget(path, "laptop", 2)
    assert {r.name: r.daily_usd for r in read_key_records(path).values()} == {"phone": None, "laptop": 2.0}
    with pytest.raises(AthanorError, match="no key named"):
        set_budget(path, "tablet", 1.0)
    with pytest.raises(AthanorError, match="0 or more"):
        add_key(path, "tablet", daily_usd=-1.0)
    with pytest.raises(AthanorError, match=r"line 1 is not `NAME SHA256-HEX \[daily_usd=X\]`"):
        parse_key_file(f"phone {'a' * 64} budget=3\n")
    # The key's budget travels with its requests, for the router to keep to.
    seen = []

    async def record(request: HttpRequest) -> HttpResponse:
        seen.append((request.client, request.client_budget_usd))
        return json_response(200, {})

    auth = KeyAuth(record, path)
    _call(auth, _request("10.0.0.5:5555", {"authorization": f"Bearer {key}"}))
    assert seen == [("key:phone", None)]
    set_budget(path, "phone", 0.5)
    _call(auth, _request("10.0.0.5:5555", {"authorization": f"Bearer {key}"}))
    assert seen[-1] == ("key:phone", 0.5)


def test_keys_command_sets_budgets(tmp_path):
    runner = CliRunner()
    config = tmp_path / "athanor.toml"
    config.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    env = {"ATHANOR_HOME": str(tmp_path)}
    added = runner.invoke(main, ["--config", str(config), "keys", "add", "phone", "--daily-budget", "0.5"], env=env)
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["--config", str(config), "keys", "list", "--json"], env=env)
    assert json.loads(listed.stdout) == [{"name": "phone", "daily_budget_usd": 0.5, "spent_today_usd": None}]
    assert "daily budget $0.5" in runner.invoke(main, ["--config", str(config), "keys", "list"], env=env).output
    assert runner.invoke(main, ["--config", str(config), "keys", "budget", "phone", "none"], env=env).exit_code == 0
    assert runner.invoke(main, ["--config", str(config), "keys", "list"], env=env).output == "phone\n"
    bad = runner.invoke(main, ["--config", str(config), "keys", "budget", "phone", "lots"], env=env)
    assert bad.exit_code != 0 and "give USD" in bad.output
