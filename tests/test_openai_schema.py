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
                                      top_logprobs=4, model="m"))
    chat = to_chat_request(request, default_max_tokens=77)
    assert chat.params.max_tokens == 5 and chat.max_tokens_given
    assert (chat.params.temperature, chat.params.top_p, chat.params.seed) == (0, 0.5, 3)
    assert chat.params.stop == ("x",) and chat.params.top_logprobs == 4 and chat.model == "m"


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
        (body(n=3), "n", "less than or equal to 1"),
        (body(stop=["a", "b", "c", "d", "e"]), None, "at most 4"),
        (body(top_logprobs=3), None, "needs logprobs"),
        (body(top_logprobs=50, logprobs=True), "top_logprobs", "less than or equal to 20"),
        (body(stream="yes"), "stream", "valid boolean"),
        (body(seed=2**70), "seed", "less than"),
    ],
)
def test_bad_requests_are_400_with_the_parameter(raw, param, words):
    with pytest.raises(ApiError) as raised:
        parse_chat_request(raw)
    assert raised.value.status == 400
    assert raised.value.param == param
    assert words in raised.value.message


def test_unknown_fields_are_ignored_for_compatibility():
    assert parse_chat_request(body(frequency_penalty=0.1, some_future_field={"x": 1})).messages[0].role == "user"


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
    "model": json_values, "n": json_values,
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
