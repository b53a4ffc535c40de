"""The real server (subprocess, free loopback port), the real CPU model, real speech."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from client.kit.speech import join_utterances, load_audio, to_pcm16, wer
from client.protocol import finals_text, metadata, stream_pcm

ENGLISH = [
    "ls_1089-134686-0001",
    "ls_1221-135766-0002",
    "ls_61-70968-0000",
    "ls_1995-1837-0001",
    "lj_LJ002-0020",
    "lj_LJ002-0035",
]


@pytest.fixture(scope="module")
def english_stream(speech):
    return join_utterances([speech[i] for i in ENGLISH], pause_s=1.5)


@pytest.fixture(scope="module")
def offline_texts(speech):
    """The same model transcribing each file whole, offline (faster-whisper's own pipeline)."""
    from faster_whisper import WhisperModel

    from whisper_stream.engines.model_source import resolve_model

    model = WhisperModel(resolve_model(None), device="cpu", compute_type="int8")
    out = {}
    for i in ENGLISH:
        segments, _ = model.transcribe(
            str(speech[i].path), language="en", beam_size=1, condition_on_previous_text=False
        )
        out[i] = " ".join(s.text.strip() for s in segments)
    return out


async def test_finals_for_every_utterance_and_wer_matches_offline(server, english_stream, offline_texts):
    result = await stream_pcm(server.url, metadata(), to_pcm16(english_stream.audio), speed=4.0)
    assert result.finished and not result.errors
    finals = result.finals
    ends = [m["segments"][-1]["end_time"] for m in finals]
    for start, end in zip(english_stream.speech_starts, english_stream.speech_ends, strict=True):
        covering = [e for e in ends if start < e <= end + 0.6]
        assert covering, f"no final covers the utterance ending at {end:.2f} s (final ends: {ends})"
    refs = [u.text for u in english_stream.utterances]
    stream_wer = wer([" ".join(refs)], [result.text])
    offline_wer = wer([" ".join(refs)], [" ".join(offline_texts[i] for i in ENGLISH)])
    assert stream_wer <= offline_wer + 0.02, (stream_wer, offline_wer, result.text)
    assert stream_wer < 0.25
    # times are stream seconds, increasing, and each final's text is also its top-level transcript
    starts = [m["segments"][0]["start_time"] for m in finals]
    assert starts == sorted(starts)
    for m in finals:
        assert m["transcript"] == " ".join(s["text"] for s in m["segments"])
        assert m["language_code"] == "en" and m["server_lag_s"] >= 0


async def test_partials_arrive_and_are_replaced_by_finals(server, speech):
    audio = to_pcm16(load_audio(speech["ls_1221-135766-0001"].path))
    result = await stream_pcm(server.url, metadata(partials=True, partial_interval_s=1.0), audio, speed=1.0)
    assert result.partials, "no partial transcript arrived"
    assert result.finals and result.finals[-1]["is_final"]
    kinds = [
        (r.message.get("is_final"), r.message.get("transcription_num"))
        for r in result.received
        if r.message.get("type") == "transcription"
    ]
    final_nums = {n for f, n in kinds if f}
    # a partial never follows the final of its own utterance
    for idx, (is_final, num) in enumerate(kinds):
        if not is_final:
            assert (True, num) not in kinds[:idx]
    assert final_nums


async def test_silence_only_stream_yields_no_transcript(server):
    silence = np.zeros(16000 * 20, dtype=np.float32)
    result = await stream_pcm(server.url, metadata(partials=True), to_pcm16(silence), speed=0)
    assert result.finished
    assert [m for m in result.received if m.message.get("type") == "transcription"] == []


async def test_four_concurrent_streams_all_get_their_finals(server, speech):
    ids = ["ls_1221-135766-0002", "ls_61-70968-0000", "lj_LJ002-0020", "lj_LJ002-0035"]
    streams = [join_utterances([speech[i]], pause_s=1.0) for i in ids]
    results = await asyncio.gather(
        *(stream_pcm(server.url, metadata(), to_pcm16(s.audio), speed=2.0) for s in streams)
    )
    for i, res in zip(ids, results, strict=True):
        assert res.finished and res.finals, i
        assert wer([speech[i].text], [res.text]) < 0.3, (i, res.text)


async def test_documented_seed_client_with_legacy_websockets(server, speech):
    """The documentation's example as written: legacy client, extra_headers, vad_params, 512-sample frames."""
    from websockets.legacy.client import connect as legacy_connect

    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + b"\0" * 32000
    meta = {
        "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
        "streaming_params": {
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "enable_partial_transcripts": True,
        },
        "whisper_params": {"audio_language": "en"},
    }
    printed = []
    async with legacy_connect(server.url, extra_headers={"Authorization": "Api-Key test"}) as ws:
        await ws.send(json.dumps(meta))
        for i in range(0, len(audio), 1024):
            await ws.send(audio[i : i + 1024])
            await asyncio.sleep(0.004)
        await ws.send(json.dumps({"type": "end_audio"}))
        async for raw in ws:
            data = json.loads(raw)
            if "transcript" in data:
                printed.append(("[final]" if data["is_final"] else "[partial]") + " " + data["transcript"])
    finals = [p for p in printed if p.startswith("[final]")]
    assert finals and "wizard" in " ".join(finals).lower()


@pytest.mark.parametrize("path", ["/environments/production/websocket", "/deployment/abc123/websocket"])
async def test_baseten_url_forms(server, speech, path):
    url = server.url.replace("/v1/websocket", path)
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    result = await stream_pcm(url, metadata(), audio, speed=0)
    assert "wizard" in result.text.lower()


async def test_unknown_path_is_404(server):
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(server.url.replace("/v1/websocket", "/v2/nope")):
            pass
    assert info.value.response.status_code == 404


async def test_baseten_current_client_shape(server, speech):
    """Clients of the current protocol: streaming_vad_config, `segments`, end_audio, health_check."""
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps(metadata()))
        await ws.send(json.dumps({"type": "health_check", "trace_id": "t-1", "body": {}}))
        health = json.loads(await ws.recv())
        assert health["type"] == "health_check" and health["trace_id"] == "t-1" and health["body"]["healthy"]
        await ws.send(audio)  # one big frame: any frame size works
        await ws.send(json.dumps({"type": "end_audio"}))
        replies = [json.loads(m) async for m in ws]
    assert replies[0] == {"type": "end_audio", "trace_id": None, "body": {"status": "acknowledged"}}
    assert replies[-1]["body"]["status"] == "finished"
    text = finals_text(replies)
    assert "wizard" in text.lower()
    assert replies[-2]["is_end_of_audio_flush"] is True


async def test_metrics_endpoint_counts_streams_and_engine_calls(server, speech):
    import re
    import urllib.request

    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    await stream_pcm(server.url, metadata(), audio, speed=0)
    with urllib.request.urlopen(server.health.replace("/health", "/metrics"), timeout=5) as r:
        text = r.read().decode()

    def value(name: str) -> float:
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        assert match, name
        return float(match.group(1))

    assert value('whisper_stream_engine_calls_total{outcome="ok"}') >= 1
    assert value('whisper_stream_messages_total{kind="final"}') >= 1
    assert value("whisper_stream_streams_total") >= 1
    assert value("whisper_stream_final_seconds_count") >= 1
