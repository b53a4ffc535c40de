"""Drives a stream's Session(s) over any message transport: the loop every adapter (websockets, Truss) and
every wire protocol (Baseten's here, `protocols/` for the others) shares.

The adapters only wrap their connection object in a `Transport`; a wire protocol is a `StreamProtocol`
that turns frames into session events and session actions into its own messages. Everything here happens on
one asyncio task per stream: incoming frames and engine results are processed in arrival order, so a client
that closes the socket gets every message that was ready before its close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from whisper_stream import messages, metrics
from whisper_stream.config import ConfigError, StreamConfig, parse_metadata
from whisper_stream.engines.interface import TranscribeResult
from whisper_stream.scheduler import Job, Scheduler
from whisper_stream.session import Action, Close, Event, Send, Session, Transcribe
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


Out = tuple[Session | None, Action]  # an action and the session it came from (None: the protocol's own)


class StreamProtocol(Protocol):
    """One connection's wire protocol: frames -> session events, session actions -> its messages.

    Only field names and message shapes: every streaming rule is the session's."""

    @property
    def sessions(self) -> Sequence[Session]: ...  # cancelled at the end of the stream

    @property
    def finished(self) -> bool: ...  # the stream is over (after its last message)

    def start(self, now: float) -> list[Out]: ...  # what the protocol says first, before any frame

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]: ...

    def on_result(
        self, session: Session, request_id: int, result: Any, error: str | None, now: float, timing: Any
    ) -> list[Out]: ...

    def render(self, session: Session | None, action: Send | Event) -> list[dict[str, Any]]: ...

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]: ...

    def idle(self, idle_s: float, now: float) -> list[Out]: ...


class BasetenProtocol:
    """Baseten's Whisper Streaming protocol after its metadata frame: the session speaks it natively."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.sessions = (session,)

    @property
    def finished(self) -> bool:
        return self.session.finished

    def start(self, now: float) -> list[Out]:
        return []

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]:
        if isinstance(frame, bytes):
            started = time.perf_counter()
            actions = self.session.feed_audio(frame, now)
            self.session.add_processing_time(time.perf_counter() - started)
        else:
            actions = self.session.handle_text(frame, now)
        return [(self.session, a) for a in actions]

    def on_result(
        self, session: Session, request_id: int, result: Any, error: str | None, now: float, timing: Any
    ) -> list[Out]:
        return [(session, a) for a in session.on_result(request_id, result, error, now, timing)]

    def render(self, session: Session | None, action: Send | Event) -> list[dict[str, Any]]:
        return [action.message] if isinstance(action, Send) else []

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]:
        msg = messages.error(
            error_type, message, stream_id=self.session.stream_id, recoverable=False, now=now
        )
        return [(None, Send(msg)), (None, Close(code, message[:120]))]

    def idle(self, idle_s: float, now: float) -> list[Out]:
        message = f"no audio or control message for {idle_s:g} s: closing the idle stream"
        return self.fail("STREAM_ERROR", message, CLOSE_POLICY, now)


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


async def serve_stream(
    transport: Transport, runtime: Runtime, protocol: StreamProtocol | None = None
) -> None:
    """Run one stream to its close: Baseten's (from its metadata frame) or, given, another `protocol`'s."""
    limits = runtime.limits
    if runtime.active >= limits.max_streams:
        message = f"server is at its limit of {limits.max_streams} streams; retry later"
        if protocol is None:
            await _fail(transport, "STREAM_ERROR", message, CLOSE_TRY_AGAIN, None)
        else:
            try:
                await _carry_out(
                    transport,
                    runtime,
                    protocol,
                    protocol.fail("STREAM_ERROR", message, CLOSE_TRY_AGAIN, time.time()),
                )
            except TransportClosed:
                pass
        return
    runtime.active += 1
    metrics.STREAMS.inc()
    metrics.STREAMS_TOTAL.inc()
    try:
        if protocol is None:
            await _serve(transport, runtime)
        else:
            await _drive(transport, runtime, protocol)
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
    session = Session(config, runtime.vad.stream(), stream_id=stream_id, check_config=runtime.check_config)
    await _drive(transport, runtime, BasetenProtocol(session))


def _count(msg: dict[str, Any], final_asked: dict[int, float]) -> None:
    """Prometheus counts of one outgoing message (Baseten-shaped session messages, or a protocol's own)."""
    kind = msg.get("type", "")
    if kind == "transcription":
        kind = "final" if msg["is_final"] else "partial"
        asked = final_asked.pop(msg["transcription_num"], None) if msg["is_final"] else None
        if asked is not None:
            metrics.FINAL_SECONDS.observe(time.monotonic() - asked)
    elif kind == "error" and isinstance(msg.get("body"), dict):
        metrics.ERRORS.labels(msg["body"]["error_type"]).inc()
    metrics.MESSAGES.labels(kind).inc()


async def _carry_out(
    transport: Transport,
    runtime: Runtime,
    protocol: StreamProtocol,
    outs: list[Out],
    on_result: Any = None,
    final_asked: dict[int, float] | None = None,
) -> bool:
    """Send, submit and close as the actions say; False once the stream was closed."""
    open_ = True
    for session, action in outs:
        if isinstance(action, Send | Event):
            if isinstance(action, Send):
                _count(action.message, final_asked if final_asked is not None else {})
            for wire in protocol.render(session, action):
                await transport.send(_dumps(wire))
        elif isinstance(action, Transcribe):
            assert session is not None and on_result is not None
            if action.kind == "final" and final_asked is not None and len(protocol.sessions) == 1:
                final_asked[action.segment] = time.monotonic()
            rid = action.request_id
            wanted = (
                (lambda rid=rid, session=session: session.partial_wanted(rid))
                if action.kind == "partial"
                else None
            )
            job = Job(session, action.kind, action.request, on_result(session, rid))
            if wanted is not None:
                job.wanted = wanted
            runtime.scheduler.submit(job)
        elif isinstance(action, Close):
            await transport.close(action.code, action.reason)
            open_ = False
    return open_


async def _drive(transport: Transport, runtime: Runtime, protocol: StreamProtocol) -> None:
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

    def on_result(session: Session, rid: int) -> Any:
        def callback(result: TranscribeResult | None, error: str | None, timing: Any) -> None:
            events.put_nowait(("result", (session, rid, result, error, time.time(), timing)))

        return callback

    final_asked: dict[int, float] = {}  # utterance number -> when its final was requested

    read_task = asyncio.create_task(reader())
    client_open = True
    try:
        client_open = await _carry_out(transport, runtime, protocol, protocol.start(time.time()))
        while client_open:
            kind, payload = await events.get()
            now = time.time()
            if kind == "closed":
                client_open = False
                break
            if kind == "idle":
                await _carry_out(transport, runtime, protocol, protocol.idle(idle, now))
                client_open = False
                break
            if kind == "result":
                outs = protocol.on_result(*payload)
            elif isinstance(payload, bytes) and len(payload) > runtime.limits.max_frame_bytes:
                message = (
                    f"audio frame of {len(payload)} bytes exceeds the limit of "
                    f"{runtime.limits.max_frame_bytes} bytes"
                )
                await _carry_out(
                    transport,
                    runtime,
                    protocol,
                    protocol.fail("AUDIO_PROCESSING_ERROR", message, CLOSE_TOO_BIG, now),
                )
                client_open = False
                break
            else:
                outs = protocol.on_frame(payload, now)
            client_open = await _carry_out(transport, runtime, protocol, outs, on_result, final_asked)
            if protocol.finished or not client_open:
                break
    except TransportClosed:
        client_open = False
    finally:
        read_task.cancel()
        for session in protocol.sessions:
            scheduler.cancel(session)
        if client_open:
            await transport.close(1000, "")
