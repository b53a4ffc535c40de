"""Bad input never crashes the server or touches another stream: an error frame naming the field, then a
fitting close code, while a real-speech stream on the same server keeps receiving every final.

The healthy stream runs in real time in its own thread for the whole module; the last test checks that it
got all its finals while the other tests threw bad input at the same server.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
import websockets

from client.kit.speech import join_utterances, load_audio, to_pcm16, wer
from client.protocol import finals_text, metadata, stream_pcm
from whisper_stream.serving.transport import MAX_REASON_BYTES

HEALTHY_IDS = ["ls_61-70968-0000", "ls_1221-135766-0002", "lj_LJ002-0020", "ls_1089-134686-0001"]


def _metadata_cases() -> list[Any]:
    """(first frame, close code, text the error must contain)."""
    fixed = [
        ("{not json", 1007, "not valid JSON"),
        ("[1, 2]", 1007, "JSON object"),
        ('"just a string"', 1007, "JSON object"),
        ("42", 1007, "JSON object"),
        ("null", 1007, "JSON object"),
        ("", 1007, "not valid JSON"),
        (b"\0" * 1024, 1003, "must be the JSON metadata"),
        ("[" * 30_000 + "]" * 30_000, 1007, "nested too deeply"),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, 1007, "nested too deeply"),
        ("x" * (100 << 10), 1009, "metadata of more than"),
        (json.dumps({"whisper_params": {"prompt": "p" * (200 << 10)}}), 1009, "metadata of more than"),
        ({"whisper_params": {"prompt": "p" * 3000}}, 1007, "at most 2000 characters"),
        ('{"streaming_vad_config": {"threshold": NaN}}', 1007, "streaming_vad_config.threshold"),
        ('{"streaming_vad_config": {"threshold": Infinity}}', 1007, "streaming_vad_config.threshold"),
        ({"streaming_vad_config": {"threshold": 1.5}}, 1007, "streaming_vad_config.threshold"),
        ({"vad_params": {"min_silence_duration_ms": -1}}, 1007, "vad_params.min_silence_duration_ms"),
        ({"vad_params": {}, "streaming_vad_config": {}}, 1007, "either vad_params or streaming_vad_config"),
        ({"streaming_params": {"final_transcript_max_duration_s": 0.5}}, 1007, "final_transcript_max"),
        ({"streaming_params": {"encoding": "opus"}}, 1003, "allowed values"),
        ({"streaming_params": {"sample_rate": 96000}}, 1003, "streaming_params.sample_rate"),
        ({"whisper_params": {"audio_langauge": "en"}}, 1007, "unknown field 'whisper_params.audio_langauge'"),
        ({"ünknöwn_" * 40: 1}, 1007, "unknown field"),  # a non-ASCII reason longer than 123 bytes
        ({"whisper_params": {"enable_diarization": True}}, 1008, "not supported"),
        ({"whisper_params": {"audio_language": "xx"}}, 1008, "not supported by model"),
        ({"whisper_params": {"audio_language": "12"}}, 1007, "whisper_params.audio_language"),
        ({"whisper_params": {"language_options": ["en", "not a code"]}}, 1007, "language_options"),
        ({"whisper_params": {"output_language": "de"}}, 1007, "translates only into English"),
        ({"whisper_params": {"prefix": "🙂" * 200}}, 1008, "prefix is"),
        ({"asr_options": {"beam": 2}}, 1007, "beam_size"),
        ('{"whisper_params": {"whisper_sampling_params": {"sampling_temperatures": [NaN]}}}', 1007, "0 to 1"),
        (
            {"whisper_params": {"whisper_sampling_params": {"sampling_temperatures": [0.0, 2]}}},
            1007,
            "0 to 1",
        ),
        ('{"stream_id": "s\\ud800"}', 1007, "stream_id"),  # a lone surrogate: no valid string
        ({"streaming_whisper_params": {"volume": 3}}, 1007, "streaming_whisper_params"),
        # a legacy shape merged into a block that is no object: that block named, no internal error
        ({"streaming_whisper_params": {}, "streaming_params": [1, 2]}, 1007, "streaming_params"),
        ({"asr_options": {"beam_size": 2}, "whisper_params": 5}, 1007, "whisper_params"),
        ({"asr_options": {"beam_size": 2}, "whisper_params": {"whisper_sampling_params": 5}}, 1007, "sampl"),
    ]
    # one wrong type for every scalar field of the schema: strict types, the field named in the error
    wrong_types = {
        "streaming_vad_config": {
            "threshold": "0.5",
            "min_silence_duration_ms": "300",
            "speech_pad_ms": 1.5,
            "sampling_rate": "16000",
        },
        "streaming_params": {
            "encoding": 1,
            "sample_rate": "16000",
            "enable_partial_transcripts": "yes",
            "partial_transcript_interval_s": "0.5",
            "final_transcript_max_duration_s": [30],
            "prioritize_latency": 1,
            "skip_partial_if_hallucination": "true",
            "include_pipeline_latency_metric": {},
        },
        "whisper_params": {
            "prompt": 5,
            "prefix": ["a"],
            "audio_language": None,
            "language_detection_only": "no",
            "language_options": "en",
            "use_dynamic_preprocessing": 0,
            "show_word_timestamps": "false",
            "enable_vad": None,
            "enable_chunk_level_language_detection": 1.0,
            "condition_on_previous_finals": "on",
            "whisper_sampling_params": "beam",
        },
        "whisper_params.whisper_sampling_params": {
            "beam_width": "2",
            "length_penalty": "1",
            "repetition_penalty": True,
            "no_repeat_ngram_size": 1.5,
            "sampling_temperatures": [0.0, "0.2"],
            "max_new_tokens": "400",
        },
    }
    typed = []
    for section, values in wrong_types.items():
        for field, value in values.items():
            meta: dict[str, Any] = {}
            node = meta
            for part in section.split("."):
                node = node.setdefault(part, {})
            node[field] = value
            code = 1003 if field in ("encoding", "sample_rate") else 1007  # what audio we cannot take
            typed.append((meta, code, f"{section}.{field}"))
    typed.append(({"include_timing_info": "yes"}, 1007, "include_timing_info"))
    typed.append(({"stream_id": 7}, 1007, "stream_id"))
    return [pytest.param(*case, id=f"meta-{i}") for i, case in enumerate(fixed + typed)]


@pytest.fixture(scope="module")
def healthy(server, speech):
    """A real-time real-speech stream for the whole module, in its own thread and event loop."""
    stream = join_utterances([speech[i] for i in HEALTHY_IDS] * 3, pause_s=1.0)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = asyncio.run(stream_pcm(server.url, metadata(), to_pcm16(stream.audio), speed=1.0))
        except Exception as exc:  # reported by the last test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield {"thread": thread, "box": box, "stream": stream}


async def _error_and_close(url: str, first: Any, **connect: Any) -> tuple[dict, int | None, str]:
    async with websockets.connect(url, max_size=None, **connect) as ws:
        await ws.send(first if isinstance(first, str | bytes) else json.dumps(first))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 30)
        return reply, ws.close_code, ws.close_reason


@pytest.mark.parametrize("first,code,needle", _metadata_cases())
async def test_bad_metadata_gets_an_error_frame_and_its_close_code(server, healthy, first, code, needle):
    reply, close_code, reason = await _error_and_close(server.url, first)
    body = reply["body"]
    assert reply["type"] == "error" and body["recoverable"] is False
    assert body["error_type"] == "CONFIGURATION_ERROR"
    assert needle in body["message"], body["message"]
    assert len(json.dumps(reply)) < 2000  # the offending input is quoted, never echoed whole
    assert close_code == code and reason and len(reason.encode()) <= MAX_REASON_BYTES


async def _session(url: str) -> Any:
    ws = await websockets.connect(url, max_size=None)
    await ws.send(json.dumps(metadata()))
    return ws


async def _replies_until_close(ws: Any, timeout_s: float = 60) -> list[dict]:
    replies = []
    try:
        while True:
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))
    except websockets.ConnectionClosed:
        return replies


@pytest.mark.parametrize(
    "frame,code,needle",
    [
        pytest.param(b"\0" * ((2 << 20) - 2), 1009, "exceeds the limit", id="binary-over-limit"),
        pytest.param("{" + " " * (100 << 10) + "}", 1009, "text frame over", id="text-over-limit"),
    ],
)
async def test_oversized_frames_after_metadata(server, healthy, frame, code, needle):
    ws = await _session(server.url)
    await ws.send(frame)
    replies = await _replies_until_close(ws)
    assert replies and replies[-1]["type"] == "error" and needle in replies[-1]["body"]["message"]
    assert ws.close_code == code


async def test_a_frame_beyond_any_buffer_is_closed_by_the_socket_layer(server, healthy):
    ws = await _session(server.url)
    with pytest.raises(websockets.ConnectionClosed):
        await ws.send(b"\0" * (8 << 20))  # over websockets' max_size: closed before it is buffered
        await asyncio.wait_for(ws.recv(), 30)
    assert ws.close_code == 1009


@pytest.mark.parametrize(
    "text,needle",
    [
        pytest.param("not json", "not valid JSON", id="control-not-json"),
        pytest.param('{"type": "rewind"}', "unknown control message type 'rewind'", id="control-unknown"),
        pytest.param('{"type": "' + "r" * 5000 + '"}', "unknown control message type", id="control-long"),
        pytest.param("[]", "JSON object", id="control-array"),
        pytest.param("[" * 30_000 + "]" * 30_000, "not valid JSON", id="control-deep"),
        pytest.param(
            '{"type": "health_check", "trace_id": "' + "t" * 300 + '"}', "trace_id", id="trace-long"
        ),
        pytest.param('{"type": "health_check", "trace_id": {"a": 1}}', "trace_id", id="trace-object"),
    ],
)
async def test_malformed_control_messages_are_recoverable(server, healthy, speech, text, needle):
    audio = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    ws = await _session(server.url)
    await ws.send(audio[: len(audio) // 2])
    await ws.send(text)
    await ws.send(audio[len(audio) // 2 :])
    await ws.send(json.dumps({"type": "end_audio"}))
    replies = await _replies_until_close(ws)
    errors = [m for m in replies if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["body"]["recoverable"] and needle in errors[0]["body"]["message"]
    assert len(json.dumps(errors[0])) < 2000
    assert "wizard" in finals_text(replies).lower() and replies[-1]["body"]["status"] == "finished"
    assert ws.close_code == 1000


async def test_lone_surrogates_in_trace_ids_are_escaped_not_fatal(server, healthy, speech):
    ws = await websockets.connect(server.url)
    await ws.send(json.dumps(metadata()))
    await ws.send('{"type": "health_check", "trace_id": "t\\udfff"}')
    await ws.send(to_pcm16(load_audio(speech["ls_61-70968-0000"].path)))
    await ws.send('{"type": "end_audio", "trace_id": "\\ud800"}')
    replies = await _replies_until_close(ws)
    assert replies[0]["type"] == "health_check" and replies[0]["trace_id"] == "t\udfff"
    assert "wizard" in finals_text(replies).lower() and ws.close_code == 1000


@pytest.mark.parametrize(
    "audio",
    [
        pytest.param(b"\x01", id="one-byte-frames"),
        pytest.param(b"\x01\x02\x03", id="odd-byte-frames"),
    ],
)
async def test_odd_frame_sizes_are_carried_over(server, healthy, speech, audio):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    ws = await _session(server.url)
    chunk = len(audio)
    for i in range(0, len(pcm), 4096 * chunk + chunk):  # frames of odd length: bytes carried to the next
        await ws.send(pcm[i : i + 4096 * chunk + chunk])
    await ws.send(json.dumps({"type": "end_audio"}))
    replies = await _replies_until_close(ws)
    assert "wizard" in finals_text(replies).lower() and ws.close_code == 1000


async def test_garbage_float_audio_is_clipped_not_fatal(server, healthy):
    meta = metadata(encoding="pcm_f32le")
    garbage = np.array([np.nan, np.inf, -np.inf, 1e30, -1e30] * 16000, dtype="<f4").tobytes()
    async with websockets.connect(server.url) as ws:
        await ws.send(json.dumps(meta))
        await ws.send(garbage)
        await ws.send(json.dumps({"type": "end_audio"}))
        replies = await _replies_until_close(ws)
    assert replies[-1]["type"] == "end_audio" and replies[-1]["body"]["status"] == "finished"
    assert ws.close_code == 1000


async def test_audio_after_end_audio_is_a_recoverable_error(server, healthy, speech):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path))
    ws = await _session(server.url)
    await ws.send(pcm)
    await ws.send(json.dumps({"type": "end_audio"}))
    await ws.send(pcm[:1024])
    replies = await _replies_until_close(ws)
    assert any(m["type"] == "error" and "after end_audio" in m["body"]["message"] for m in replies)
    assert replies[-1]["body"]["status"] == "finished"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_http_to_the_websocket_path_is_refused_politely(server, healthy, method):
    request = urllib.request.Request(server.url.replace("ws://", "http://"), method=method, data=None)
    # not a WebSocket handshake: refused (websockets answers GET with 426; a POST it answers with 405 or,
    # depending on timing, by closing the connection), and the server is unharmed
    with pytest.raises((urllib.error.HTTPError, http.client.RemoteDisconnected, ConnectionResetError)) as exc:
        urllib.request.urlopen(request, timeout=10)
    if isinstance(exc.value, urllib.error.HTTPError):
        assert exc.value.code in (400, 405, 426)
    else:
        assert method == "POST"
    with urllib.request.urlopen(server.health, timeout=10) as health:
        assert health.status == 200


def test_the_healthy_stream_kept_all_its_finals(healthy):
    healthy["thread"].join(timeout=240)
    box = healthy["box"]
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.finished and not result.errors
    stream = healthy["stream"]
    assert wer([" ".join(u.text for u in stream.utterances)], [result.text]) < 0.1, result.text
