"""Drives one Session over any message transport: the loop every adapter (websockets, Truss) shares.

The adapters only wrap their connection object in a `Transport`. One reader task per stream takes messages
off the socket into a small byte-bounded queue: when the queue is full the reader stops reading, and TCP
pushes back on the client instead of the server's memory growing. The stream's loop applies messages and
engine results in order, runs the audio front end off the event loop (`frontend.py`), stops taking audio
while `max_finals_in_flight` finals are unanswered, sheds partials and then closes a stream whose
unprocessed audio exceeds `max_lag_s`, and closes a client that does not read what it is sent.

Every limit is in `Limits`, with its cost. Memory per stream (defaults, 16 kHz):
  session audio buffer   (final_transcript_max_duration_s + 2 x speech_pad + 4 s) x 64 kB/s  ~ 2.2 MB
  queued messages        <= max_frame_bytes (1 MiB) + the message being processed (1 MiB)
  socket buffers         websockets: max_size x (max_queue + 1) = 2 MiB in, write_limit 64 KiB out
  requests in flight     (max_finals_in_flight + 1 partial) x window audio (<= 30 s x 64 kB/s = 1.9 MB)
i.e. about 2.5 MB for a real-time stream with 5 s utterances, and at most ~16 MB for a client that sends
maximal frames with 30 s utterances as fast as it can.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

from whisper_stream import messages, metrics
from whisper_stream.config import ConfigError, StreamConfig, parse_metadata
from whisper_stream.engines.interface import TranscribeResult
from whisper_stream.frontend import FrontEnd
from whisper_stream.scheduler import Job, Scheduler
from whisper_stream.session import Close, Send, Session, Transcribe
from whisper_stream.vad import SileroModel, SileroStream

log = logging.getLogger(__name__)

# Close codes (RFC 6455): 1001 going away, 1003 data we cannot accept, 1007 inconsistent payload, 1008 policy,
# 1009 too big, 1011 internal error, 1013 try again later.
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason is at most 123 bytes of UTF-8


class TransportClosed(Exception):
    """The peer went away."""


class Transport(Protocol):
    async def recv(self) -> str | bytes: ...  # raises TransportClosed

    async def send(self, text: str) -> None: ...  # raises TransportClosed

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Every bound on a stream and on admission, in one place (memory costs: see the module docstring)."""

    max_frame_bytes: int = 1 << 20  # 1 MiB binary frame: ~32 s of 16 kHz s16le; larger -> 1009
    max_text_bytes: int = 64 << 10  # metadata and control messages (the prompt is <= 2000 characters)
    metadata_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0  # nothing from the client this long -> 1008 (not counted after end_audio)
    audio_idle_timeout_s: float = 600.0  # keep-alives alone hold a slot at most this long -> 1008
    max_streams: int = 64  # hard cap per process (memory), whatever the engine's speed
    max_streams_per_client: int = 16  # per API key, or per client address without one
    admit_max_delay_s: float = 3.0  # refuse new streams (1013) while finals wait longer for the engine
    max_lag_s: float = 30.0  # unprocessed audio per stream; partials stop at half, beyond -> 1013
    max_finals_in_flight: int = 4  # audio is not read while this many finals are unanswered
    send_timeout_s: float = 30.0  # a client that does not read for this long is closed (1008)
    drain_timeout_s: float = 25.0  # on SIGTERM, time for the streams' last finals before 1001


class Runtime:
    """What all streams of a process share: the scheduler, the VAD front end, the limits, the streams."""

    def __init__(self, scheduler: Scheduler, vad: SileroModel, limits: Limits | None = None) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.frontend = FrontEnd(vad)
        self.limits = limits or Limits()
        self.draining = False
        self.streams: set[_StreamLoop] = set()
        self.per_client: collections.Counter[str] = collections.Counter()

    @property
    def active(self) -> int:
        return len(self.streams)

    def check_config(self, config: StreamConfig) -> None:
        try:
            self.scheduler.engine.check_options(config.decode_options())
        except ValueError as exc:
            raise ConfigError(str(exc), unsupported=True) from None

    def refusal(self, client: str) -> str | None:
        """Why a new stream cannot be admitted now, or None."""
        limits = self.limits
        if self.draining:
            return "the server is shutting down; reconnect to another replica"
        if self.active >= limits.max_streams:
            return f"the server is at its limit of {limits.max_streams} streams; retry later"
        if client and self.per_client[client] >= limits.max_streams_per_client:
            return f"this client already has {limits.max_streams_per_client} streams open"
        delay = self.scheduler.delay_s()
        if delay > limits.admit_max_delay_s:
            return f"the server is at capacity (finals wait {delay:.1f} s for the engine); retry later"
        return None

    async def drain(self) -> None:
        """Graceful shutdown: refuse new streams, turn each stream's pending speech into its final, deliver
        it and close with 1001, within `drain_timeout_s`; what is left then is closed anyway."""
        self.draining = True
        for stream in list(self.streams):
            stream.shutdown()
        deadline = time.monotonic() + self.limits.drain_timeout_s
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for stream in list(self.streams):
            await stream.abort(CLOSE_GOING_AWAY, "server is shutting down")


def _dumps(msg: dict[str, Any]) -> str:
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the client (e.g. in trace_id): escape, do not drop
        text = json.dumps(msg, separators=(",", ":"))
    return text


def close_reason(message: str) -> str:
    """`message` cut to a close frame's 123 bytes of UTF-8, never inside a character."""
    return message.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


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
    await transport.close(code, close_reason(message))


async def serve_stream(transport: Transport, runtime: Runtime, client: str = "") -> None:
    """Run one stream from its metadata frame to its close. `client` (API key or address) for its limit."""
    refusal = runtime.refusal(client)
    if refusal is not None:
        await _fail(transport, "STREAM_ERROR", refusal, CLOSE_TRY_AGAIN, None)
        return
    metrics.STREAMS.inc()
    metrics.STREAMS_TOTAL.inc()
    runtime.per_client[client] += 1
    try:
        opened = await _open(transport, runtime)
        if opened is not None:
            await _StreamLoop(transport, runtime, *opened).run()
    except TransportClosed:
        pass
    finally:
        runtime.per_client[client] -= 1
        if runtime.per_client[client] <= 0:
            del runtime.per_client[client]
        metrics.STREAMS.dec()


async def _open(transport: Transport, runtime: Runtime) -> tuple[Session, SileroStream] | None:
    """The metadata frame -> a Session and its VAD stream, or an error frame and a close that says why."""
    limits = runtime.limits
    try:
        first = await asyncio.wait_for(transport.recv(), limits.metadata_timeout_s)
    except TimeoutError:
        message = f"no metadata within {limits.metadata_timeout_s:g} s"
        await _fail(transport, "CONFIGURATION_ERROR", message, CLOSE_POLICY, None)
        return None
    if isinstance(first, bytes):
        message = "the first frame must be the JSON metadata (text), got binary audio"
        await _fail(transport, "CONFIGURATION_ERROR", message, CLOSE_UNSUPPORTED, None)
        return None
    if len(first.encode("utf-8", "replace")) > limits.max_text_bytes:
        message = f"metadata of more than {limits.max_text_bytes} bytes"
        await _fail(transport, "CONFIGURATION_ERROR", message, CLOSE_TOO_BIG, None)
        return None
    try:
        raw = json.loads(first)
    except RecursionError:
        message = "metadata is not valid JSON: nested too deeply"
        await _fail(transport, "CONFIGURATION_ERROR", message, CLOSE_INVALID, None)
        return None
    except ValueError as exc:
        message = f"metadata is not valid JSON: {str(exc)[:160]}"
        await _fail(transport, "CONFIGURATION_ERROR", message, CLOSE_INVALID, None)
        return None
    stream_id = raw.get("stream_id") if isinstance(raw, dict) else None
    if not isinstance(stream_id, str) or not stream_id.isprintable() or len(stream_id) > 128:
        stream_id = None
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
        return None
    vad = runtime.vad.stream()
    session = Session(config, vad, stream_id=stream_id, max_partial_lag_s=limits.max_lag_s / 2)
    return session, vad


class _StreamLoop:
    """One stream after its metadata: a reader task feeding a bounded queue, and the loop that applies it."""

    def __init__(self, transport: Transport, runtime: Runtime, session: Session, vad: SileroStream) -> None:
        self.transport, self.runtime, self.session = transport, runtime, session
        self.limits = runtime.limits
        self._vad = vad  # the session's VAD stream, which the front end batches with the other streams'
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._inbox_bytes = 0
        self._results: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()  # something arrived (a message, a result, the reader's end, a drain)
        self._space = asyncio.Event()  # the inbox has room again
        self._space.set()
        self._reader_done: str | None = None  # "closed" once the client has gone
        self._drain = False
        self._final_asked: dict[int, float] = {}  # utterance number -> when its final was requested
        self._open = True

    # -- called from outside ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._drain = True
        self._wake.set()

    async def abort(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            await self.transport.close(code, reason)

    # -- the two tasks ---------------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                await self._space.wait()
                message = await self.transport.recv()
                self._inbox.append(message)
                self._inbox_bytes += len(message)
                if self._inbox_bytes >= self.limits.max_frame_bytes:
                    self._space.clear()  # TCP backpressure: nothing more is read until the loop catches up
                self._wake.set()
        except TransportClosed:
            self._reader_done = "closed"
            self._wake.set()

    def _on_result(self, rid: int) -> Any:
        def callback(result: TranscribeResult | None, error: str | None, timing: Any) -> None:
            self._results.append((rid, result, error, time.time(), timing))
            self._wake.set()

        return callback

    async def run(self) -> None:
        runtime, session = self.runtime, self.session
        runtime.streams.add(self)
        reader = asyncio.create_task(self._reader())
        try:
            await self._loop()
        except TransportClosed:
            self._open = False
        except Exception as exc:  # a bug in one stream: that stream gets an error, the others go on
            log.exception("stream %s failed", session.stream_id)
            if self._open:
                self._open = False
                message = f"internal error in this stream ({type(exc).__name__}); it was closed"
                await _fail(self.transport, "INTERNAL_ERROR", message, CLOSE_INTERNAL, session.stream_id)
        finally:
            reader.cancel()
            runtime.scheduler.cancel(session)
            runtime.streams.discard(self)
            if self._open:
                self._open = False
                await self.transport.close(1000, "")

    async def _loop(self) -> None:
        session, limits = self.session, self.limits
        last_heard = last_audio = time.monotonic()
        while self._open and not session.finished:
            if self._results:
                await self._apply(session.on_result(*self._results.popleft()))
                continue
            if self._drain:
                self._drain = False
                await self._apply(session.shutdown())
                continue
            if self._inbox and (
                session.finals_in_flight < limits.max_finals_in_flight or not session.accepting_audio
            ):
                message = self._inbox.popleft()
                self._inbox_bytes -= len(message)
                if self._inbox_bytes < limits.max_frame_bytes:
                    self._space.set()
                last_heard = time.monotonic()
                if isinstance(message, bytes) and session.accepting_audio:
                    last_audio = last_heard
                await self._handle(message)
                continue
            if self._reader_done and not self._inbox:
                self._open = False  # the client went away: nothing more can be delivered
                return
            # nothing to do: wait, and time out the client only while it is the one we wait for
            self._wake.clear()
            waiting_for_client = session.accepting_audio and not self._inbox
            if not waiting_for_client:
                await self._wake.wait()
                continue
            now = time.monotonic()
            idle_left = limits.idle_timeout_s - (now - last_heard)
            audio_left = limits.audio_idle_timeout_s - (now - last_audio)
            if idle_left <= 0 or audio_left <= 0:
                what = "audio or control message" if idle_left <= 0 else "audio (only keep-alives)"
                seconds = limits.idle_timeout_s if idle_left <= 0 else limits.audio_idle_timeout_s
                message = f"no {what} for {seconds:g} s: closing the idle stream"
                self._open = False
                await _fail(self.transport, "STREAM_ERROR", message, CLOSE_POLICY, session.stream_id)
                return
            try:
                await asyncio.wait_for(self._wake.wait(), min(idle_left, audio_left))
            except TimeoutError:
                pass

    async def _handle(self, message: str | bytes) -> None:
        session, limits, now = self.session, self.limits, time.time()
        if isinstance(message, str):
            if len(message.encode("utf-8", "replace")) > limits.max_text_bytes:
                await self._fail(
                    "STREAM_ERROR",
                    f"text frame over {limits.max_text_bytes} bytes: control messages are small",
                    CLOSE_TOO_BIG,
                )
                return
            await self._apply(session.handle_text(message, now))
            return
        if len(message) > limits.max_frame_bytes:
            await self._fail(
                "AUDIO_PROCESSING_ERROR",
                f"audio frame of {len(message)} bytes exceeds the limit of {limits.max_frame_bytes} bytes",
                CLOSE_TOO_BIG,
            )
            return
        if not session.accepting_audio:
            await self._apply(session.feed_audio(message, now))  # a recoverable error
            return
        started = time.perf_counter()
        actions = await self.runtime.frontend.feed(session, self._vad, message)
        session.add_processing_time(time.perf_counter() - started)
        await self._apply(actions)
        if session.lag_s > limits.max_lag_s:
            await self._fail(
                "STREAM_ERROR",
                f"the server is {session.lag_s:.0f} s behind this stream (limit {limits.max_lag_s:g} s): "
                "send audio in real time, or retry later",
                CLOSE_TRY_AGAIN,
            )

    async def _fail(self, error_type: str, message: str, code: int) -> None:
        self._open = False
        await _fail(self.transport, error_type, message, code, self.session.stream_id)

    async def _send(self, msg: dict[str, Any]) -> None:
        self._count(msg)
        try:
            await asyncio.wait_for(self.transport.send(_dumps(msg)), self.limits.send_timeout_s)
        except TimeoutError:
            log.warning("stream %s: client does not read; closing", self.session.stream_id)
            self._open = False
            await self.transport.close(CLOSE_POLICY, "client does not read its messages")
            raise TransportClosed from None

    async def _apply(self, actions: list[Any]) -> None:
        session, scheduler = self.session, self.runtime.scheduler
        for action in actions:
            if isinstance(action, Send):
                await self._send(action.message)
            elif isinstance(action, Transcribe):
                if action.kind == "final":
                    self._final_asked[action.segment] = time.monotonic()
                rid = action.request_id
                job = Job(session, action.kind, action.request, self._on_result(rid))
                if action.kind == "partial":
                    job.wanted = lambda rid=rid: session.partial_wanted(rid)
                scheduler.submit(job)
            elif isinstance(action, Close):
                self._open = False
                await self.transport.close(action.code, close_reason(action.reason))

    def _count(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type", "")
        if kind == "transcription":
            kind = "final" if msg["is_final"] else "partial"
            asked = self._final_asked.pop(msg["transcription_num"], None) if msg["is_final"] else None
            if asked is not None:
                metrics.FINAL_SECONDS.observe(time.monotonic() - asked)
        elif kind == "error":
            metrics.ERRORS.labels(msg["body"]["error_type"]).inc()
        metrics.MESSAGES.labels(kind).inc()
