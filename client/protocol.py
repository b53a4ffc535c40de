"""The client side of the protocol: send metadata, PCM frames paced in real time, end_audio; collect replies.

Every reply is kept with its arrival time (monotonic seconds since the first audio frame), which is what the
benchmark measures latency from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import websockets

from whisper_stream.settings import ENV_PREFIX, ServerSettings

URL_ENV = "WHISPER_STREAM_URL"
PORT_ENV = f"{ENV_PREFIX}PORT"  # the variable `whisper-stream serve` reads its port from
DEFAULT_PORT: int = ServerSettings.model_fields["port"].default
FRAME_SAMPLES = 512  # what every documented client sends: 32 ms at 16 kHz
FRAME_S = FRAME_SAMPLES / 16000


def default_url() -> str:
    """$WHISPER_STREAM_URL, else the local server on $WHISPER_STREAM_PORT (the server's own variable, so a
    port exported for `whisper-stream serve` reaches the clients too), else on the server's default port."""
    if url := os.environ.get(URL_ENV):
        return url
    return f"ws://127.0.0.1:{os.environ.get(PORT_ENV) or DEFAULT_PORT}/v1/websocket"


def is_transcription(msg: dict[str, Any], final: bool | None = None) -> bool:
    """A transcription message; with `final`, only finals (True) or only partials (False)."""
    if msg.get("type") != "transcription":
        return False
    return final is None or bool(msg.get("is_final")) == final


def finals_text(messages: Iterable[dict[str, Any]]) -> str:
    """The finals' transcripts joined: what a stream said, as the protocol's messages tell it."""
    return " ".join(
        m["transcript"] for m in messages if is_transcription(m, True) and m["transcript"]
    ).strip()


@dataclass
class Received:
    t: float  # seconds since the first audio frame was sent
    message: dict[str, Any]


@dataclass
class StreamResult:
    received: list[Received] = field(default_factory=list)
    audio_sent_s: list[tuple[float, float]] = field(default_factory=list)  # (wall t, audio seconds sent)
    controls_sent: list[tuple[float, float]] = field(default_factory=list)  # text frames: (wall t, audio s)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [r.message for r in self.received if is_transcription(r.message, True)]

    @property
    def partials(self) -> list[dict[str, Any]]:
        return [r.message for r in self.received if is_transcription(r.message, False)]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r.message for r in self.received if r.message.get("type") == "error"]

    @property
    def text(self) -> str:
        return finals_text(self.finals)

    @property
    def finished(self) -> bool:
        return any(
            r.message.get("type") == "end_audio" and r.message["body"].get("status") == "finished"
            for r in self.received
        )


def refusal(exc: websockets.InvalidStatus) -> str:
    """One line for a refused handshake, with the server's own explanation (its response body)."""
    status = exc.response.status_code
    body = " ".join(bytes(exc.response.body or b"").decode("utf-8", "replace").split())[:200]
    hint = " (check --api-key)" if status in (401, 403) else ""
    return f"the server refused the connection: HTTP {status}{': ' + body if body else ''}{hint}"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Api-Key {api_key}"} if api_key else {}


def metadata(
    *,
    language: str = "en",
    partials: bool = False,
    partial_interval_s: float = 0.5,
    threshold: float = 0.5,
    min_silence_ms: int = 300,
    speech_pad_ms: int = 30,
    encoding: str = "pcm_s16le",
    sample_rate: int = 16000,
    **whisper: Any,
) -> dict[str, Any]:
    return {
        "streaming_vad_config": {
            "threshold": threshold,
            "min_silence_duration_ms": min_silence_ms,
            "speech_pad_ms": speech_pad_ms,
        },
        "streaming_params": {
            "encoding": encoding,
            "sample_rate": sample_rate,
            "enable_partial_transcripts": partials,
            "partial_transcript_interval_s": partial_interval_s,
        },
        "whisper_params": {"audio_language": language, **whisper},
    }


def add_stream_options(
    parser: argparse.ArgumentParser,
    *,
    partials_default: bool,
    partials_help: str | None = None,
    connection: bool = True,
    url_help: str = "",
    language_help: str = "audio_language: ISO code or 'auto' (default en)",
) -> None:
    """The options every client tool shares; `metadata_from_args` turns them into the stream's metadata.

    `connection=False` leaves out --url (default `default_url()`; `url_help` is appended to its help) and
    --api-key (env BASETEN_API_KEY), for a tool that declares its own
    (the benchmark's repeat, one per server).
    """
    if connection:
        parser.add_argument(
            "--url",
            default=default_url(),
            help=f"WebSocket URL (default ${URL_ENV}, else ws://127.0.0.1:${PORT_ENV}/v1/websocket, "
            f"port {DEFAULT_PORT} when unset){url_help}",
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("BASETEN_API_KEY"),
            help="sent as 'Authorization: Api-Key KEY' (env BASETEN_API_KEY)",
        )
    parser.add_argument("--language", default="en", help=language_help)
    parser.add_argument(
        "--partials",
        action=argparse.BooleanOptionalAction,
        default=partials_default,
        help=partials_help or f"ask for partial transcripts (default {'on' if partials_default else 'off'})",
    )
    parser.add_argument(
        "--partial-interval",
        type=float,
        default=0.5,
        metavar="S",
        help="partial_transcript_interval_s (default 0.5)",
    )
    parser.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability threshold (0.5)")
    parser.add_argument(
        "--min-silence-ms", type=int, default=300, help="silence that ends an utterance (300)"
    )
    parser.add_argument("--speech-pad-ms", type=int, default=30, help="padding around speech (30)")


def metadata_from_args(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """`metadata(...)` from the options of `add_stream_options`; `overrides` adds or replaces arguments."""
    options: dict[str, Any] = {
        "language": args.language,
        "partials": args.partials,
        "partial_interval_s": args.partial_interval,
        "threshold": args.vad_threshold,
        "min_silence_ms": args.min_silence_ms,
        "speech_pad_ms": args.speech_pad_ms,
    }
    return metadata(**{**options, **overrides})


async def stream_pcm(
    url: str,
    meta: dict[str, Any],
    pcm: bytes,
    *,
    speed: float = 1.0,
    frame_bytes: int = FRAME_SAMPLES * 2,
    bytes_per_second: int = 32000,
    api_key: str | None = None,
    end_audio: bool = True,
    timeout_s: float = 300.0,
    on_message: Any = None,
    on_progress: Callable[[float], None] | None = None,
    after_frame: dict[int, str] | None = None,
    on_connect: Callable[[], None] | None = None,
) -> StreamResult:
    """Stream `pcm` paced at `speed` x real time (0 = as fast as possible) and collect every reply.

    `on_progress(audio_seconds_sent)` is called after every frame (the benchmark's progress bar).
    `after_frame`: a text frame (e.g. `{"type": "finalize"}`) to send right after audio frame k.
    """
    controls = after_frame or {}

    async def paced() -> AsyncIterator[bytes | str]:
        t0 = time.monotonic()
        for i in range(0, len(pcm), frame_bytes):
            if speed > 0:  # as a live source: a frame leaves once its last sample has been captured
                captured = min(i + frame_bytes, len(pcm)) / bytes_per_second / speed
                delay = t0 + captured - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield pcm[i : i + frame_bytes]
            if i // frame_bytes in controls:
                yield controls[i // frame_bytes]

    return await stream_frames(
        url,
        meta,
        paced(),
        bytes_per_second=bytes_per_second,
        api_key=api_key,
        end_audio=end_audio,
        timeout_s=timeout_s,
        on_message=on_message,
        on_progress=on_progress,
        on_connect=on_connect,
    )


async def stream_frames(
    url: str,
    meta: dict[str, Any],
    frames: AsyncIterator[bytes] | AsyncIterator[bytes | str],
    *,
    bytes_per_second: int = 32000,
    api_key: str | None = None,
    end_audio: bool = True,
    timeout_s: float = 300.0,
    on_message: Callable[[Received], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_connect: Callable[[], None] | None = None,
) -> StreamResult:
    """Send the metadata, then every frame `frames` yields (a file, a microphone...), then `end_audio`.

    The pacing belongs to the iterator: a file is paced by `stream_pcm`, a microphone by its own clock. After
    `end_audio` it waits (at most `timeout_s`) until the server closes, i.e. after `finished`, so the result
    holds the last finals. Arrival times and audio progress share one clock: seconds since the metadata
    was sent (just before the first frame). A `str` from `frames` is sent as a text frame (a control
    message); its send time is kept in `controls_sent`. `on_connect()` runs once the handshake succeeded
    (the tools print the URL they reached).
    """
    result = StreamResult()
    async with websockets.connect(
        url, additional_headers=auth_headers(api_key), max_size=None, open_timeout=30
    ) as ws:
        if on_connect:
            on_connect()
        await ws.send(json.dumps(meta))
        t0 = time.monotonic()

        async def receive() -> None:
            try:
                async for raw in ws:
                    msg = json.loads(raw)
                    item = Received(time.monotonic() - t0, msg)
                    result.received.append(item)
                    if on_message:
                        on_message(item)
            except websockets.ConnectionClosed:
                pass

        reader = asyncio.create_task(receive())
        sent = 0
        try:
            async for frame in frames:
                if reader.done():
                    break
                if isinstance(frame, str):
                    await ws.send(frame)
                    result.controls_sent.append((time.monotonic() - t0, sent / bytes_per_second))
                    continue
                await ws.send(frame)
                sent += len(frame)
                result.audio_sent_s.append((time.monotonic() - t0, sent / bytes_per_second))
                if on_progress:
                    on_progress(sent / bytes_per_second)
            if end_audio and not reader.done():
                await ws.send(json.dumps({"type": "end_audio"}))
            await asyncio.wait_for(reader, timeout_s) if end_audio else None
        except websockets.ConnectionClosed:
            await reader
        finally:
            reader.cancel()
        result.close_code, result.close_reason = ws.close_code, ws.close_reason or ""
    return result


def frame_samples(sample_rate: int) -> int:
    """32 ms of audio, as the documented clients send (512 samples at 16 kHz, 256 at 8 kHz)."""
    return max(1, round(sample_rate * FRAME_S))
