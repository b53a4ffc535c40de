"""Drives one connection's stream over any `Transport` and any wire protocol (`protocols/`): the loop every
adapter (websockets, Truss) and every protocol (Baseten, Deepgram, OpenAI) shares.

One reader task per stream takes messages off the socket into a small byte-bounded queue: when the queue is
full the reader stops reading, and TCP pushes back on the client instead of the server's memory growing. The
loop applies messages and engine results in order, runs the audio front end off the event loop
(`frontend.py`), stops taking audio while `max_finals_in_flight` finals are unanswered, sheds partials and
then closes a stream whose unprocessed audio exceeds `max_lag_s`, and closes a client that does not read
what it is sent. On a drain it stops reading, applies what it already received, and the sessions' last finals
carry all of it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from whisper_stream.core.events import Action, Cancel, Notice, Promote, Result, Transcribe, Transcript
from whisper_stream.core.session import Session
from whisper_stream.engines.interface import TranscribeResult
from whisper_stream.serving import metrics
from whisper_stream.serving.frontend import GATHER_MAX_BYTES, Ticket
from whisper_stream.serving.runtime import Limits, Runtime
from whisper_stream.serving.scheduler import Job
from whisper_stream.serving.stream_audio import StreamAudio
from whisper_stream.serving.transport import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    Close,
    Transport,
    TransportClosed,
    close_reason,
    dumps,
)

log = logging.getLogger(__name__)

# What a queued message costs beyond its payload (its Python objects): counted in the inbox's byte bound, so
# a flood of empty or 1-byte frames is held to ~8k messages, not let through for free.
MESSAGE_OVERHEAD_BYTES = 128


@dataclass(frozen=True)
class Audio:
    """A protocol's audio for one session: the driver decodes it and runs the VAD off the event loop."""

    data: bytes


@dataclass(frozen=True)
class EndAudio:
    """No more audio for this session: what the decoder still holds is applied, then `Session.end_audio`."""


@dataclass(frozen=True)
class Send:
    """A message of the protocol's own (an acknowledgement, an error, a handshake event)."""

    message: dict[str, Any]


# an action and the session it concerns (None: the protocol's own)
Out = tuple[Session | None, Action | Audio | EndAudio | Send | Close]


class StreamProtocol(Protocol):
    """One connection's wire protocol: frames -> session events; the core's results -> its messages.

    Only field names and message shapes: every streaming rule is the core's."""

    @property
    def sessions(self) -> Sequence[Session]: ...  # cancelled at the end of the stream

    @property
    def finished(self) -> bool: ...  # the stream is over (after its last message)

    async def handshake(self, transport: Transport, limits: Limits) -> bool: ...  # False: it refused

    def start(self, now: float) -> list[Out]: ...  # what the protocol says first, before any frame

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]: ...

    # a text frame that only carries audio (OpenAI's append): like a binary frame, it need not wait until the
    # audio before it has been applied
    def audio_only(self, frame: str) -> bool: ...

    def render(self, session: Session | None, result: Result) -> list[dict[str, Any] | Close]: ...

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]: ...

    def idle(self, idle_s: float, now: float) -> list[Out]: ...


async def serve_stream(
    transport: Transport, runtime: Runtime, protocol: StreamProtocol, client: str = ""
) -> None:
    """Run one stream to its close. `client` (the peer's address or key) counts against the per-client
    stream limit."""
    sessions = max(1, len(protocol.sessions))  # Deepgram's channels are known before the upgrade
    refusal = runtime.refusal(client, sessions)
    if refusal is not None:
        await StreamLoop(transport, runtime, protocol).refuse(refusal)
        return
    metrics.STREAMS.inc()
    metrics.STREAMS_TOTAL.inc()
    runtime.per_client[client] += sessions
    runtime.held += sessions
    try:
        runtime.opening.add(transport)  # counts against max_streams before its metadata comes
        try:
            opened = await protocol.handshake(transport, runtime.limits)
        finally:
            runtime.opening.discard(transport)
        if not opened:
            return
        loop = StreamLoop(transport, runtime, protocol)
        if runtime.draining:  # its handshake ended after SIGTERM
            await loop.refuse("the server is shutting down; reconnect to another replica", CLOSE_GOING_AWAY)
            return
        await loop.run()
    except TransportClosed:
        pass
    finally:
        runtime.held -= sessions
        runtime.per_client[client] -= sessions
        if runtime.per_client[client] <= 0:
            del runtime.per_client[client]
        metrics.STREAMS.dec()


@dataclass(eq=False)
class _Audio:
    """A place in a stream's outgoing order held by audio in the front end: its actions go out from here."""

    ticket: Ticket
    nbytes: int = 0  # inbox bytes it holds until done (the messages it carries)
    audio_bytes: int = 0  # the audio it carries
    outs: list[Out] | None = None  # the protocol's outs for the ticket's actions, once done


class StreamLoop:
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
        self._drain = False  # a drain began: what was received is applied, then the sessions shut down
        self._shut = False
        self._audio: dict[Session, StreamAudio] = {}  # each session's decoder and VAD state
        self._refused_audio: set[Session] = set()  # sessions told once that audio after their end is dropped
        self._lag_failed = False
        self._in_frontend = 0  # tickets not yet applied: a control message waits behind them
        self._frontend_bytes = 0  # their audio: more audio waits while that is over GATHER_MAX_BYTES
        self._final_asked: dict[int, float] = {}  # utterance number -> when its final was requested
        self._open = True
        self._reader: asyncio.Task[None] | None = None
        self._heard = self._audio_heard = time.monotonic()  # the idle clocks: any message, audio

    # -- called from outside ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server drains: read nothing more (TCP holds the client's next frames), apply what was received,
        then every session's speech so far becomes its last final."""
        self._drain = True
        if self._reader is not None:
            self._reader.cancel()
        self._wake.set()

    async def abort(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            await self.transport.close(code, close_reason(reason))

    async def refuse(self, message: str, code: int = CLOSE_TRY_AGAIN) -> None:
        """Admission refused: the protocol's own error and a 1013 (or 1001) close."""
        try:
            await self._carry_out(self._failure("STREAM_ERROR", message, code))
        except TransportClosed:
            pass

    # -- the two tasks ---------------------------------------------------------------------------------

    async def _read(self) -> None:
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
            self._results.append((session, rid, result, error, timing))
            self._wake.set()

        return callback

    async def run(self) -> None:
        runtime, protocol = self.runtime, self.protocol
        runtime.streams.add(self)
        reader = self._reader = asyncio.create_task(self._read())
        try:
            await self._carry_out(protocol.start(time.time()))
            await self._loop()
        except TransportClosed:
            self._open = False
        except Exception as exc:  # a bug in one stream: that stream gets an error, the others go on
            log.exception("stream %s failed", self._stream_id)
            if self._open:
                message = f"internal error in this stream ({type(exc).__name__}); it was closed"
                failure = self._failure("STREAM_ERROR", message, CLOSE_INTERNAL)
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
        for session, action in outs:
            if isinstance(action, EndAudio):
                assert session is not None
                self._outs.extend((session, a) for a in self._end(session))
                continue
            if not isinstance(action, Audio):
                self._outs.append((session, action))
                continue
            assert session is not None
            if not session.accepting_audio:  # after its end: dropped, and said once
                if session not in self._refused_audio:
                    self._refused_audio.add(session)
                    self._outs.append((session, Notice("STREAM_ERROR", "audio after end_audio is ignored")))
                continue
            self._audio_heard = time.monotonic()  # audio, not only keep-alives (any protocol's)
            self._frontend_bytes += len(action.data)
            waiting = self._waiting_audio(session)
            if waiting is not None and self.runtime.frontend.extend(waiting.ticket, action.data):
                holder = waiting
            else:
                ticket = self.runtime.frontend.submit(
                    session, self._audio_of(session), action.data, self._audio_done
                )
                holder = _Audio(ticket)
                self._in_frontend += 1
                self._outs.append(holder)
            holder.audio_bytes += len(action.data)
        if holder is not None:
            holder.nbytes += nbytes
        else:
            self._release(nbytes)
        self._settle()

    def _audio_of(self, session: Session) -> StreamAudio:
        audio = self._audio.get(session)
        if audio is None:  # a session's format is fixed from its first audio on
            p = session.config.streaming_params
            audio = self._audio[session] = StreamAudio(p.encoding, p.sample_rate, self.runtime.vad.stream())
        return audio

    def _end(self, session: Session, shutdown: bool = False) -> list[Action]:
        """The end of a session's audio: what its decoder still holds is applied first (never lost)."""
        actions: list[Action] = []
        audio = self._audio.get(session)
        if audio is not None and session.accepting_audio:
            frames = audio.flush()
            if len(frames):
                actions += session.on_frames(frames, audio.vad(frames))
        return actions + (session.shutdown() if shutdown else session.end_audio())

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
                item.outs = [(ticket.session, a) for a in ticket.actions] + self._lag_check()
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
        return self._failure("STREAM_ERROR", text, CLOSE_TRY_AGAIN)

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
                session, rid, result, error, timing = self._results.popleft()
                self._take_now([(session, a) for a in session.on_result(rid, result, error, timing)])
                continue
            if self._inbox and self._may_apply(self._inbox[0], head is None and not self._in_frontend):
                message = self._inbox.popleft()
                self._handle(message)
                continue
            if self._drain and not self._shut and not self._inbox and not self._in_frontend:
                self._shut = True  # every message received is applied: its audio goes into the last finals
                self._take([(s, a) for s in protocol.sessions for a in self._end(s, shutdown=True)])
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
                await self._carry_out(self._failure("STREAM_ERROR", message, CLOSE_POLICY))
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
        if isinstance(message, str):
            audio = protocol.audio_only(message)  # an audio event is bounded as audio, not as a control
            bound = limits.max_audio_event_bytes if audio else limits.max_text_bytes
            if len(message.encode("utf-8", "replace")) > bound:
                self._release(size)
                text = f"text frame over {bound} bytes" + ("" if audio else ": control messages are small")
                self._take(self._failure("STREAM_ERROR", text, CLOSE_TOO_BIG))
                return
        if isinstance(message, bytes) and len(message) > limits.max_frame_bytes:
            self._release(size)
            text = f"audio frame of {len(message)} bytes exceeds the limit of {limits.max_frame_bytes} bytes"
            self._take(self._failure("AUDIO_PROCESSING_ERROR", text, CLOSE_TOO_BIG))
            return
        self._take(protocol.on_frame(message, now), size)

    async def _send(self, msg: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.transport.send(dumps(msg)), self.limits.send_timeout_s)
        except TimeoutError:
            log.warning("stream %s: client does not read; closing", self._stream_id)
            self._open = False
            await self.transport.close(CLOSE_POLICY, "client does not read its messages")
            raise TransportClosed from None

    async def _carry_out(self, outs: list[Out]) -> None:
        """Send, submit and close as the outs say (audio never comes here: `_take` queues it)."""
        scheduler = self.runtime.scheduler
        for session, action in outs:
            if not self._open:
                return
            if isinstance(action, Send):
                metrics.MESSAGES.labels("control").inc()
                await self._send(action.message)
            elif isinstance(action, Close):
                self._open = False
                await self.transport.close(action.code, close_reason(action.reason))
            elif isinstance(action, Transcribe):
                assert session is not None
                if action.kind != "partial" and len(self.protocol.sessions) == 1:  # the latest ask counts
                    self._final_asked[action.number] = time.monotonic()
                callback = self._on_result(session, action.request_id)
                scheduler.submit(
                    Job(session, action.kind, action.request, callback, action.urgent, action.request_id)
                )
            elif isinstance(action, Promote):
                scheduler.promote(session, action.request_id)
            elif isinstance(action, Cancel):
                scheduler.cancel_request(session, action.request_id)
            elif isinstance(action, Audio | EndAudio):
                raise TypeError(f"cannot carry out {action!r} here")
            else:
                self._count(action)
                for wire in self.protocol.render(session, action):
                    if isinstance(wire, Close):
                        self._open = False
                        await self.transport.close(wire.code, close_reason(wire.reason))
                        return
                    await self._send(wire)

    def _failure(self, error_type: str, message: str, code: int) -> list[Out]:
        """The protocol's own last error and close, counted."""
        metrics.ERRORS.labels(error_type).inc()
        return self.protocol.fail(error_type, message, code, time.time())

    def _count(self, result: Result) -> None:
        """Prometheus counts of the core's results, whatever protocol renders them."""
        if isinstance(result, Transcript):
            asked = self._final_asked.pop(result.number, None) if result.kind == "final" else None
            if asked is not None:
                metrics.FINAL_SECONDS.observe(time.monotonic() - asked)
            metrics.MESSAGES.labels(result.kind).inc()
        elif isinstance(result, Notice):
            metrics.ERRORS.labels(result.kind).inc()
            metrics.MESSAGES.labels("error").inc()
