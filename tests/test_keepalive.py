"""SSE keep-alive comments while a streamed answer is silent."""

from __future__ import annotations

import asyncio

from appliance.server.keepalive import KEEPALIVE, with_keepalive


async def _source(gaps: list[float], closed: list[bool]):
    try:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield f"data: {i}\n\n".encode()
    finally:
        closed.append(True)


def test_comments_fill_the_silences_and_data_keeps_its_order():
    closed: list[bool] = []

    async def run():
        return [chunk async for chunk in with_keepalive(_source([0.0, 0.35, 0.0, 0.35], closed), 0.1)]

    out = asyncio.run(run())
    data = [c for c in out if c != KEEPALIVE]
    assert data == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    assert out[0] == b"data: 0\n\n" and out.count(KEEPALIVE) >= 4  # about 3 in each 0.35 s gap
    assert out.index(b"data: 2\n\n") == out.index(b"data: 1\n\n") + 1  # no comment where nothing was silent
    assert closed == [True]


def test_a_fast_stream_gets_no_comments():
    async def run():
        return [chunk async for chunk in with_keepalive(_source([0.0] * 20, []), 0.5)]

    assert KEEPALIVE not in asyncio.run(run())


def test_closing_mid_silence_closes_the_source():
    closed: list[bool] = []

    async def run():
        stream = with_keepalive(_source([0.0, 10.0], closed), 0.05)
        assert await stream.__anext__() == b"data: 0\n\n"
        assert await stream.__anext__() == KEEPALIVE
        await stream.aclose()  # the client left while the source waits

    asyncio.run(asyncio.wait_for(run(), 5))
    assert closed == [True]


def test_an_error_in_the_source_reaches_the_reader():
    async def failing():
        yield b"data: 0\n\n"
        raise RuntimeError("teacher exploded")

    async def run():
        return [chunk async for chunk in with_keepalive(failing(), 0.1)]

    try:
        asyncio.run(run())
    except RuntimeError as exc:
        assert "exploded" in str(exc)
    else:
        raise AssertionError("the source's error was swallowed")
