"""The audio front end of every stream, per tick and off the event loop: audio decoding, resampling and Silero
VAD for all streams in one worker-thread call.

A stream hands its audio in (`submit`) and gets a `Ticket` back; nothing waits per message. The audio of every
stream that arrived during one tick (`VAD_TICK_S`) is decoded and run through Silero together: one ONNX call
per 32 ms frame step serves every stream with frames waiting (`SileroModel.run_streams`). Then, back on the
event loop, each session applies its frames (`Session.on_frames`) and the ticket's owner is called with the
actions. Batched, a frame costs about half its ONNX time alone (54 vs 112 us on the 2-core machine), and the
event loop does one hand-off per tick instead of a task wake-up and a future per message. While the batches
hold a single stream there is no tick: a lone client uploading as fast as it can is not slowed to one batch
per tick.

A session's tickets are applied in the order they were submitted, at most one per batch; audio sent while its
ticket waits for the batch joins that ticket (`extend`, up to `GATHER_MAX_BYTES`).

Memory: the audio bytes of the tickets in progress; their owner counts them against its inbox bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from whisper_stream.core.events import Action
from whisper_stream.core.session import Session
from whisper_stream.dsp.vad import SileroModel, SileroStream
from whisper_stream.serving.stream_audio import StreamAudio

log = logging.getLogger(__name__)

FRONTEND_THREADS = 2  # one runs a batch, the other stays free for the next; each ONNX call uses one core
VAD_TICK_S = 0.02  # audio gathers this long before one batched call (clients send every 20-100 ms)
# A stream's audio waiting for its batch joins one ticket up to this size (0.5 s of 16 kHz s16le): a client
# sending small frames keeps up however long a batch takes, and bounded, the finals cap stays near exact.
GATHER_MAX_BYTES = 16 << 10


class State(Enum):
    WAITING = "waiting"  # for its batch
    RUNNING = "running"  # in a batch
    DONE = "done"  # `actions` or `error` set, owner called


@dataclass(eq=False)
class Ticket:
    """Audio of one session on its way through the front end."""

    session: Session
    audio: StreamAudio  # the session's decoder and VAD state
    on_done: Callable[[Ticket], None]  # called on the event loop, once, unless cancelled
    chunks: list[bytes]
    submitted: float = field(default_factory=time.perf_counter)
    state: State = State.WAITING
    actions: list[Action] = field(default_factory=list)
    error: BaseException | None = None
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return self.state is State.DONE


class FrontEnd:
    def __init__(self, model: SileroModel, threads: int = FRONTEND_THREADS) -> None:
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frontend")
        self._waiting: list[Ticket] = []
        self._running = False
        self._last_batch = 1  # streams in the latest batch: more than one means others are worth waiting for
        self._tick_end = 0.0  # the end of the latest batch's tick (event-loop time): batches keep its cadence

    def submit(
        self, session: Session, audio: StreamAudio, data: bytes, on_done: Callable[[Ticket], None]
    ) -> Ticket:
        """Queue a session's audio; `on_done(ticket)` follows on the event loop with its actions."""
        ticket = Ticket(session, audio, on_done, [data])
        self._waiting.append(ticket)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._run_batches())
        return ticket

    @staticmethod
    def extend(ticket: Ticket, data: bytes) -> bool:
        """Add a session's next audio to its ticket while it waits for its batch and has room."""
        if ticket.state is not State.WAITING or sum(map(len, ticket.chunks)) + len(data) > GATHER_MAX_BYTES:
            return False
        ticket.chunks.append(data)
        return True

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                now = loop.time()
                if self._last_batch > 1:  # the next tick: the other streams' audio of this tick joins
                    wait = (self._tick_end - now) % VAD_TICK_S
                    await asyncio.sleep(wait)
                    now += wait  # the tick's own time: a late wake-up does not shift the cadence
                self._tick_end = now + VAD_TICK_S
                batch: dict[Session, Ticket] = {}
                later: list[Ticket] = []
                for ticket in self._waiting:
                    if ticket.cancelled:
                        continue
                    if batch.setdefault(ticket.session, ticket) is not ticket:
                        later.append(ticket)  # the session's next ticket: the next batch, in order
                    else:
                        ticket.state = State.RUNNING
                self._waiting = later
                tickets = list(batch.values())
                self._last_batch = len(tickets)
                if not tickets:
                    break
                try:
                    decoded = await loop.run_in_executor(self._pool, self._process, tickets)
                except Exception as exc:  # the VAD itself failed: every stream of the batch is told
                    decoded = [exc] * len(tickets)
                for ticket, out in zip(tickets, decoded, strict=True):
                    self._finish(ticket, out)
        finally:
            self._running = False

    def _process(self, tickets: list[Ticket]) -> list[tuple[np.ndarray, np.ndarray] | BaseException]:
        """Worker thread: decode each ticket's audio (a decoding error fails that ticket only), then the VAD
        of all of them in lockstep."""
        out: list[tuple[np.ndarray, np.ndarray] | BaseException] = []
        for ticket in tickets:
            try:
                data = ticket.chunks[0] if len(ticket.chunks) == 1 else b"".join(ticket.chunks)
                out.append((ticket.audio.take_frames(data), np.empty(0, dtype=np.float32)))
            except Exception as exc:
                out.append(exc)
        rows = [i for i, o in enumerate(out) if isinstance(o, tuple) and len(o[0])]
        silero = [i for i in rows if isinstance(tickets[i].audio.vad, SileroStream)]
        if silero:
            vads = [tickets[i].audio.vad for i in silero]
            probs = self.model.run_streams(vads, [out[i][0] for i in silero])  # type: ignore[arg-type, index, misc]
            for i, p in zip(silero, probs, strict=True):
                out[i] = (out[i][0], p)  # type: ignore[index]
        for i in set(rows) - set(silero):  # another speech model (a test's): one stream at a time
            out[i] = (out[i][0], tickets[i].audio.vad(out[i][0]))  # type: ignore[index]
        return out

    @staticmethod
    def _finish(ticket: Ticket, out: tuple[np.ndarray, np.ndarray] | BaseException) -> None:
        """Event loop: the session applies its frames, then the ticket's owner hears of it."""
        ticket.state = State.DONE
        ticket.chunks = []
        if ticket.cancelled:
            return
        if isinstance(out, BaseException):
            ticket.error = out
        else:
            frames, probs = out
            try:
                ticket.actions = ticket.session.on_frames(frames, probs) if len(frames) else []
            except Exception as exc:  # a bug in one session: its stream fails, the others go on
                ticket.error = exc
            ticket.session.add_processing_time(time.perf_counter() - ticket.submitted)
        try:
            ticket.on_done(ticket)
        except Exception:  # the owner's bug: the other tickets of the batch still get theirs
            log.exception("front end: a ticket's owner failed")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
