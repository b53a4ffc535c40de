"""Bad input never crashes the server or touches another stream: error frame naming the field, then a fitting
close code, while a healthy stream on the same server still receives its finals."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from client.protocol import finals_text, metadata, stream_pcm
from client.speech import load_audio, to_pcm16

CASES = [
    pytest.param("{not json", 1007, "not valid JSON", id="non-json"),
    pytest.param("[1, 2]", 1007, "JSON object", id="non-object"),
    pytest.param(b"\0" * 1024, 1003, "must be the JSON metadata", id="binary-first"),
    pytest.param({"streaming_vad_config": {"threshold": 1.5}}, 1007, "streaming_vad_config.threshold",
                 id="threshold-range"),
    pytest.param({"vad_params": {"min_silence_duration_ms": -1}}, 1007, "vad_params.min_silence_duration_ms",
                 id="negative-duration"),
    pytest.param({"streaming_params": {"final_transcript_max_duration_s": 31}}, 1007,
                 "final_transcript_max_duration_s", id="max-duration-over-30"),
    pytest.param({"streaming_params": {"enable_partial_transcripts": "yes please"}}, 1007,
                 "enable_partial_transcripts", id="wrong-type"),
    pytest.param({"whisper_params": {"audio_langauge": "en"}}, 1007,
                 "unknown field 'whisper_params.audio_langauge'", id="unknown-key"),
    pytest.param({"streaming_params": {"encoding": "opus"}}, 1003, "allowed values",
                 id="unsupported-encoding"),
    pytest.param({"streaming_params": {"sample_rate": 96000}}, 1003, "streaming_params.sample_rate",
                 id="unsupported-rate"),
    pytest.param({"whisper_params": {"enable_diarization": True}}, 1008, "not supported", id="unimplemented"),
    pytest.param({"whisper_params": {"audio_language": "xx"}}, 1008, "not supported by model",
                 id="bad-language"),
]  # fmt: skip


async def _error_and_close(url: str, first) -> tuple[dict, int, str]:
    async with websockets.connect(url) as ws:
        await ws.send(first if isinstance(first, str | bytes) else json.dumps(first))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return reply, ws.close_code, ws.close_reason


@pytest.mark.parametrize("first,code,needle", CASES)
async def test_bad_metadata_error_and_close_code(server, speech, first, code, needle):
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    healthy = asyncio.create_task(stream_pcm(server.url, metadata(), audio, speed=4.0))
    reply, close_code, reason = await _error_and_close(server.url, first)
    assert reply["type"] == "error" and reply["body"]["recoverable"] is False
    assert reply["body"]["error_type"] == "CONFIGURATION_ERROR"
    assert needle in reply["body"]["message"], reply["body"]["message"]
    assert close_code == code and reason
    result = await healthy
    assert result.finished and "wizard" in result.text.lower()


async def test_oversized_frame_is_refused_with_1009(server, speech):
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    healthy = asyncio.create_task(stream_pcm(server.url, metadata(), audio, speed=4.0))
    async with websockets.connect(server.url, max_size=None) as ws:
        await ws.send(json.dumps(metadata()))
        await ws.send(b"\0" * (2 << 20))  # 2 MiB > the 1 MiB default limit
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
    assert (
        reply["body"]["error_type"] == "AUDIO_PROCESSING_ERROR"
        and "exceeds the limit" in reply["body"]["message"]
    )
    assert ws.close_code == 1009
    assert (await healthy).finished


async def test_malformed_control_messages_are_recoverable(server, speech):
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps(metadata()))
        await ws.send(audio[: len(audio) // 2])
        for bad in ("not json", '{"type": "rewind"}', "[]"):
            await ws.send(bad)
        await ws.send(audio[len(audio) // 2 :])
        await ws.send(json.dumps({"type": "end_audio"}))
        replies = [json.loads(m) async for m in ws]
    errors = [m for m in replies if m["type"] == "error"]
    assert len(errors) == 3 and all(e["body"]["recoverable"] for e in errors)
    text = finals_text(replies)
    assert "wizard" in text.lower()
    assert replies[-1]["body"]["status"] == "finished"
