"""The benchmark's clients for the other protocols this server speaks (and hosted Deepgram / OpenAI speak):
each streams PCM the way `protocol.stream_pcm` does (32 ms frames, the protocol's flush right after the
frames in `flush_after`, with the same VAD settings) and turns the replies into Baseten-shaped messages
(`transcription` with `is_final`, `transcription_num`, `segments[start_time, end_time, text]`, then
`end_audio finished`), so `client.bench.metrics` computes the same latency and WER figures for every
protocol."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import numpy as np
import websockets

from client.protocol import Received, StreamResult
from whisper_stream.core.endpointer import VadOptions

PROTOCOLS = ("baseten", "deepgram", "openai")
FRAME_S = 0.032  # what every client here sends per message: 512 samples at 16 kHz
DEFAULT_VAD = VadOptions(0.5, 300, 30)  # the Baseten metadata's defaults, in the other protocols' terms


def base_url(url: str) -> str:
    """ws(s)://host[:port] of a URL (a Baseten path such as /v1/websocket is dropped)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _transcription(final: bool, num: int, start: float, end: float, text: str) -> dict[str, Any]:
    segments = [{"start_time": start, "end_time": end, "text": text}] if text else []
    return {
        "type": "transcription",
        "is_final": final,
        "transcription_num": num,
        "segments": segments,
        "transcript": text,
    }


async def _paced(
    ws: Any,
    chunks: list[Any],
    seconds: list[float],
    speed: float,
    result: StreamResult,
    t0: float,
    on_progress: Any,
    flush: str | None = None,
    flush_after: set[int] | frozenset[int] = frozenset(),
) -> None:
    for k, (chunk, upto) in enumerate(zip(chunks, seconds, strict=True)):
        if speed > 0:  # as a live source: a chunk leaves once its last sample has been captured
            delay = t0 + upto / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(chunk)
        result.audio_sent_s.append((time.monotonic() - t0, upto))
        if flush is not None and k in flush_after:
            await ws.send(flush)
            result.controls_sent.append((time.monotonic() - t0, upto))
        if on_progress:
            on_progress(upto)


async def stream_deepgram(
    url: str,
    pcm: bytes,
    *,
    speed: float,
    language: str,
    partials: bool,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    on_progress: Any = None,
    model: str = "nova-3",
    flush_after: set[int] | frozenset[int] = frozenset(),
    vad: VadOptions = DEFAULT_VAD,
) -> StreamResult:
    query = {
        "encoding": "linear16",
        "sample_rate": 16000,
        "language": language,
        "model": model,
        "punctuate": "true",
        "interim_results": str(partials).lower(),
        "endpointing": vad.min_silence_duration_ms,
    }
    target = f"{base_url(url)}/v1/listen?{urlencode(query)}"
    headers = {"Authorization": f"Token {api_key}"} if api_key else {}
    result, num = StreamResult(), 0
    frame = 1024
    chunks = [pcm[i : i + frame] for i in range(0, len(pcm), frame)]
    seconds = [min(len(pcm), i + frame) / 32000 for i in range(0, len(pcm), frame)]
    async with websockets.connect(target, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        t0 = time.monotonic()

        async def receive() -> None:
            nonlocal num
            async for raw in ws:
                msg, t = json.loads(raw), time.monotonic() - t0
                if msg.get("type") == "Results":
                    text = msg["channel"]["alternatives"][0]["transcript"]
                    start = msg["start"]
                    result.received.append(
                        Received(
                            t, _transcription(msg["is_final"], num, start, start + msg["duration"], text)
                        )
                    )
                    num += bool(msg["is_final"])
                elif msg.get("type") == "Metadata":
                    result.received.append(Received(t, {"type": "end_audio", "body": {"status": "finished"}}))
                    return

        reader = asyncio.create_task(receive())
        finalize = json.dumps({"type": "Finalize"})
        await _paced(ws, chunks, seconds, speed, result, t0, on_progress, finalize, flush_after)
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(reader, timeout_s)
    return result


async def stream_openai(
    url: str,
    pcm: bytes,
    *,
    speed: float,
    language: str,
    partials: bool,
    api_key: str | None = None,
    timeout_s: float = 300.0,
    on_progress: Any = None,
    model: str = "gpt-4o-transcribe",
    flush_after: set[int] | frozenset[int] = frozenset(),
    vad: VadOptions = DEFAULT_VAD,
    rate: int = 24000,
) -> StreamResult:
    """`rate`: the sample rate sent (OpenAI's own endpoint takes 24000; this server 8000-48000, and at 16000
    it gets the very bytes the other protocols send, nothing resampled on either side)."""
    import soxr

    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    pcm_out = (
        pcm
        if rate == 16000
        else (np.clip(soxr.resample(audio, 16000, rate), -1, 1) * 32767).astype("<i2").tobytes()
    )
    target = f"{base_url(url)}/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    step = round(FRAME_S * rate) * 2  # 32 ms of pcm16, as the other protocols' frames
    chunks = [
        json.dumps(
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm_out[i : i + step]).decode()}
        )
        for i in range(0, len(pcm_out), step)
    ]
    seconds = [min(len(pcm_out), i + step) / (2 * rate) for i in range(0, len(pcm_out), step)]
    result = StreamResult()
    items: dict[str, dict[str, Any]] = {}  # item -> num, start, end, text
    committed: list[str] = []
    completed: set[str] = set()
    session = {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": rate},
                "transcription": {"model": model, "language": None if language == "auto" else language},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": vad.threshold,
                    "prefix_padding_ms": vad.speech_pad_ms,
                    "silence_duration_ms": vad.min_silence_duration_ms,
                },
            }
        },
    }
    async with websockets.connect(target, additional_headers=headers, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        t0 = time.monotonic()
        sent_all = asyncio.Event()

        def item(item_id: str) -> dict[str, Any]:
            return items.setdefault(item_id, {"num": len(items), "start": 0.0, "end": 0.0, "text": ""})

        async def receive() -> None:
            async for raw in ws:
                msg, t = json.loads(raw), time.monotonic() - t0
                kind = msg.get("type", "")
                if kind == "input_audio_buffer.speech_started":
                    item(msg["item_id"])["start"] = msg["audio_start_ms"] / 1000
                elif kind == "input_audio_buffer.speech_stopped":
                    item(msg["item_id"])["end"] = msg["audio_end_ms"] / 1000
                elif kind == "input_audio_buffer.committed":
                    committed.append(msg["item_id"])
                elif kind.endswith("input_audio_transcription.delta") and partials:
                    it = item(msg["item_id"])
                    it["text"] += msg.get("delta") or ""
                    end = it["end"] or (result.audio_sent_s[-1][1] if result.audio_sent_s else 0.0)
                    result.received.append(
                        Received(t, _transcription(False, it["num"], it["start"], end, it["text"].strip()))
                    )
                elif kind.endswith("input_audio_transcription.completed"):
                    it = item(msg["item_id"])
                    end = it["end"] or (result.audio_sent_s[-1][1] if result.audio_sent_s else 0.0)
                    result.received.append(
                        Received(
                            t, _transcription(True, it["num"], it["start"], end, msg["transcript"].strip())
                        )
                    )
                    completed.add(msg["item_id"])
                elif kind == "error":
                    result.received.append(Received(t, {"type": "error", "body": msg.get("error", {})}))
                if sent_all.is_set() and committed and set(committed) <= completed:
                    result.received.append(Received(t, {"type": "end_audio", "body": {"status": "finished"}}))
                    return

        reader = asyncio.create_task(receive())
        commit = json.dumps({"type": "input_audio_buffer.commit"})
        await _paced(ws, chunks, seconds, speed, result, t0, on_progress, commit, flush_after)
        await ws.send(commit)
        sent_all.set()
        await asyncio.wait_for(reader, timeout_s)
    return result
