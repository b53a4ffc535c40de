"""The stream driver's audio fast path, through a real in-process server with real Silero (a stand-in engine
answers "hello"): paced audio never wakes the stream's loop message by message, streams sending 20 ms frames
keep up, a control message sent right after audio sees all of it, an engine result is delivered while audio
keeps streaming, a bug in one stream's audio path fails that stream only, and audio sent as OpenAI's text
events counts as audio for the idle clock."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time

import numpy as np
import pytest
import websockets

from client.kit.speech import load_audio, to_pcm16
from client.protocol import metadata
from tests.integration.test_admission_and_drain import served as served_by_stand_in
from whisper_stream import driver
from whisper_stream.core.session import Session
from whisper_stream.frontend import FrontEnd
from whisper_stream.protocols.baseten import BasetenProtocol

FRAME_BYTES = 1024  # 32 ms of 16 kHz s16le


def served(**limits: float):
    """The stand-in engine answering after 50 ms; `limits` overrides `Limits` fields."""
    return served_by_stand_in(0.05, limits)


@pytest.fixture
def handled(monkeypatch) -> list[str | bytes]:
    """Messages the stream's loop applied itself (not through the fast path)."""
    seen: list[str | bytes] = []
    original = driver.StreamLoop._handle

    def spy(self, message):
        seen.append(message)
        return original(self, message)

    monkeypatch.setattr(driver.StreamLoop, "_handle", spy)
    return seen


async def test_paced_audio_skips_the_loop_and_its_final_still_comes(speech, handled):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
    async with served() as (url, _), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(0.008)  # 4x real time
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "transcription" and reply["is_final"] and reply["segments"][0]["text"], reply
    binary = [m for m in handled if isinstance(m, bytes)]
    assert len(binary) < len(frames) // 10, (len(binary), len(frames))


async def test_a_control_message_sees_all_audio_sent_before_it(speech, handled, monkeypatch):
    """The front end is slowed down so that the control message arrives while audio is still in it."""
    process = FrontEnd._process

    def slow(self, tickets):
        time.sleep(0.05)
        return process(self, tickets)

    monkeypatch.setattr(FrontEnd, "_process", slow)
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    audio = pcm[: len(pcm) // 2 // FRAME_BYTES * FRAME_BYTES]  # mid-utterance
    async with served() as (url, runtime), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))
        for i in range(0, len(audio), FRAME_BYTES):
            await ws.send(audio[i : i + FRAME_BYTES])  # unpaced: much of it is still in the front end
        await ws.send(json.dumps({"type": "finalize"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        (stream,) = runtime.streams
        received = stream.protocol.sessions[0].received_s
    assert reply["type"] == "transcription" and reply["is_final"], reply
    sent_s = len(audio) / 2 / 16000
    assert received == pytest.approx(sent_s)
    window_end = reply["segments"][0]["start_time"] + reply["audio_length_sec"]
    assert window_end == pytest.approx(sent_s, abs=0.002)  # the final covers every frame sent before it
    assert handled[-1] == json.dumps({"type": "finalize"})


async def test_a_final_is_delivered_while_audio_keeps_streaming(speech):
    """Two utterances sent back to back in real time: the first's final arrives before the audio ends."""
    one = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    pcm = one + one
    async with served() as (url, _), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))
        first_final_at = None
        for n, i in enumerate(range(0, len(pcm), FRAME_BYTES)):
            await ws.send(pcm[i : i + FRAME_BYTES])
            await asyncio.sleep(0.016)  # 2x real time
            with contextlib.suppress(TimeoutError):
                reply = json.loads(await asyncio.wait_for(ws.recv(), 0.001))
                if reply.get("is_final") and first_final_at is None:
                    first_final_at = n * FRAME_BYTES
    assert first_final_at is not None and first_final_at < len(pcm) - len(one) // 2, first_final_at


async def test_streams_sending_20_ms_frames_keep_up(speech):
    """Half of such frames complete no 32 ms VAD frame; while a batch runs, a stream's next frames gather."""
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))[: 16000 * 2 * 6]
    step = 640  # 20 ms
    async with served() as (url, runtime):
        clients = [await websockets.connect(url) for _ in range(4)]
        for ws in clients:
            await ws.send(json.dumps(metadata()))
        started = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), step)):
            for ws in clients:
                await ws.send(pcm[i : i + step])
            await asyncio.sleep(max(0.0, started + (k + 1) * 0.02 - time.monotonic()))
        await asyncio.sleep(0.1)
        behind = [len(pcm) / 32000 - s.protocol.sessions[0].received_s for s in runtime.streams]
        for ws in clients:
            await ws.close()
    assert len(behind) == 4 and max(behind) < 0.25, behind  # was 0.3 s behind after 6 s, and growing


async def test_a_bug_in_one_streams_audio_path_fails_that_stream_only(speech, monkeypatch):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    original = Session.on_frames

    def on_frames(self, frames, probs):
        if self.stream_id == "doomed" and len(frames):
            raise RuntimeError("a bug")
        return original(self, frames, probs)

    monkeypatch.setattr(Session, "on_frames", on_frames)
    async with served() as (url, _):
        doomed, healthy = await websockets.connect(url), await websockets.connect(url)
        await doomed.send(json.dumps({**metadata(), "stream_id": "doomed"}))
        await healthy.send(json.dumps(metadata()))
        for i in range(0, len(pcm), FRAME_BYTES):  # in the same batches
            with contextlib.suppress(websockets.ConnectionClosed):  # closed by the server meanwhile
                await doomed.send(pcm[i : i + FRAME_BYTES])
            await healthy.send(pcm[i : i + FRAME_BYTES])
            await asyncio.sleep(0.004)
        error = json.loads(await asyncio.wait_for(doomed.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(doomed.recv(), 10)
        final = json.loads(await asyncio.wait_for(healthy.recv(), 10))
        await healthy.close()
    assert error["type"] == "error" and "internal error" in error["body"]["message"]
    assert doomed.close_code == 1011
    assert final["type"] == "transcription" and final["is_final"], final


async def test_openai_audio_events_count_as_audio_for_the_idle_clock():
    """Audio appended as text events for longer than audio_idle_timeout_s: the stream stays open."""
    async with served(audio_idle_timeout_s=1.0) as (url, _):
        base = url.rsplit("/v1/", 1)[0]
        async with websockets.connect(f"{base}/v1/realtime?intent=transcription") as ws:
            append = {"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(960)).decode()}
            for _ in range(100):  # 2 s of 20 ms chunks (24 kHz s16le)
                await ws.send(json.dumps(append))
                await asyncio.sleep(0.02)
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            while True:  # was: closed with 1008 "no audio for 1 s" after 1 s
                event = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert event["type"] != "error", event
                if event["type"] == "input_audio_buffer.cleared":
                    break


async def test_a_multichannel_stream_sending_10_ms_frames_keeps_up(speech):
    """Deepgram, two channels: each message is audio for two sessions; each channel's next frames still
    join the audio of that channel waiting for its batch."""
    mono = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))[: 16000 * 2 * 4]
    samples = np.frombuffer(mono, dtype="<i2")
    stereo = np.stack([samples, samples], axis=1).astype("<i2").tobytes()
    step = 640  # 10 ms of two 16 kHz s16le channels
    async with served() as (url, runtime):
        base = url.rsplit("/v1/", 1)[0]
        query = "encoding=linear16&sample_rate=16000&channels=2&multichannel=true"
        others = [await websockets.connect(url) for _ in range(3)]  # batches hold several streams
        for ws in others:
            await ws.send(json.dumps(metadata()))
        async with websockets.connect(f"{base}/v1/listen?{query}") as ws:
            started = time.monotonic()
            for k, i in enumerate(range(0, len(stereo), step)):
                await ws.send(stereo[i : i + step])
                for other in others:
                    await other.send(mono[i // 2 : i // 2 + step // 2])
                await asyncio.sleep(max(0.0, started + (k + 1) * 0.01 - time.monotonic()))
            await asyncio.sleep(0.1)
            (deepgram,) = [s for s in runtime.streams if len(s.protocol.sessions) == 2]
            behind = [len(mono) / 32000 - s.received_s for s in deepgram.protocol.sessions]
        for other in others:
            await other.close()
    assert max(behind) < 0.25, behind


async def test_openai_streams_appending_10_ms_chunks_keep_up():
    """OpenAI's audio comes as text events: an append need not wait until the audio before it is applied."""
    chunk = base64.b64encode(bytes(480)).decode()  # 10 ms of 24 kHz s16le
    append = json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
    async with served() as (url, runtime):
        base = url.rsplit("/v1/", 1)[0]
        clients = [await websockets.connect(f"{base}/v1/realtime?intent=transcription") for _ in range(4)]
        started = time.monotonic()
        for k in range(400):  # 4 s
            for ws in clients:
                await ws.send(append)
            await asyncio.sleep(max(0.0, started + (k + 1) * 0.01 - time.monotonic()))
        await asyncio.sleep(0.1)
        behind = [4.0 - s.protocol.sessions[0].received_s for s in runtime.streams]
        for ws in clients:
            await ws.close()
    assert len(behind) == 4 and max(behind) < 0.25, behind  # was 2.6 s behind after 5 s, and growing


async def test_a_bug_on_the_fast_path_fails_the_stream_at_once(monkeypatch):
    original = BasetenProtocol.on_frame

    def on_frame(self, frame, now):
        if isinstance(frame, bytes) and frame == b"boom":
            raise RuntimeError("a bug")
        return original(self, frame, now)

    monkeypatch.setattr(BasetenProtocol, "on_frame", on_frame)
    async with served() as (url, _), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))
        await ws.send(b"boom")
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))  # was: nothing until the idle timeout
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert error["type"] == "error" and ws.close_code == 1011
