"""Drives a stream's Session(s) over any message transport: the loop every adapter (websockets, Truss) and
every wire protocol (Baseten's here, `protocols/` for the others) shares.

The adapters only wrap their connection object in a `Transport`; a wire protocol is a `StreamProtocol` that
turns frames into session events and session actions into its own messages. One reader task per stream takes
messages off the socket into a small byte-bounded queue: when the queue is full the reader stops reading,
and TCP pushes back on the client instead of the server's memory growing. The stream's loop applies messages
and engine results in order, runs the audio front end off the event loop (`frontend.py`), stops taking audio
while `max_finals_in_flight` finals are unanswered, sheds partials and then closes a stream whose
unprocessed audio exceeds `max_lag_s`, and closes a client that does not read what it is sent.

Every limit is in `Limits`, with its cost. Memory per stream (defaults, 16 kHz):
  session audio buffer   (final_transcript_max_duration_s + 2 x speech_pad + 4 s) x 64 kB/s  ~ 2.2 MB
  queued messages        <= max_frame_bytes (1 MiB, each message counted with 128 bytes of overhead)
                         + the message being processed (1 MiB)
  socket buffers         websockets: max_size x (max_queue + 1) = 2 MiB in, write_limit 64 KiB out
  requests in flight     (max_finals_in_flight + 1 partial) x window audio (<= 30 s x 64 kB/s = 1.9 MB)
i.e. about 2.5 MB for a real-time stream with 5 s utterances, and at most ~16 MB for a client that sends
maximal frames with 30 s utterances as fast as it can.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
from whisper_stream.frontend import GATHER_MAX_BYTES, FrontEnd, Ticket, batched
from whisper_stream.scheduler import Job, Scheduler
from whisper_stream.session import Action, Close, Event, Send, Session, Transcribe
from whisper_stream.vad import SileroModel

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
# What a queued message costs beyond its payload (its Python objects): counted in the inbox's byte bound, so
# a flood of empty or 1-byte frames is held to ~8k messages, not let through for free.
MESSAGE_OVERHEAD_BYTES = 128


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
    # unprocessed audio per stream; partials stop at half, beyond -> 1013. An unpaced upload stays far below:
    # the inbox (<= max_frame_bytes, ~32 s) plus max_finals_in_flight utterances is all a stream can hold.
    max_lag_s: float = 120.0
    # audio is not read while this many finals are unanswered (one more can come from the <= 0.5 s of audio
    # already in the front end: `GATHER_MAX_BYTES`)
    max_finals_in_flight: int = 4
    send_timeout_s: float = 30.0  # a client that does not read for this long is closed (1008)
    drain_timeout_s: float = 25.0  # on SIGTERM, time for the streams' last finals before 1001
    close_timeout_s: float = 2.0  # a peer that does not answer our close frame is dropped after this


class Runtime:
    """What all streams of a process share: the scheduler, the VAD front end, the limits, the streams."""

    def __init__(self, scheduler: Scheduler, vad: SileroModel, limits: Limits | None = None) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.frontend = FrontEnd(vad)
        self.limits = limits or Limits()
        self.draining = False
        self.loop_watch: asyncio.Task[None] | None = None  # the server's event-loop lag probe
        self.streams: set[_StreamLoop] = set()
        self.opening: set[Transport] = set()  # admitted, still waiting for their metadata
        self.per_client: collections.Counter[str] = collections.Counter()

    @property
    def active(self) -> int:
        """Connections past admission: the streams, and those still waiting for their metadata."""
        return len(self.streams) + len(self.opening)

    def session(self, config: StreamConfig, **kwargs: Any) -> Session:
        """A new session on this runtime's VAD and limits (every protocol makes its sessions here)."""
        return Session(
            config,
            self.vad.stream(),
            max_partial_lag_s=self.limits.max_lag_s / 2,
            check_config=self.check_config,
            **kwargs,
        )

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
        reason = "server is shutting down"
        # no audio yet, nothing to deliver: closed now (their handlers then end)
        await asyncio.gather(*(t.close(CLOSE_GOING_AWAY, reason) for t in list(self.opening)))
        for stream in list(self.streams):
            stream.shutdown()
        deadline = time.monotonic() + self.limits.drain_timeout_s
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # all at once: each close waits up to close_timeout_s for a peer that may be gone
        await asyncio.gather(*(stream.abort(CLOSE_GOING_AWAY, reason) for stream in list(self.streams)))


@dataclass(frozen=True)
class Audio:
    """A protocol's audio for one session: the driver runs it through the front end, off the event loop,
    and hands the session's actions back to the protocol (`StreamProtocol.on_actions`)."""

    data: bytes


Out = tuple[Session | None, Action | Audio]  # an action and the session it came from (None: the protocol's)


class StreamProtocol(Protocol):
    """One connection's wire protocol: frames -> session events, session actions -> its messages.

    Only field names and message shapes: every streaming rule is the session's."""

    @property
    def sessions(self) -> Sequence[Session]: ...  # cancelled at the end of the stream

    @property
    def finished(self) -> bool: ...  # the stream is over (after its last message)

    def start(self, now: float) -> list[Out]: ...  # what the protocol says first, before any frame

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]: ...

    # a text frame that only carries audio (OpenAI's append): like a binary frame, it need not wait until the
    # audio before it has been applied
    def audio_only(self, frame: str) -> bool: ...

    def on_actions(self, session: Session, actions: list[Action]) -> list[Out]: ...  # after its Audio

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
            return [(self.session, Audio(frame))]
        return [(self.session, a) for a in self.session.handle_text(frame, now)]

    def audio_only(self, frame: str) -> bool:
        return False

    def on_actions(self, session: Session, actions: list[Action]) -> list[Out]:
        return [(session, a) for a in actions]

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
        return [(None, Send(msg)), (None, Close(code, message))]

    def idle(self, idle_s: float, now: float) -> list[Out]:
        message = f"no audio or control message for {idle_s:g} s: closing the idle stream"
        return self.fail("STREAM_ERROR", message, CLOSE_POLICY, now)


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


async def serve_stream(
    transport: Transport, runtime: Runtime, client: str = "", protocol: StreamProtocol | None = None
) -> None:
    """Run one stream to its close: Baseten's (from its metadata frame) or, given, another `protocol`'s.
    `client` (the peer's address) counts against the per-client stream limit."""
    refusal = runtime.refusal(client)
    if refusal is not None:
        if protocol is None:
            await _fail(transport, "STREAM_ERROR", refusal, CLOSE_TRY_AGAIN, None)
        else:
            await _StreamLoop(transport, runtime, protocol).refuse(refusal)
        return
    metrics.STREAMS.inc()
    metrics.STREAMS_TOTAL.inc()
    runtime.per_client[client] += 1
    try:
        if protocol is None:
            runtime.opening.add(transport)  # counts against max_streams before its metadata comes
            try:
                session = await _open(transport, runtime)
            finally:
                runtime.opening.discard(transport)
            if session is not None and runtime.draining:  # its metadata came after SIGTERM
                message = "the server is shutting down; reconnect to another replica"
                await _fail(transport, "STREAM_ERROR", message, CLOSE_GOING_AWAY, session.stream_id)
                return
            protocol = BasetenProtocol(session) if session is not None else None
        if protocol is not None:
            await _StreamLoop(transport, runtime, protocol).run()
    except TransportClosed:
        pass
    finally:
        runtime.per_client[client] -= 1
        if runtime.per_client[client] <= 0:
            del runtime.per_client[client]
        metrics.STREAMS.dec()


async def _open(transport: Transport, runtime: Runtime) -> Session | None:
    """Baseten's metadata frame -> a Session, or an error frame and a close that says why."""
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
    return runtime.session(config, stream_id=stream_id)


@dataclass(eq=False)
class _Audio:
    """A place in a stream's outgoing order held by audio in the front end: its actions go out from here."""

    ticket: Ticket
    nbytes: int = 0  # inbox bytes it holds until done (the messages it carries)
    audio_bytes: int = 0  # the audio it carries
    outs: list[Out] | None = None  # the protocol's outs for the ticket's actions, once done


class _StreamLoop:
    """One stream after its handshake: a reader task, a bounded inbox, and the loop that applies it.

    Audio takes a fast path: when nothing is queued before it, the reader hands a binary frame straight to
    the front end, whose tick applies it; the loop wakes only when that produced something to send. Every
    other message goes through the inbox. A control message is applied only once all audio before it has
    been; audio is taken while the front end holds at most `GATHER_MAX_BYTES` of this stream's. `_outs`
    holds what is owed to the client in the order the session produced it."""

    def __init__(self, transport: Transport, runtime: Runtime, protocol: StreamProtocol) -> None:
        self.transport, self.runtime, self.protocol = transport, runtime, protocol
        self.limits = runtime.limits
        self._inbox: collections.deque[str | bytes] = collections.deque()
        self._inbox_bytes = 0  # the inbox's messages and the audio still in the front end
        self._outs: collections.deque[Out | _Audio] = collections.deque()
        self._results: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = asyncio.Event()  # something to do (a message, a result, sendable outs, a drain, the end)
        self._space = asyncio.Event()  # the inbox has room again
        self._space.set()
        self._reader_done = False
        self._reader_error: Exception | None = None
        self._drain = False
        self._lag_failed = False
        self._in_frontend = 0  # tickets not yet applied: a control message waits behind them
        self._frontend_bytes = 0  # their audio: more audio waits while that is over GATHER_MAX_BYTES
        self._final_asked: dict[int, float] = {}  # utterance number -> when its final was requested
        self._open = True
        self._heard = self._audio_heard = time.monotonic()  # the idle clocks: any message, audio

    # -- called from outside ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        self._drain = True
        self._wake.set()

    async def abort(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            await self.transport.close(code, close_reason(reason))

    async def refuse(self, message: str) -> None:
        """Admission refused: the protocol's own error and a 1013 close."""
        try:
            await self._carry_out(self.protocol.fail("STREAM_ERROR", message, CLOSE_TRY_AGAIN, time.time()))
        except TransportClosed:
            pass

    # -- the two tasks ---------------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            while True:
                await self._space.wait()
                message = await self.transport.recv()
                size = len(message) + MESSAGE_OVERHEAD_BYTES
                self._inbox_bytes += size
                if self._inbox_bytes >= self.limits.max_frame_bytes:
                    self._space.clear()  # TCP backpressure: nothing more is read until the loop catches up
                self._heard = time.monotonic()
                if self._fast_path(message):
                    self._take(self.protocol.on_frame(message, time.time()), size)
                else:
                    self._inbox.append(message)
                    self._wake.set()
        except TransportClosed:
            self._reader_done = True
            self._wake.set()
        except Exception as exc:  # a bug on the fast path: the loop fails the stream with it
            self._reader_error = exc
            self._wake.set()

    def _fast_path(self, message: str | bytes) -> bool:
        """Audio that needs nothing from the loop: nothing queued before it, audio wanted now, a sane size."""
        return (
            isinstance(message, bytes)
            and not self._inbox
            and self._open
            and not self._drain
            and len(message) <= self.limits.max_frame_bytes
            and self._accepting_audio()
            and self._audio_room(message)
            and self._finals_in_flight() < self.limits.max_finals_in_flight
        )

    def _audio_room(self, message: bytes) -> bool:
        """Audio is taken while the front end holds little of this stream's (small frames keep flowing
        while a batch runs); a large message waits until the audio before it has been applied."""
        return not self._in_frontend or self._frontend_bytes + len(message) <= GATHER_MAX_BYTES

    def _on_result(self, session: Session, rid: int) -> Any:
        def callback(result: TranscribeResult | None, error: str | None, timing: Any) -> None:
            self._results.append((session, rid, result, error, time.time(), timing))
            self._wake.set()

        return callback

    async def run(self) -> None:
        runtime, protocol = self.runtime, self.protocol
        runtime.streams.add(self)
        reader = asyncio.create_task(self._reader())
        try:
            await self._carry_out(protocol.start(time.time()))
            await self._loop()
        except TransportClosed:
            self._open = False
        except Exception as exc:  # a bug in one stream: that stream gets an error, the others go on
            log.exception("stream %s failed", self._stream_id)
            if self._open:
                message = f"internal error in this stream ({type(exc).__name__}); it was closed"
                failure = protocol.fail("STREAM_ERROR", message, CLOSE_INTERNAL, time.time())
                with contextlib.suppress(TransportClosed):
                    await self._carry_out(failure)
        finally:
            reader.cancel()
            for item in self._outs:
                if isinstance(item, _Audio):
                    item.ticket.cancelled = True
            for session in protocol.sessions:
                runtime.scheduler.cancel(session)
            runtime.streams.discard(self)
            if self._open:
                self._open = False
                await self.transport.close(1000, "")

    @property
    def _stream_id(self) -> str:
        return ",".join(s.stream_id for s in self.protocol.sessions) or "?"

    def _accepting_audio(self) -> bool:
        return any(s.accepting_audio for s in self.protocol.sessions)

    def _finals_in_flight(self) -> int:
        return sum(s.finals_in_flight for s in self.protocol.sessions)

    # -- what is owed to the client, in order ----------------------------------------------------------

    def _take(self, outs: list[Out], nbytes: int = 0) -> None:
        """Queue a protocol's outs; its audio goes to the front end now (in order), holding its place in
        `_outs`. `nbytes` of the inbox bound are held until that audio is applied."""
        holder: _Audio | None = None
        inline = False
        for session, action in outs:
            if not isinstance(action, Audio):
                self._outs.append((session, action))
                continue
            assert session is not None
            if session.accepting_audio:
                self._audio_heard = time.monotonic()  # audio, not only keep-alives (any protocol's)
            if not (session.accepting_audio and batched(session)):  # an error, or a test's own VAD: now
                actions = session.feed_audio(action.data, time.time())
                self._outs.extend(self.protocol.on_actions(session, actions))
                inline = True
                continue
            self._frontend_bytes += len(action.data)
            waiting = self._waiting_audio(session)
            if waiting is not None and self.runtime.frontend.extend(waiting.ticket, action.data):
                holder = waiting
            else:
                holder = _Audio(self.runtime.frontend.submit(session, action.data, self._audio_done))
                self._in_frontend += 1
                self._outs.append(holder)
            holder.audio_bytes += len(action.data)
        if inline:
            self._outs.extend(self._lag_check())
        if holder is not None:
            holder.nbytes += nbytes
        else:
            self._release(nbytes)
        self._settle()

    def _waiting_audio(self, session: Session) -> _Audio | None:
        """The session's latest audio in the trailing run of audio still in the front end (other channels'
        audio of the same messages may follow it): where its next audio may join."""
        for item in reversed(self._outs):
            if not isinstance(item, _Audio) or item.ticket.done:
                return None
            if item.ticket.session is session:
                return item
        return None

    def _take_now(self, outs: list[Out]) -> None:
        """Outs the session produced now, ahead of audio it has not applied yet (an engine result's)."""
        at = next(
            (i for i, item in enumerate(self._outs) if isinstance(item, _Audio) and not item.ticket.done),
            len(self._outs),
        )
        for k, out in enumerate(outs):
            self._outs.insert(at + k, out)
        self._settle()

    def _release(self, nbytes: int) -> None:
        self._inbox_bytes -= nbytes
        if self._inbox_bytes < self.limits.max_frame_bytes:
            self._space.set()

    def _audio_done(self, ticket: Ticket) -> None:
        """The front end applied a ticket: its actions take their place in `_outs`."""
        for item in self._outs:
            if isinstance(item, _Audio) and item.ticket is ticket:
                break
        else:
            return  # the stream is gone
        self._in_frontend -= 1
        self._frontend_bytes -= item.audio_bytes
        self._release(item.nbytes)
        item.nbytes = 0
        try:
            if ticket.error is None:
                item.outs = self.protocol.on_actions(ticket.session, ticket.actions) + self._lag_check()
        except Exception as exc:  # a bug: this stream fails (when the loop reaches it), the others go on
            ticket.error = exc
        self._settle()

    def _settle(self) -> None:
        """Drop applied audio with nothing to send from the head of `_outs`; wake the loop when it has work
        (it does not wake for audio that produced nothing)."""
        outs = self._outs
        while outs and isinstance(outs[0], _Audio) and outs[0].ticket.done and not self._has_work(outs[0]):
            outs.popleft()
        head = outs[0] if outs else None
        if head is not None and (not isinstance(head, _Audio) or head.ticket.done):
            self._wake.set()
        elif self._inbox or (not self._in_frontend and (self._drain or self._reader_done)):
            self._wake.set()  # (the inbox: there may be room for its audio now)

    @staticmethod
    def _has_work(item: _Audio) -> bool:
        return bool(item.outs) or item.ticket.error is not None

    def _lag_check(self) -> list[Out]:
        lag = max((s.lag_s for s in self.protocol.sessions), default=0.0)
        if self._lag_failed or lag <= self.limits.max_lag_s:
            return []
        self._lag_failed = True
        text = (
            f"the server is {lag:.0f} s behind this stream (limit {self.limits.max_lag_s:g} s): "
            "send audio in real time, or retry later"
        )
        return self.protocol.fail("STREAM_ERROR", text, CLOSE_TRY_AGAIN, time.time())

    # -- the loop --------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        protocol, limits = self.protocol, self.limits
        while self._open and (self._outs or not protocol.finished):  # a finished one still sends its last
            if self._reader_error is not None:
                raise self._reader_error
            head = self._outs[0] if self._outs else None
            if isinstance(head, _Audio) and head.ticket.done:
                self._outs.popleft()
                if head.ticket.error is not None:
                    raise head.ticket.error
                await self._carry_out(head.outs or [])
                continue
            if head is not None and not isinstance(head, _Audio):
                self._outs.popleft()
                await self._carry_out([head])
                continue
            # the head (if any) is audio still in the front end: results and more audio may go on meanwhile
            if self._results:  # applied now: audio still in the front end comes after it
                self._take_now(protocol.on_result(*self._results.popleft()))
                continue
            if self._drain and not self._in_frontend:  # audio received goes into the last finals
                self._drain = False
                self._take([(s, a) for s in protocol.sessions for a in s.shutdown()])
                continue
            if self._inbox and self._may_apply(self._inbox[0], head is None and not self._in_frontend):
                message = self._inbox.popleft()
                self._handle(message)
                continue
            if self._reader_done and not self._inbox and not self._in_frontend:
                self._open = False  # the client went away: nothing more can be delivered
                return
            # nothing to do: wait, and time out the client only while it is the one we wait for
            self._wake.clear()
            # (not while a final is on its way: after `finalize` the client waits for us)
            if not (self._accepting_audio() and not self._inbox and not self._finals_in_flight()):
                await self._wake.wait()
                self._heard = max(self._heard, time.monotonic())  # the idle clock starts again now
                continue
            now = time.monotonic()
            idle_left = limits.idle_timeout_s - (now - self._heard)
            audio_left = limits.audio_idle_timeout_s - (now - self._audio_heard)
            if idle_left <= 0:
                await self._carry_out(protocol.idle(limits.idle_timeout_s, time.time()))
                self._open = False
                return
            if audio_left <= 0:
                message = f"no audio for {limits.audio_idle_timeout_s:g} s (only keep-alives): closing"
                await self._carry_out(protocol.fail("STREAM_ERROR", message, CLOSE_POLICY, time.time()))
                self._open = False
                return
            try:
                await asyncio.wait_for(self._wake.wait(), min(idle_left, audio_left))
            except TimeoutError:
                pass

    def _may_apply(self, message: str | bytes, nothing_owed: bool) -> bool:
        """A control message once the audio before it has been applied and its outs sent; audio (binary, or
        text that only carries audio) while the front end has room for it and finals are below their cap (or
        it is refused anyway)."""
        if isinstance(message, str) and not self.protocol.audio_only(message):
            return nothing_owed
        if not self._accepting_audio():
            return not self._in_frontend  # refused with an error, after the audio before it
        return self._audio_room(message) and self._finals_in_flight() < self.limits.max_finals_in_flight

    def _handle(self, message: str | bytes) -> None:
        protocol, limits, now = self.protocol, self.limits, time.time()
        size = len(message) + MESSAGE_OVERHEAD_BYTES
        if isinstance(message, str) and len(message.encode("utf-8", "replace")) > limits.max_text_bytes:
            self._release(size)
            text = f"text frame over {limits.max_text_bytes} bytes: control messages are small"
            self._take(protocol.fail("STREAM_ERROR", text, CLOSE_TOO_BIG, now))
            return
        if isinstance(message, bytes) and len(message) > limits.max_frame_bytes:
            self._release(size)
            text = f"audio frame of {len(message)} bytes exceeds the limit of {limits.max_frame_bytes} bytes"
            self._take(protocol.fail("AUDIO_PROCESSING_ERROR", text, CLOSE_TOO_BIG, now))
            return
        self._take(protocol.on_frame(message, now), size)

    async def _send(self, msg: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.transport.send(_dumps(msg)), self.limits.send_timeout_s)
        except TimeoutError:
            log.warning("stream %s: client does not read; closing", self._stream_id)
            self._open = False
            await self.transport.close(CLOSE_POLICY, "client does not read its messages")
            raise TransportClosed from None

    async def _carry_out(self, outs: list[Out]) -> None:
        """Send, submit and close as the actions say (audio never comes here: `_take` queues it)."""
        for session, action in outs:
            if not self._open:
                return
            if isinstance(action, Send | Event):
                if isinstance(action, Send):
                    self._count(action.message)
                for wire in self.protocol.render(session, action):
                    await self._send(wire)
            elif isinstance(action, Transcribe):
                assert session is not None
                if action.kind != "partial" and len(self.protocol.sessions) == 1:  # the latest ask counts
                    self._final_asked[action.segment] = time.monotonic()
                rid = action.request_id
                job = Job(
                    session, action.kind, action.request, self._on_result(session, rid), urgent=action.urgent
                )
                if action.kind == "partial":
                    job.wanted = lambda rid=rid, session=session: session.partial_wanted(rid)
                elif action.kind == "speculative":
                    job.wanted = lambda rid=rid, session=session: session.speculative_wanted(rid)
                    job.confirmed = lambda rid=rid, session=session: session.speculative_confirmed(rid)
                self.runtime.scheduler.submit(job)
            elif isinstance(action, Close):
                self._open = False
                await self.transport.close(action.code, close_reason(action.reason))
            else:
                raise TypeError(f"cannot carry out {action!r} here")

    def _count(self, msg: dict[str, Any]) -> None:
        """Prometheus counts of one outgoing session message."""
        kind = msg.get("type", "")
        if kind == "transcription":
            kind = "final" if msg["is_final"] else "partial"
            asked = self._final_asked.pop(msg["transcription_num"], None) if msg["is_final"] else None
            if asked is not None:
                metrics.FINAL_SECONDS.observe(time.monotonic() - asked)
        elif kind == "error" and isinstance(msg.get("body"), dict):
            metrics.ERRORS.labels(msg["body"]["error_type"]).inc()
        metrics.MESSAGES.labels(kind).inc()
