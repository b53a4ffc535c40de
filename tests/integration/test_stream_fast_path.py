"""The stream driver's audio fast path, through a real in-process server with real Silero (a stand-in engine
answers "hello"): paced audio never wakes the stream's loop message by message, small frames sent while a
front-end batch runs gather into one ticket per stream (so streams keep up however long a batch takes), a
control message sent right after audio sees all of it, an engine result is delivered while audio keeps
streaming, a bug in one stream's audio path fails that stream only, and audio sent as OpenAI's text events
counts as audio for the idle clock.

No wall-clock bounds: a test holds the front end's batches itself (`HeldFrontEnd`) or waits for a state
(`until`); speed under load is `make bench-frontend`'s."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import websockets

from client.kit.speech import load_audio, to_pcm16
from client.protocol import metadata
from tests.integration.test_admission_and_drain import WAIT_S, until
from tests.integration.test_admission_and_drain import served as served_by_stand_in
from whisper_stream.core.session import Session
from whisper_stream.dsp.vad import FRAME, SAMPLE_RATE
from whisper_stream.protocols.baseten import BasetenProtocol
from whisper_stream.serving import driver
from whisper_stream.serving.frontend import GATHER_MAX_BYTES, FrontEnd

FRAME_BYTES = 1024  # 32 ms of 16 kHz s16le
# Audio a session may hold back once everything sent has been applied: the partial VAD frame, and for 24 kHz
# input the resampler's filter tail (a few ms).
TAIL_S = FRAME / SAMPLE_RATE + 0.01


def served(**limits: float):
    """The stand-in engine answering after 50 ms; `limits` overrides `Limits` fields."""
    return served_by_stand_in(0.05, limits)


class HeldFrontEnd:
    """The front end's batches held until `release()`; per session, the tickets it was given and the audio
    bytes handed over (as a ticket's first audio or gathered into a waiting one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.tickets: Counter[Session] = Counter()
        self.bytes: Counter[Session] = Counter()
        process, submit, extend = FrontEnd._process, FrontEnd.submit, FrontEnd.extend

        def held(front, tickets):
            self.gate.wait(WAIT_S)
            return process(front, tickets)

        def counted_submit(front, session, audio, data, on_done):
            self.tickets[session] += 1
            self.bytes[session] += len(data)
            return submit(front, session, audio, data, on_done)

        def counted_extend(ticket, data):
            gathered = extend(ticket, data)
            self.bytes[ticket.session] += len(data) if gathered else 0
            return gathered

        monkeypatch.setattr(FrontEnd, "_process", held)
        monkeypatch.setattr(FrontEnd, "submit", counted_submit)
        monkeypatch.setattr(FrontEnd, "extend", staticmethod(counted_extend))

    def release(self) -> None:
        self.gate.set()


async def gather_while_held(front: HeldFrontEnd, runtime, sessions: int, sent: int, sent_s: float) -> None:
    """Wait until `sessions` sessions have handed `sent` bytes each to the held front end; check they took at
    most two tickets each (one running or waiting from before, one gathering the rest: was one per frame,
    each its own batch, so a stream fell behind while batches ran); release; wait until all is applied."""

    def every() -> list[Session]:
        return [x for stream in runtime.streams for x in stream.protocol.sessions]

    try:
        await until(
            lambda: len(every()) == sessions and all(front.bytes[x] == sent for x in every()),
            f"{sessions} sessions handing {sent} bytes each to the front end while its batch is held",
        )
        tickets = [front.tickets[x] for x in every()]
    finally:
        front.release()  # also on failure: the held worker thread goes on
    await until(lambda: all(x.received_s >= sent_s - TAIL_S for x in every()), "all audio applied")
    assert max(tickets) <= 2, tickets


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
    """Paced by the server's own progress: each 32 ms frame is sent once the one before has been applied, so
    nothing is ever queued before it, and none may go through the loop's message handling."""
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]  # whole
    async with served() as (url, runtime), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))
        await until(lambda: [len(s.protocol.sessions) for s in runtime.streams] == [1], "the session")
        (session,) = next(iter(runtime.streams)).protocol.sessions
        for n, frame in enumerate(frames, 1):
            await ws.send(frame)
            await until(lambda n=n: session.received_s >= n * FRAME / SAMPLE_RATE, f"frame {n} applied")
        reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert reply["type"] == "transcription" and reply["is_final"] and reply["segments"][0]["text"], reply
    binary = [m for m in handled if isinstance(m, bytes)]
    assert binary == [], (len(binary), len(frames))


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
    """An utterance and its pause, then speech without end at 2x real time: the final arrives while the
    audio is still being sent (a final held back until the audio stops would never come: `until` fails)."""
    one = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    pcm = one + bytes(32000)
    async with served() as (url, _), websockets.connect(url) as ws:
        await ws.send(json.dumps(metadata()))

        async def send_audio() -> None:
            audio = pcm + one * 8  # about 20 s to send: less than WAIT_S
            for i in range(0, len(audio), FRAME_BYTES):
                await ws.send(audio[i : i + FRAME_BYTES])
                await asyncio.sleep(0.016)  # 2x real time

        sender = asyncio.create_task(send_audio())
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert not sender.done(), "the audio had all been sent"
        finally:
            sender.cancel()
    assert reply["type"] == "transcription" and reply["is_final"], reply


async def test_streams_sending_20_ms_frames_gather_while_a_batch_runs(speech, monkeypatch):
    """Half of such frames complete no 32 ms VAD frame; while a batch runs, a stream's next frames gather."""
    front = HeldFrontEnd(monkeypatch)
    step = 640  # 20 ms
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))[: GATHER_MAX_BYTES // step * step]
    async with served() as (url, runtime):
        clients = [await websockets.connect(url) for _ in range(4)]
        for ws in clients:
            await ws.send(json.dumps(metadata()))
        for i in range(0, len(pcm), step):
            for ws in clients:
                await ws.send(pcm[i : i + step])
        await gather_while_held(front, runtime, 4, len(pcm), len(pcm) / 2 / SAMPLE_RATE)
        for ws in clients:
            await ws.close()


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


async def test_a_multichannel_stream_sending_10_ms_frames_gathers_per_channel(speech, monkeypatch):
    """Deepgram, two channels: each message is audio for two sessions; each channel's next frames still
    join the audio of that channel waiting for its batch."""
    front = HeldFrontEnd(monkeypatch)
    step = 640  # 10 ms of two 16 kHz s16le channels
    mono = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))[: GATHER_MAX_BYTES // step * step // 2]
    samples = np.frombuffer(mono, dtype="<i2")
    stereo = np.stack([samples, samples], axis=1).astype("<i2").tobytes()
    async with served() as (url, runtime):
        base = url.rsplit("/v1/", 1)[0]
        query = "encoding=linear16&sample_rate=16000&channels=2&multichannel=true"
        async with websockets.connect(f"{base}/v1/listen?{query}") as ws:
            for i in range(0, len(stereo), step):
                await ws.send(stereo[i : i + step])
            await gather_while_held(front, runtime, 2, len(mono), len(mono) / 2 / SAMPLE_RATE)


async def test_openai_streams_appending_10_ms_chunks_gather_while_a_batch_runs(monkeypatch):
    """OpenAI's audio comes as text events: an append need not wait until the audio before it is applied
    (were it to, the held batch would stop the stream at its first chunk)."""
    front = HeldFrontEnd(monkeypatch)
    chunk = bytes(480)  # 10 ms of 24 kHz s16le
    chunks = GATHER_MAX_BYTES // 2 // len(chunk)  # half: a text event counts its JSON's size, not its audio's
    append = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
    async with served() as (url, runtime):
        base = url.rsplit("/v1/", 1)[0]
        clients = [await websockets.connect(f"{base}/v1/realtime?intent=transcription") for _ in range(4)]
        for _ in range(chunks):
            for ws in clients:
                await ws.send(append)
        await gather_while_held(front, runtime, 4, chunks * len(chunk), chunks * 0.01)
        for ws in clients:
            await ws.close()


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
