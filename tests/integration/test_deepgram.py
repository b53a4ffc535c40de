"""Deepgram's live API (`/v1/listen`) through the official, unmodified `deepgram-sdk`, against the real server
with real speech: finals as accurate as the Baseten endpoint's, interim results, a fast `Finalize`, `Metadata`
at `CloseStream`, and Deepgram's own error for a parameter the server does not serve."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment

from client.kit.speech import join_utterances, load_audio, to_pcm16, wer
from client.protocol import metadata, stream_pcm

IDS = ["ls_1089-134686-0001", "ls_61-70968-0000", "lj_LJ002-0020"]
SPEED = 4.0
CHUNK = 1024  # 32 ms of 16 kHz linear16


@pytest.fixture(scope="module")
def stream(speech):
    return join_utterances([speech[i] for i in IDS], pause_s=1.5)


def client(server) -> AsyncDeepgramClient:
    base = f"127.0.0.1:{server.port}"
    env = DeepgramClientEnvironment(base=f"http://{base}", production=f"ws://{base}", agent="", agent_rest="")
    return AsyncDeepgramClient(api_key="unused", environment=env)


async def run(server, pcm: bytes, *, finalize: bool = False, **params):
    """Stream `pcm` paced at SPEED x real time; then Finalize (and wait for its result) or CloseStream."""
    got: list[tuple[float, object]] = []
    options = dict(model="nova-3", encoding="linear16", sample_rate=16000, language="en", **params)
    async with client(server).listen.v1.connect(**options) as sock:

        async def reader() -> None:
            async for msg in sock:
                got.append((time.monotonic(), msg))
                if finalize and getattr(msg, "from_finalize", False):
                    return

        task = asyncio.create_task(reader())
        for i in range(0, len(pcm), CHUNK):
            await sock.send_media(pcm[i : i + CHUNK])
            await asyncio.sleep(CHUNK / 32000 / SPEED)
        sent = time.monotonic()
        await (sock.send_finalize() if finalize else sock.send_close_stream())
        await asyncio.wait_for(task, 120)
    return got, sent


def finals_text(got) -> str:
    results = [m for _, m in got if getattr(m, "type", "") == "Results" and m.is_final]
    return " ".join(
        m.channel.alternatives[0].transcript for m in results if m.channel.alternatives[0].transcript
    )


async def test_sdk_finals_match_baseten_wer_with_interims_events_and_metadata(server, stream):
    pcm = to_pcm16(stream.audio)
    reference = " ".join(u.text for u in stream.utterances)
    baseten = await stream_pcm(server.url, metadata(), pcm, speed=SPEED)
    got, _ = await run(server, pcm, interim_results=True, punctuate=True, vad_events=True)
    kinds = [getattr(m, "type", "") for _, m in got]
    results = [m for _, m in got if getattr(m, "type", "") == "Results"]
    finals = [m for m in results if m.is_final]
    interims = [m for m in results if not m.is_final]
    assert interims, kinds
    assert kinds[-1] == "Metadata" and kinds.count("SpeechStarted") >= len(IDS)
    assert any(m.speech_final for m in finals)  # endpointing ended at least one utterance
    dg_wer, base_wer = wer([reference], [finals_text(got)]), wer([reference], [baseten.text])
    print(f"WER deepgram-sdk {dg_wer:.3f} vs baseten {base_wer:.3f}")
    assert dg_wer <= base_wer + 0.02, (finals_text(got), baseten.text)
    for m in finals:
        alt = m.channel.alternatives[0]
        assert m.channel_index == [0, 1] and m.metadata.request_id
        if alt.transcript:
            assert alt.words and all(w.start <= w.end for w in alt.words) and alt.words[0].punctuated_word
            assert m.start <= alt.words[0].start and 0 < alt.confidence <= 1
    meta = next(m for _, m in got if getattr(m, "type", "") == "Metadata")
    assert meta.channels == 1 and abs(meta.duration - len(stream.audio) / 16000) < 0.1


async def test_finalize_turns_open_speech_into_a_final_flagged_from_finalize(server, speech):
    audio = load_audio(speech["ls_61-70968-0000"].path)
    # no trailing silence: endpointing cannot end this utterance, only Finalize can
    got, sent = await run(
        server, to_pcm16(audio[: int(len(audio) * 0.95)]), finalize=True, interim_results=True
    )
    done = [(t, m) for t, m in got if getattr(m, "from_finalize", False)]
    assert done, [getattr(m, "type", "") for _, m in got]
    t, m = done[0]
    assert m.is_final and m.channel.alternatives[0].transcript
    print(f"Finalize -> final in {t - sent:.2f} s")


async def test_bad_parameter_gets_deepgram_400(server):
    with pytest.raises(ApiError) as exc:
        async with client(server).listen.v1.connect(model="nova-3", encoding="linear16", diarize="true"):
            pass
    assert exc.value.status_code == 400
    url = f"ws://127.0.0.1:{server.port}/v1/listen?encoding=opus"
    with pytest.raises(websockets.InvalidStatus) as raw:
        async with websockets.connect(url):
            pass
    body = json.loads(raw.value.response.body)
    assert body["err_code"] == "INVALID_QUERY_PARAMETER" and "opus" in body["err_msg"]
