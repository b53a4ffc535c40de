"""Admission and shutdown at the connection level, through a real in-process server (a slow stand-in engine,
no model): every connection counts against --max-streams from its handshake, SIGTERM's drain reaches
connections still opening and closes the rest all at once, the inbox bound holds for empty frames, and the
idle clock stops while the server owes the client a final.

No test here bounds wall-clock time: each waits for the state it needs (`until`), and `WAIT_S` only turns a
hang into a failure."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import websockets

from client.kit.local_server import free_port
from client.kit.speech import load_audio, to_pcm16
from client.protocol import metadata
from whisper_stream.dsp.vad import FRAME
from whisper_stream.engines.interface import Engine, Segment, TranscribeResult
from whisper_stream.engines.null import NullEngine
from whisper_stream.serving.driver import MESSAGE_OVERHEAD_BYTES
from whisper_stream.serving.runtime import Runtime
from whisper_stream.serving.server import WebsocketTransport, build_runtime, start_server
from whisper_stream.settings import ServerSettings

WAIT_S = 30.0  # how long a test waits for a state before it fails: a guard against hangs, not a speed bound


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Wait until `condition()` holds (checked every 10 ms; it may be a coroutine); fail, saying `what`,
    after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not await _value(condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S:g} s: {what}")
        await asyncio.sleep(0.01)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


class SlowEngine(NullEngine):
    """Answers "hello" after `delay_s`: finals stay in flight as long as a test needs."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.release = asyncio.Event()  # set at the end of a test: nothing waits for the rest of a delay

    async def transcribe(self, requests):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.release.wait(), self.delay_s)
        seg = Segment(0.0, 1.0, " hello", -0.1, no_speech_prob=0.01, compression_ratio=1.0)
        return [TranscribeResult(segments=(seg,), language="en", language_prob=None) for _ in requests]


@contextlib.asynccontextmanager
async def served_engine(
    engine: Engine, limits: dict | None = None, **settings
) -> AsyncIterator[tuple[str, Runtime]]:
    """A real server in this process on `engine`; `limits` overrides `Limits` fields no setting reaches."""
    s = ServerSettings(host="127.0.0.1", port=free_port(), engine="null", **settings)
    runtime = build_runtime(s, engine)
    runtime.limits = dataclasses.replace(runtime.limits, **(limits or {}))
    server = await start_server(s, runtime)
    try:
        yield f"ws://127.0.0.1:{s.port}/v1/websocket", runtime
    finally:
        server.close()
        await server.wait_closed()
        await runtime.scheduler.stop()


@contextlib.asynccontextmanager
async def served(
    delay_s: float, limits: dict | None = None, **settings
) -> AsyncIterator[tuple[str, Runtime]]:
    """A real server on the stand-in engine answering after `delay_s`."""
    engine = SlowEngine(delay_s)
    async with served_engine(engine, limits, **settings) as served_at:
        try:
            yield served_at
        finally:
            engine.release.set()  # before the server stops: nothing waits for the rest of a delay


def plain_finals() -> dict:
    meta = metadata()
    meta["streaming_params"]["speculative_finals"] = False
    return meta


async def test_connections_still_opening_count_against_max_streams():
    async with served(0.1, max_streams=2) as (url, runtime):
        opening = [await websockets.connect(url) for _ in range(2)]  # no metadata yet
        third = await websockets.connect(url)
        error = json.loads(await asyncio.wait_for(third.recv(), 5))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(third.recv(), 5)
        assert third.close_code == 1013 and "limit of 2 streams" in error["body"]["message"]
        assert runtime.active == 2
        for ws in opening:
            await ws.close()


async def test_drain_closes_opening_connections_and_then_all_streams_at_once(speech, monkeypatch):
    """Finals the engine never answers (it would take 600 s): after drain_timeout_s the streams are closed,
    and their peers, which never answer a close frame, are waited for together (was: one after another,
    close_timeout_s each). Ignoring drain_timeout_s would hang until `until`'s guard fails."""
    closes: list[tuple[str, object]] = []
    close = WebsocketTransport.close

    async def spy(self, code: int, reason: str) -> None:
        closes.append(("start", self))
        await close(self, code, reason)
        closes.append(("end", self))

    monkeypatch.setattr(WebsocketTransport, "close", spy)
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    async with served(600.0, drain_timeout_s=1) as (url, runtime):
        streams = []
        for _ in range(3):
            ws = await websockets.connect(url, max_size=None)
            await ws.send(json.dumps(metadata()))
            await ws.send(pcm)
            streams.append(ws)
        opening = await websockets.connect(url)
        sent_s = len(pcm) // 2 // FRAME * FRAME / 16000  # in whole VAD frames: a partial frame waits
        await until(
            lambda: (
                len(runtime.opening) == 1
                and len(runtime.streams) == 3
                and all(s.protocol.sessions[0].received_s == sent_s for s in runtime.streams)
            ),
            "3 streams with their audio and 1 connection opening",
        )
        transports = {s.transport for s in runtime.streams}
        for ws in streams:
            ws.transport.pause_reading()  # gone without a word: no close frame comes back
        await asyncio.wait_for(runtime.drain(), WAIT_S)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(opening.recv(), 5)
        assert opening.close_code == 1001
        order = [event for event, transport in closes if transport in transports]
        assert order == ["start"] * 3 + ["end"] * 3, order  # every close began before any ended
        for ws in streams:
            ws.transport.abort()


async def test_a_flood_of_empty_frames_is_held_by_the_inbox_bound(speech):
    """Four finals unanswered: audio is not taken, and empty frames count too, so the reader stops."""
    utterance = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    async with served(600.0) as (url, runtime):
        ws = await websockets.connect(url, max_size=None)
        await ws.send(json.dumps(plain_finals()))
        for _ in range(5):
            await ws.send(utterance)
        await until(lambda: len(runtime.streams) == 1, "the stream")
        (stream,) = runtime.streams
        await until(lambda: stream._finals_in_flight() == 4, "4 finals in flight")
        assert stream._space.is_set()  # the fifth utterance alone is far under the bound: still reading
        bound = runtime.limits.max_frame_bytes // MESSAGE_OVERHEAD_BYTES + 1
        for _ in range(20):  # 40,000 frames, about 5 times the bound
            for _ in range(2000):  # raw masked empty binary frames: no client-side pacing
                ws.transport.write(b"\x82\x80\x00\x00\x00\x00")
            await asyncio.sleep(0.05)
        await until(lambda: not stream._space.is_set(), "the reader stopped")  # never, were they not counted
        assert stream._finals_in_flight() == 4
        assert len(stream._inbox) <= bound
        ws.transport.abort()


async def test_the_idle_clock_stops_while_a_flushed_final_is_decoded(speech):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    async with served(3.0, idle_timeout_s=1) as (url, _):
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps(metadata()))
            await ws.send(pcm[: len(pcm) // 2])  # mid-utterance
            await ws.send(json.dumps({"type": "finalize"}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["type"] == "transcription" and reply["is_final"], reply
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))  # idle counts again from the final
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1008 and "no audio or control message" in error["body"]["message"]


async def test_a_drain_keeps_every_sample_received_and_says_nothing_per_frame(speech):
    """SIGTERM while a client is held back by the finals cap: the audio already received (applied, queued
    in the inbox or in the front end) all goes into the last final; then 1001, and no error per frame."""
    utterance = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    async with served(2.0, drain_timeout_s=30) as (url, runtime):
        ws = await websockets.connect(url, max_size=None)
        await ws.send(json.dumps(plain_finals()))
        received: list[dict] = []

        async def send() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                data = utterance * 8
                for i in range(0, len(data), 1024):
                    await ws.send(data[i : i + 1024])

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    received.append(json.loads(raw))

        sender, reader = asyncio.create_task(send()), asyncio.create_task(read())
        for _ in range(200):  # until the finals cap holds a few seconds of audio back in the inbox
            stream = next(iter(runtime.streams), None)
            if stream is not None and stream._finals_in_flight() >= 4 and len(stream._inbox) > 100:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the client was never held back by the finals cap")
        (session,) = stream.protocol.sessions
        queued = sum(len(m) for m in stream._inbox if isinstance(m, bytes)) + stream._frontend_bytes
        expected_s = session.received_s + queued / 32000
        assert queued / 32000 > 3.0  # more than the last pause: a drain that dropped it would show
        await runtime.drain()
        await asyncio.wait_for(reader, 10)
        sender.cancel()
    finals = [m for m in received if m.get("type") == "transcription" and m["is_final"]]
    last = finals[-1]
    last_end = last["segments"][0]["start_time"] + last["audio_length_sec"]
    assert session.received_s == pytest.approx(expected_s, abs=0.033)  # nothing received was dropped
    # the last final ends where the speech received ends: at most a pause (1 s) and the endpoint before it
    assert expected_s - 1.4 <= last_end <= expected_s + 0.05
    assert [m for m in received if m.get("type") == "error"] == []
    assert ws.close_code == 1001


async def test_a_multichannel_stream_holds_one_stream_slot_per_channel():
    """Deepgram's `multichannel=true&channels=N` runs N sessions: it counts N against --max-streams and the
    per-client limit (it counted 1, so 8-channel streams held 8x the engine time a slot stands for)."""
    async with served(0.05, max_streams=4, max_streams_per_client=4) as (url, runtime):
        listen = url.replace(
            "/v1/websocket", "/v1/listen?encoding=linear16&sample_rate=16000&multichannel=true"
        )
        async with websockets.connect(f"{listen}&channels=3"):
            await until(lambda: runtime.active == 3, "a 3-channel stream holding 3 slots")
            refused = await websockets.connect(f"{listen}&channels=2")  # 3 + 2 > 4
            error = json.loads(await asyncio.wait_for(refused.recv(), WAIT_S))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(refused.recv(), WAIT_S)
            assert error["type"] == "Error" and "each channel counts" in error["description"]
            assert refused.close_code == 1013
            async with websockets.connect(url) as one:  # one more session fits: 3 + 1 = 4
                await one.send(json.dumps(metadata()))
                await until(lambda: runtime.active == 4, "a fourth session admitted")
        await until(lambda: runtime.active == 0 and not runtime.per_client, "every slot given back")
