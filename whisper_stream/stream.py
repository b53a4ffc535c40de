"""Drives one Session over any message transport: the loop every adapter (websockets, Truss) shares.

The adapters only wrap their connection object in a `Transport`. Everything here happens on one asyncio
task per stream: incoming frames and engine results are processed in arrival order, so a client that closes
the socket gets every message that was ready before its close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from whisper_stream import messages, metrics
from whisper_stream.config import ConfigError, StreamConfig, parse_metadata
from whisper_stream.engines.interface import TranscribeResult
from whisper_stream.scheduler import Job, Scheduler
from whisper_stream.session import Close, Send, Session, Transcribe
from whisper_stream.vad import SileroModel

log = logging.getLogger(__name__)

# Close codes (RFC 6455): 1003 data we cannot accept, 1007 inconsistent payload, 1008 policy, 1009 too big.
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013


class TransportClosed(Exception):
    """The peer went away."""


class Transport(Protocol):
    async def recv(self) -> str | bytes: ...  # raises TransportClosed

    async def send(self, text: str) -> None: ...  # raises TransportClosed

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Per-stream bounds. Memory per stream is about 2 MB of audio buffer plus one frame."""

    max_frame_bytes: int = 1 << 20  # 1 MiB: ~32 s of 16 kHz s16le in one frame
    metadata_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0  # no audio and no control message for this long closes the stream
    max_streams: int = 64


class Runtime:
    """What all streams of a process share: the engine's scheduler, the VAD model, the limits."""

    def __init__(self, scheduler: Scheduler, vad: SileroModel, limits: Limits | None = None) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.limits = limits or Limits()
        self.active = 0

    def check_config(self, config: StreamConfig) -> None:
        check = getattr(self.scheduler.engine, "check_options", None)
        if check is not None:
            try:
                check(config.decode_options())
            except ValueError as exc:
                raise ConfigError(str(exc), unsupported=True) from None


def _dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


async def _fail(
    transport: Transport, error_type: str, message: str, code: int, stream_id: str | None, **extra: Any
) -> None:
    msg = messages.error(
        error_type, message, stream_id=stream_id, recoverable=False, now=time.time(), **extra
    )
    metrics.ERRORS.labels(error_type).inc()
    try:
        await transport.send(_dumps(msg))
    except TransportClosed:
        return
    await transport.close(code, message[:120])


async def serve_stream(transport: Transport, runtime: Runtime) -> None:
    """Run one stream from its metadata frame to its close."""
    limits = runtime.limits
    if runtime.active >= limits.max_streams:
        await _fail(
            transport,
            "STREAM_ERROR",
            f"server is at its limit of {limits.max_streams} streams; retry later",
            CLOSE_TRY_AGAIN,
            None,
        )
        return
    runtime.active += 1
    metrics.STREAMS.inc()
    metrics.STREAMS_TOTAL.inc()
    try:
        await _serve(transport, runtime)
    except TransportClosed:
        pass
    finally:
        runtime.active -= 1
        metrics.STREAMS.dec()


async def _serve(transport: Transport, runtime: Runtime) -> None:
    limits = runtime.limits
    try:
        first = await asyncio.wait_for(transport.recv(), limits.metadata_timeout_s)
    except TimeoutError:
        await _fail(
            transport,
            "CONFIGURATION_ERROR",
            f"no metadata within {limits.metadata_timeout_s:g} s",
            CLOSE_POLICY,
            None,
        )
        return
    if isinstance(first, bytes):
        await _fail(
            transport,
            "CONFIGURATION_ERROR",
            "the first frame must be the JSON metadata (text), got binary audio",
            CLOSE_UNSUPPORTED,
            None,
        )
        return
    try:
        raw = json.loads(first)
    except ValueError as exc:
        await _fail(
            transport, "CONFIGURATION_ERROR", f"metadata is not valid JSON: {exc}", CLOSE_INVALID, None
        )
        return
    stream_id = (
        raw.get("stream_id") if isinstance(raw, dict) and isinstance(raw.get("stream_id"), str) else None
    )
    stream_id = stream_id or uuid.uuid4().hex[:12]
    try:
        config = parse_metadata(raw)
        runtime.check_config(config)
    except ConfigError as exc:
        code = (
            CLOSE_UNSUPPORTED
            if exc.field in ("streaming_params.encoding", "streaming_params.sample_rate")
            else CLOSE_POLICY
            if exc.unsupported
            else CLOSE_INVALID
        )
        await _fail(transport, "CONFIGURATION_ERROR", str(exc), code, stream_id, field=exc.field)
        return
    session = Session(config, runtime.vad.stream(), stream_id=stream_id)
    await _run_session(transport, runtime, session)


async def _run_session(transport: Transport, runtime: Runtime, session: Session) -> None:
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    scheduler = runtime.scheduler

    idle = runtime.limits.idle_timeout_s

    async def reader() -> None:
        try:
            while True:
                await events.put(("frame", await asyncio.wait_for(transport.recv(), idle)))
        except TransportClosed:
            await events.put(("closed", None))
        except TimeoutError:
            await events.put(("idle", None))

    def on_result(rid: int) -> Any:
        def callback(result: TranscribeResult | None, error: str | None, timing: Any) -> None:
            events.put_nowait(("result", (rid, result, error, time.time(), timing)))

        return callback

    final_asked: dict[int, float] = {}  # utterance number -> when its final was requested

    def count(msg: dict[str, Any]) -> None:
        kind = msg.get("type", "")
        if kind == "transcription":
            kind = "final" if msg["is_final"] else "partial"
            asked = final_asked.pop(msg["transcription_num"], None) if msg["is_final"] else None
            if asked is not None:
                metrics.FINAL_SECONDS.observe(time.monotonic() - asked)
        elif kind == "error":
            metrics.ERRORS.labels(msg["body"]["error_type"]).inc()
        metrics.MESSAGES.labels(kind).inc()

    read_task = asyncio.create_task(reader())
    client_open = True
    try:
        while True:
            kind, payload = await events.get()
            now = time.time()
            if kind == "closed":
                client_open = False
                break
            if kind == "idle":
                message = f"no audio or control message for {idle:g} s: closing the idle stream"
                await _fail(transport, "STREAM_ERROR", message, CLOSE_POLICY, session.stream_id)
                client_open = False
                break
            if kind == "result":
                actions = session.on_result(*payload)
            elif isinstance(payload, bytes):
                if len(payload) > runtime.limits.max_frame_bytes:
                    await _fail(
                        transport,
                        "AUDIO_PROCESSING_ERROR",
                        f"audio frame of {len(payload)} bytes exceeds the limit of "
                        f"{runtime.limits.max_frame_bytes} bytes",
                        CLOSE_TOO_BIG,
                        session.stream_id,
                    )
                    client_open = False
                    break
                started = time.perf_counter()
                actions = session.feed_audio(payload, now)
                session.add_processing_time(time.perf_counter() - started)
            else:
                actions = session.handle_text(payload, now)
            for action in actions:
                if isinstance(action, Send):
                    count(action.message)
                    await transport.send(_dumps(action.message))
                elif isinstance(action, Transcribe):
                    if action.kind == "final":
                        final_asked[action.segment] = time.monotonic()
                    rid = action.request_id
                    wanted = (
                        (lambda rid=rid: session.partial_wanted(rid)) if action.kind == "partial" else None
                    )
                    job = Job(session, action.kind, action.request, on_result(rid), urgent=action.urgent)
                    if wanted is not None:
                        job.wanted = wanted
                    if action.kind == "speculative":
                        job.wanted = lambda rid=rid: session.speculative_wanted(rid)
                        job.confirmed = lambda rid=rid: session.speculative_confirmed(rid)
                    scheduler.submit(job)
                elif isinstance(action, Close):
                    await transport.close(action.code, action.reason)
                    client_open = False
            if session.finished or not client_open:
                break
    except TransportClosed:
        client_open = False
    finally:
        read_task.cancel()
        scheduler.cancel(session)
        if client_open:
            await transport.close(1000, "")
