"""OpenAI Realtime transcription (`/v1/realtime?intent=transcription`) through the official, unmodified
`openai` SDK, against the real server with real 24 kHz speech: completed transcripts as accurate as the
Baseten endpoint's, deltas, a fast `commit` with client-committed turns, and OpenAI's error event for bad
input."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
import soxr
from openai import AsyncOpenAI

from client.kit.speech import join_utterances, load_audio, to_pcm16, wer
from client.protocol import metadata, stream_pcm

IDS = ["ls_1089-134686-0001", "ls_61-70968-0000", "lj_LJ002-0020"]
SPEED = 4.0
CHUNK_S = 0.1
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"


@pytest.fixture(scope="module")
def stream(speech):
    return join_utterances([speech[i] for i in IDS], pause_s=1.5)


def pcm24(audio16) -> bytes:
    return to_pcm16(soxr.resample(audio16, 16000, 24000))


def session(turn_detection: object = "default", **transcription: object) -> dict:
    audio_input: dict = {
        "format": {"type": "audio/pcm", "rate": 24000},
        "transcription": {"model": "gpt-4o-transcribe", "language": "en", **transcription},
    }
    if turn_detection != "default":
        audio_input["turn_detection"] = turn_detection
    return {"type": "transcription", "audio": {"input": audio_input}}


async def run(
    server, pcm: bytes, session_update: dict, *, commit: bool, until_completed: int, chunk_s: float = CHUNK_S
):
    client = AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{server.port}/v1")
    got: list[tuple[float, object]] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session=session_update)

        async def reader() -> None:
            async for event in conn:
                got.append((time.monotonic(), event))
                if sum(e.type == COMPLETED for _, e in got) >= until_completed:
                    return

        task = asyncio.create_task(reader())
        step = int(24000 * chunk_s) * 2
        for i in range(0, len(pcm), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
            await asyncio.sleep(chunk_s / SPEED)
        sent = time.monotonic()
        if commit:
            await conn.input_audio_buffer.commit()
        await asyncio.wait_for(task, 120)
    return got, sent


async def test_sdk_completed_match_baseten_wer_with_deltas_and_turn_events(server, stream):
    reference = " ".join(u.text for u in stream.utterances)
    baseten = await stream_pcm(server.url, metadata(), to_pcm16(stream.audio), speed=SPEED)
    got, _ = await run(server, pcm24(stream.audio), session(), commit=False, until_completed=len(IDS))
    types = [e.type for _, e in got]
    assert types[:2] == ["session.created", "session.updated"]
    assert types.count("input_audio_buffer.speech_started") >= len(IDS)
    assert DELTA in types
    completed = [e for _, e in got if e.type == COMPLETED]
    committed = [e.item_id for _, e in got if e.type == "input_audio_buffer.committed"]
    assert [e.item_id for e in completed] == committed[: len(completed)]
    text = " ".join(e.transcript for e in completed if e.transcript)
    oa_wer, base_wer = wer([reference], [text]), wer([reference], [baseten.text])
    print(f"WER openai-sdk {oa_wer:.3f} vs baseten {base_wer:.3f}")
    assert oa_wer <= base_wer + 0.02, (text, baseten.text)


async def test_commit_ends_a_client_committed_turn_fast(server, speech):
    audio = load_audio(speech["ls_61-70968-0000"].path)
    got, sent = await run(server, pcm24(audio), session(turn_detection=None), commit=True, until_completed=1)
    types = [e.type for _, e in got]
    assert "input_audio_buffer.speech_started" not in types  # turns are the client's: no VAD events
    t, done = next((t, e) for t, e in got if e.type == COMPLETED)
    assert done.transcript and "input_audio_buffer.committed" in types
    print(f"commit -> completed in {t - sent:.2f} s")


async def test_an_append_of_seconds_of_audio_is_taken_as_audio_not_refused_as_a_large_control(server, speech):
    """1 s of 24 kHz audio is 65 KB of base64 (OpenAI takes up to 15 MiB an event): once closed with 1009
    as a control message over 64 KiB."""
    utterance = speech["ls_61-70968-0000"]
    pcm = pcm24(load_audio(utterance.path))
    assert len(base64.b64encode(pcm)) > 4 * (64 << 10)
    got, _ = await run(
        server, pcm, session(turn_detection=None), commit=True, until_completed=1, chunk_s=10.0
    )
    (done,) = [e for _, e in got if e.type == COMPLETED]
    assert wer([utterance.text], [done.transcript]) < 0.2 and not [e for _, e in got if e.type == "error"]


async def test_bad_input_gets_openai_error_events(server):
    client = AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{server.port}/v1")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        bad_rate = session()
        bad_rate["audio"]["input"]["format"]["rate"] = 96000
        await conn.send({"type": "session.update", "event_id": "ev_1", "session": bad_rate})
        await conn.send({"type": "input_audio_buffer.append", "audio": "not base64!"})
        await conn.send({"type": "input_audio_buffer.commit"})
        errors = []
        async for event in conn:
            if event.type == "error":
                errors.append(event.error)
            if len(errors) == 3:
                break
    assert errors[0].param == "session.audio.input.format.rate" and errors[0].event_id == "ev_1"
    assert errors[0].type == "invalid_request_error"
    assert errors[1].param == "audio"
    assert errors[2].code == "input_audio_buffer_commit_empty"
