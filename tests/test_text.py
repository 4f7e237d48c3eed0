import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.engine.text import StopMatcher, TextAssembler, Utf8Stream
from appliance.engine.types import TokenEvent


def tok(data: bytes) -> TokenEvent:
    return TokenEvent(token_id=0, text=data.decode(errors="replace"), logprob=-0.1, raw=data)


def test_utf8_character_split_across_tokens_is_released_whole():
    stream = Utf8Stream()
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:2]) == ""
    assert stream.feed(euro[2:] + b"!") == "€!"


def test_utf8_invalid_bytes_become_replacement_not_an_error():
    stream = Utf8Stream()
    assert stream.feed(b"a\xff") == "a\ufffd"
    assert stream.feed(b"\xe2\x82") == ""
    assert stream.flush() == ""  # a character the answer's end cut short is dropped, not a U+FFFD
    assert stream.feed("好".encode()) == "好"  # and leaves nothing behind


@pytest.mark.parametrize(
    "stops, chunks, emitted, stopped",
    [
        # No stops: everything passes straight through.
        ((), ["ab", "cd"], "abcd", False),
        # The stop sequence and what follows it are never emitted.
        (("\n\n",), ["one\n", "\ntwo"], "one", True),
        # A partial match is held back, then released when it turns out not to be a stop.
        (("END",), ["EN", "D?"], "", True),
        (("END",), ["EN", "x"], "ENx", False),
        # The earliest of several stops wins.
        (("b", "a"), ["xab"], "x", True),
        # A prefix left at the very end is flushed when generation ends.
        (("STOP",), ["hello ST"], "hello ST", False),
    ],
)
def test_stop_matcher(stops, chunks, emitted, stopped):
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(c)[0] for c in chunks)
    out += matcher.flush()
    assert out == emitted
    assert matcher.stopped is stopped


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="abc\n€", max_size=40),
    stop=st.text(alphabet="abc\n", min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
)
def test_assembler_output_is_the_text_cut_at_the_first_stop_however_it_is_chunked(text, stop, cuts):
    data = text.encode()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    assembler = TextAssembler((stop,))
    streamed = ""
    for start, end in zip(bounds, bounds[1:]):
        streamed += assembler.feed(tok(data[start:end])).text
        if assembler.stopped:
            break
    streamed += assembler.finish().text
    expected = text.split(stop, 1)[0]
    assert streamed == expected == assembler.text
    assert assembler.stopped == (stop in text)
