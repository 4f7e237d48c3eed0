import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.server.api import to_chat_request
from appliance.server.errors import ApiError
from appliance.server.openai_schema import parse_chat_request

USER = [{"role": "user", "content": "hi"}]


def body(**fields) -> bytes:
    return json.dumps({"messages": USER, **fields}).encode()


def test_a_minimal_request_gets_openai_defaults():
    request = parse_chat_request(body())
    chat = to_chat_request(request, default_max_tokens=77)
    assert chat.params.max_tokens == 77 and not chat.max_tokens_given
    assert chat.params.temperature == 1.0 and chat.params.top_p == 1.0
    assert chat.messages == [{"role": "user", "content": "hi"}]


def test_parameters_reach_sampling():
    request = parse_chat_request(body(max_tokens=5, temperature=0, top_p=0.5, seed=3, stop="x", logprobs=True,
                                      top_logprobs=4, model="m", frequency_penalty=0.5, presence_penalty=-1,
                                      logit_bias={"50": -100, "7": 2.5}))
    chat = to_chat_request(request, default_max_tokens=77)
    assert chat.params.max_tokens == 5 and chat.max_tokens_given
    assert (chat.params.temperature, chat.params.top_p, chat.params.seed) == (0, 0.5, 3)
    assert chat.params.stop == ("x",) and chat.params.top_logprobs == 4 and chat.model == "m"
    assert (chat.params.frequency_penalty, chat.params.presence_penalty) == (0.5, -1.0)
    assert chat.params.logit_bias == ((7, 2.5), (50, -100.0))


def test_penalties_and_bias_default_to_none_and_are_part_of_the_cache_key():
    from dataclasses import replace

    from appliance.routing.router import params_key

    params = to_chat_request(parse_chat_request(body()), 16).params
    assert (params.frequency_penalty, params.presence_penalty, params.logit_bias) == (0.0, 0.0, ())
    # Unset, they leave the key as it was before they existed: entries cached then still match.
    assert params_key(params) == '{"t":1.0,"p":1.0,"max":16,"stop":[],"seed":null}'
    keys = {params_key(params), params_key(replace(params, frequency_penalty=0.5)),
            params_key(replace(params, presence_penalty=0.5)), params_key(replace(params, logit_bias=((5, -100.0),))),
            params_key(replace(params, logit_bias=((6, -100.0),))), params_key(replace(params, logit_bias=((5, 1.0),)))}
    assert len(keys) == 6
    # JSON mode is part of what a hit must match: text, any object and each schema are different answers.
    from appliance.engine.types import JsonFormat

    formats = {params_key(params), params_key(replace(params, json_format=JsonFormat())),
               params_key(replace(params, json_format=JsonFormat('{"type": "object"}'))),
               params_key(replace(params, json_format=JsonFormat('{"type": "array"}')))}
    assert len(formats) == 4


def test_content_parts_and_developer_role_are_understood():
    request = parse_chat_request(json.dumps({"messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]}).encode())
    assert request.chat() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]


def test_top_logprobs_are_only_sent_when_logprobs_are_asked_for():
    assert to_chat_request(parse_chat_request(body(logprobs=False)), 10).params.top_logprobs == 0


@pytest.mark.parametrize(
    "raw, param, words",
    [
        (b"", None, "empty"),
        (b"{bad", None, "invalid JSON"),
        (b"\xff\xfe{}", None, "UTF-8"),
        (b"[1, 2]", None, "JSON object"),
        (b"[" * 100 + b"]" * 100, None, "nested deeper"),
        (b"[" * 100000 + b"]" * 100000, None, "nested deeper"),  # deeper than Python's recursion limit
        (json.dumps({"messages": []}).encode(), "messages", "at least 1"),
        (json.dumps({}).encode(), "messages", "required"),
        (json.dumps({"messages": "hi"}).encode(), "messages", "valid list"),
        (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "messages.0.role", "'user'"),
        (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}).encode(), None, "at least one user"),
        (body(max_tokens="5"), "max_tokens", "valid integer"),  # strict: no silent string coercion
        (body(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (body(max_tokens=-3), "max_tokens", "greater than or equal to 1"),
        (body(temperature=9), "temperature", "less than or equal to 2"),
        (body(temperature=-1), "temperature", "greater than or equal to 0"),
        (body(top_p=0), "top_p", "greater than 0"),
        (body(n=3), "n", "only 1"),
        (body(stop=["a", "b", "c", "d", "e"]), None, "at most 4"),
        (body(top_logprobs=3), None, "needs logprobs"),
        (body(top_logprobs=50, logprobs=True), "top_logprobs", "less than or equal to 20"),
        (body(stream="yes"), "stream", "valid boolean"),
        (body(seed=2**70), "seed", "less than"),
        (body(frequency_penalty=2.5), "frequency_penalty", "less than or equal to 2"),
        (body(frequency_penalty="high"), "frequency_penalty", "valid number"),
        (body(presence_penalty=-3), "presence_penalty", "greater than or equal to -2"),
        (body(logit_bias={"5": -101}), "logit_bias.5", "greater than or equal to -100"),
        (body(logit_bias={"5": 100.5}), "logit_bias.5", "less than or equal to 100"),
        (body(logit_bias={"5": "ban"}), "logit_bias.5", "valid number"),
        (body(logit_bias={"hello": -100}), "logit_bias", "not a token id"),
        (body(logit_bias={"-1": -100}), "logit_bias", "not a token id"),
        (body(logit_bias={"99999999999": 1}), "logit_bias", "not a token id"),
        (body(logit_bias={str(i): 1 for i in range(1025)}), "logit_bias", "at most 1024"),
        (body(logit_bias=[5]), "logit_bias", "valid dictionary"),
        (body(response_format={"type": "xml"}), "response_format.type", "'text', 'json_object' or 'json_schema'"),
        (body(response_format={"type": "json_schema"}), "response_format", 'goes with type "json_schema"'),
        (body(response_format={"type": "text", "json_schema": {"name": "x"}}), "response_format",
         'goes with type "json_schema"'),
        (body(response_format={"type": "json_schema", "json_schema": {"name": "bad name!"}}),
         "response_format.json_schema.name", "pattern"),
        (body(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}),
         "response_format", "cannot be turned into a grammar"),
        (body(stream_options={"include_usage": True, "extra": 1}), "stream_options.extra", "unknown parameter"),
        (body(user=5), "user", "valid string"),
        (body(metadata={"k": 5}), "metadata.k", "valid string"),
    ],
)
def test_bad_requests_are_400_with_the_parameter(raw, param, words):
    with pytest.raises(ApiError) as raised:
        parse_chat_request(raw)
    assert raised.value.status == 400
    assert raised.value.param == param
    assert words in raised.value.message


def refusal(**fields) -> ApiError:
    with pytest.raises(ApiError) as raised:
        parse_chat_request(body(**fields))
    assert raised.value.status == 400
    return raised.value


@pytest.mark.parametrize("field", ["some_future_field", "temprature", "top_k", "min_p", "repeat_penalty"])
def test_an_unknown_field_is_a_400_naming_it_and_what_is_supported(field):
    error = refusal(**{field: 1})
    assert error.param == field and error.code == "unknown_parameter"
    assert error.message.startswith(f"{field}: unknown parameter")
    assert "supported: model, messages" in error.message and "frequency_penalty" in error.message
    assert error.body()["error"] == {"message": error.message, "type": "invalid_request_error", "param": field,
                                     "code": "unknown_parameter"}


@pytest.mark.parametrize("field, value, words", [
    ("functions", [{"name": "f"}], "send tools and tool_choice"),
    ("function_call", "auto", "send tools and tool_choice"),
    ("audio", {"voice": "alloy", "format": "mp3"}, "text only"),
    ("prediction", {"type": "content", "content": "x"}, "predicted outputs"),
    ("web_search_options", {"search_context_size": "low"}, "web search"),
    ("reasoning_effort", "high", "reasoning"),
    ("verbosity", "low", "verbosity"),
])
def test_a_known_but_unsupported_field_is_a_400_saying_so(field, value, words):
    error = refusal(**{field: value})
    assert error.param == field and error.code == "unsupported_parameter"
    assert f"{field}: not supported (" in error.message and words in error.message
    assert "supported: model, messages" in error.message


@pytest.mark.parametrize("field, value, words", [
    ("n", 2, "only 1"),
    ("n", 128, "only 1"),
    ("store", True, "no retrievable copy"),
    ("service_tier", "priority", "one tier"),
    ("modalities", ["text", "audio"], '["text"]'),
])
def test_an_unsupported_value_is_a_400_saying_what_is_supported(field, value, words):
    error = refusal(**{field: value})
    assert error.param == field and error.code == "unsupported_value"
    assert words in error.message


def test_harmless_fields_and_supported_values_are_accepted():
    request = parse_chat_request(body(
        n=1, response_format={"type": "text"}, user="u-1", safety_identifier="s", metadata={"team": "a"}, store=False,
        prompt_cache_key="k", parallel_tool_calls=False, service_tier="auto", modalities=["text"],
        stream=True, stream_options={"include_usage": True, "include_obfuscation": False},
    ))
    assert request.n == 1 and request.stream_options.include_usage


def test_a_null_or_empty_unsupported_field_carries_nothing_and_is_accepted():
    # What clients serialize for "not set"; nothing would be dropped.
    assert parse_chat_request(body(tools=None, tool_choice=None, functions=[], audio=None, store=None,
                                   response_format=None, logit_bias=None))
    # An assistant message echoed back whole from an OpenAI answer.
    echoed = {"role": "assistant", "content": "hi", "refusal": None, "tool_calls": None, "function_call": None,
              "audio": None, "annotations": []}
    request = parse_chat_request(json.dumps({"messages": [*USER, echoed, *USER]}).encode())
    assert request.chat()[1] == {"role": "assistant", "content": "hi"}


@pytest.mark.parametrize("field, value, code, words", [
    ("name", "alice", "unsupported_parameter", "participant name"),
    ("refusal", "I cannot", "unsupported_parameter", "put the text in content"),
    ("weight", 1, "unknown_parameter", "takes role and content"),
])
def test_a_message_field_not_acted_on_is_a_400_naming_it(field, value, code, words):
    message = {"role": "user", "content": "hi", field: value}
    with pytest.raises(ApiError) as raised:
        parse_chat_request(json.dumps({"messages": [{"role": "system", "content": "s"}, message]}).encode())
    assert raised.value.param == f"messages.1.{field}" and raised.value.code == code
    assert words in raised.value.message


def test_a_text_part_with_an_extra_field_is_a_400():
    content = [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]
    with pytest.raises(ApiError) as raised:
        parse_chat_request(json.dumps({"messages": [{"role": "user", "content": content}]}).encode())
    assert raised.value.param == "messages.0.content.0.cache_control" and raised.value.code == "unknown_parameter"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
fields = st.fixed_dictionaries({}, optional={
    "messages": st.lists(st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(["user", "x"]),
                                                             "content": json_values}), max_size=3) | json_values,
    "max_tokens": json_values, "temperature": json_values, "top_p": json_values, "stop": json_values,
    "seed": json_values, "stream": json_values, "logprobs": json_values, "top_logprobs": json_values,
    "model": json_values, "n": json_values, "frequency_penalty": json_values, "presence_penalty": json_values,
    "logit_bias": json_values | st.dictionaries(st.sampled_from(["0", "5", "x", "-1"]), json_values, max_size=3),
    "response_format": json_values | st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "x"])}),
    "tools": json_values, "user": json_values, "store": json_values, "service_tier": json_values,
    "modalities": json_values, "unknown": json_values,
})


@settings(max_examples=400, deadline=None)
@given(fields)
def test_any_json_either_validates_or_is_a_400(data):
    try:
        request = parse_chat_request(json.dumps(data).encode())
    except ApiError as exc:
        assert exc.status == 400 and exc.message
        return
    to_chat_request(request, 16)  # a valid request always converts


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_either_parse_or_are_a_400(raw):
    try:
        parse_chat_request(raw)
    except ApiError as exc:
        assert exc.status == 400


def test_fast_content_chunks_equal_the_general_chunk_shape():
    from appliance.server.openai_schema import ChunkWriter, chunk_body

    writer = ChunkWriter("chatcmpl-1", "m", {"route": "student"}, created=5)
    for text in ["plain", 'quote " and \\ backslash', "ünïcødé ☃", "\n", "\u0000 nul"]:
        fast = json.loads(writer.content(text).decode().removeprefix("data: "))
        assert fast == chunk_body("chatcmpl-1", "m", 5, {"content": text}, extra={"route": "student"})


def test_response_format_becomes_the_engines_json_constraint():
    from appliance.server.api import to_chat_request

    schema = {"type": "object", "properties": {"label": {"enum": ["positive", "negative"]}}, "required": ["label"]}
    plain = to_chat_request(parse_chat_request(body()), 16)
    assert plain.params.json_format is None
    anything = to_chat_request(parse_chat_request(body(response_format={"type": "json_object"})), 16)
    assert anything.params.json_format is not None and anything.params.json_format.schema is None
    held = to_chat_request(parse_chat_request(body(response_format={
        "type": "json_schema", "json_schema": {"name": "sentiment", "schema": schema, "strict": True}})), 16)
    assert held.params.json_format.name == "sentiment"
    assert json.loads(held.params.json_format.schema) == schema
    assert 'positive' in held.params.json_format.grammar() and 'label-kv' in held.params.json_format.grammar()


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_tools_are_offered_in_a_system_turn_and_a_required_call_is_held_by_its_schema():
    from appliance.server.api import to_chat_request

    offered = parse_chat_request(body(messages=[{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Weather in Oslo?"}], tools=[WEATHER]))
    assert offered.tool_mode == "auto" and offered.output_format() is None
    chat = offered.chat()
    assert [m["role"] for m in chat] == ["system", "user"]  # folded into the one system turn
    assert chat[0]["content"].startswith("Be brief.\n\nYou can call these functions:") and "get_weather" in chat[0]["content"]
    request = to_chat_request(offered, 16)
    assert not request.cache_read and not request.cache_write  # a call acts on the world as it is now
    required = parse_chat_request(body(tools=[WEATHER, TIME], tool_choice="required"))
    schema = json.loads(required.output_format().schema)
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == ["get_weather", "get_time"]
    named = parse_chat_request(body(tools=[WEATHER, TIME], tool_choice={"type": "function",
                                                                        "function": {"name": "get_time"}}))
    assert json.loads(named.output_format().schema)["properties"]["name"]["const"] == "get_time"
    assert "Call the function get_time now." in named.chat()[0]["content"]
    assert parse_chat_request(body(tools=[WEATHER], tool_choice="none")).chat() == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("extra, words", [
    ({"tool_choice": "required"}, "needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "same name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "cannot both hold"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "pattern"),
])
def test_tool_requests_that_cannot_be_honoured_are_400(extra, words):
    with pytest.raises(ApiError) as raised:
        parse_chat_request(body(**extra))
    assert words in raised.value.message


def test_a_call_parses_only_as_a_call_of_an_offered_function_and_history_calls_round_trip():
    from appliance.server.tools import FunctionSpec, parse_call

    functions = [FunctionSpec("get_weather", None, None)]
    call = parse_call('{"name": "get_weather", "arguments": {"city": "奥斯陆"}}', functions)
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "奥斯陆"}
    assert call.id.startswith("call_")
    assert parse_call('```json\n{"name": "get_weather", "arguments": {}}\n```', functions) is not None
    for words in ("It is sunny.", '{"name": "other", "arguments": {}}', '{"name": "get_weather"}', "[1, 2]"):
        assert parse_call(words, functions) is None
    history = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}
    result = {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"}
    request = parse_chat_request(json.dumps({"messages": [*USER, history, result], "tools": [WEATHER]}).encode())
    assert request.chat()[2] == {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'}
    assert request.chat()[3] == {"role": "tool", "content": "12 C, rain"}
