"""Batches transcription requests from all streams into engine calls: fair, finals first, failures isolated.

Finals are never dropped. Partials are best-effort: each stream has at most one in flight (the session
enforces it); the session cancels a queued partial whose utterance has meanwhile ended (`cancel_request`,
dropped unrun), and one still waiting after `partial_max_wait_s` is shed. Speculative finals (a final decoded
before its endpoint) queue with the partials, ahead of them, and are shed or cancelled the same way until the
session confirms them (`promote`): then an urgent final (its client already waits). A final a client's
flush asked for is urgent too: urgent finals go ahead of every other final, in fairness order among
themselves. Up to
`engine.max_inflight` calls run at once (the CPU engine's `--engine-workers` replicas, 2 by default; several
for Triton, whose dynamic batcher merges them).

Fairness: the engine is shared by engine time, not by request count. Each stream's recent engine time
(decayed with a `FAIR_SHARE_HALF_LIFE_S` half-life, an engine call's time split among its requests by audio
length) orders the queue: the stream that got the least engine time lately goes first. A client uploading
faster than real time, or sending long prompts, thus waits behind the real-time streams instead of delaying
them; a lone stream still gets the whole engine.

Failures are isolated: when a batch of several requests fails, each request is retried alone, so only the
request that fails by itself gets the error. An engine that returns the wrong number of results fails that
call's requests instead of leaving them unanswered. If the scheduling task itself dies, `healthy` turns False
(the server answers 503), every queued request gets an error, and the task restarts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from whisper_stream.engines.interface import (
    Engine,
    EngineUnavailable,
    RequestError,
    TranscribeRequest,
    TranscribeResult,
)
from whisper_stream.serving import metrics

log = logging.getLogger(__name__)

# Called with (result, error, timing). result and error both None: the request was shed (partials only).
# timing: {"queue_s": waiting for the engine, "model_s": the engine call, "batch_size": requests in it}.
Callback = Callable[[TranscribeResult | None, str | None, dict[str, float] | None], None]

FAIR_SHARE_HALF_LIFE_S = 20.0  # how long a stream's engine time counts against it when ordering the queue
DELAY_SMOOTHING = 0.2  # weight of the newest final's queue wait in the smoothed delay (admission control)
# The smoothed wait halves every this many seconds without a new final: after a burst an idle engine is not
# reported as behind forever (no stream admitted, no final run, nothing to lower it).
DELAY_HALF_LIFE_S = 5.0


@dataclass
class Job:
    owner: object
    kind: str  # "final" | "partial" | "speculative"
    request: TranscribeRequest
    callback: Callback
    urgent: bool = False  # a final a flush asked for: ahead of every other final
    request_id: int = -1  # the owner's id of it: what `promote` and `cancel_request` name
    queued_at: float = field(default_factory=time.monotonic)


class _Usage:
    """A stream's engine seconds, decayed exponentially: what fairness orders by."""

    __slots__ = ("seconds", "at")

    def __init__(self) -> None:
        self.seconds = 0.0
        self.at = time.monotonic()

    def value(self, now: float) -> float:
        return self.seconds * math.exp2(-(now - self.at) / FAIR_SHARE_HALF_LIFE_S)

    def add(self, seconds: float, now: float) -> None:
        self.seconds = self.value(now) + seconds
        self.at = now


class Scheduler:
    def __init__(self, engine: Engine, partial_max_wait_s: float = 10.0) -> None:
        self.engine = engine
        self.partial_max_wait_s = partial_max_wait_s
        self._finals: list[Job] = []
        self._partials: list[Job] = []
        self._usage: dict[object, _Usage] = {}  # owner (a stream) -> its engine time lately
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, engine.max_inflight))
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.healthy = True
        self.final_delay_s = 0.0  # smoothed queue wait of recent finals, as of `_delay_at` (see delay_s)
        self._delay_at = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="scheduler")
            self._task.add_done_callback(self._on_task_done)

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, *self._calls, return_exceptions=True)
            self._task = None

    def submit(self, job: Job) -> None:
        (self._finals if job.kind == "final" else self._partials).append(job)
        self._usage.setdefault(job.owner, _Usage())  # dropped by `cancel`, never re-created by a late answer
        self._wake.set()

    def promote(self, owner: object, request_id: int) -> None:
        """A queued speculative decode was confirmed: now an urgent final, never shed (running: no-op)."""
        for job in self._partials:
            if job.owner is owner and job.request_id == request_id:
                self._partials.remove(job)
                job.urgent = True
                self._finals.append(job)
                self._wake.set()
                return

    def cancel_request(self, owner: object, request_id: int) -> None:
        """A queued partial or speculative decode is not wanted any more: dropped unrun, its callback told
        (result and error both None). Finals are never cancelled; a running request runs to its end."""
        for job in self._partials:
            if job.owner is owner and job.request_id == request_id:
                self._partials.remove(job)
                metrics.PARTIALS_SHED.inc()
                job.callback(None, None, None)
                return

    def cancel(self, owner: object) -> None:
        """Forget the queued work of a stream that went away."""
        self._finals = [j for j in self._finals if j.owner is not owner]
        self._partials = [j for j in self._partials if j.owner is not owner]
        self._usage.pop(owner, None)

    @property
    def queued(self) -> int:
        return len(self._finals) + len(self._partials)

    def delay_s(self) -> float:
        """How far behind the engine is: the oldest queued final's wait, or the recent smoothed wait."""
        now = time.monotonic()
        oldest = min((j.queued_at for j in self._finals), default=None)
        waiting = now - oldest if oldest is not None else 0.0
        return max(waiting, self._recent_delay(now))

    def _recent_delay(self, now: float) -> float:
        """`final_delay_s` as of `now`: halved every DELAY_HALF_LIFE_S since the last final started."""
        return self.final_delay_s * math.exp2(-(now - self._delay_at) / DELAY_HALF_LIFE_S)

    # -- the loop ------------------------------------------------------------------------------------------

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task.cancelled():
            return
        exc = task.exception()
        log.error("scheduler task died: %r; failing queued requests and restarting", exc)
        self.healthy = False
        for job in self._finals + self._partials:
            job.callback(None, f"transcription failed: scheduler error {type(exc).__name__}", None)
        self._finals, self._partials = [], []
        self._task = None
        self.start()

    def _usage_of(self, job: Job, now: float) -> float:
        usage = self._usage.get(job.owner)
        return usage.value(now) if usage else 0.0

    def _next_batch(self) -> list[Job]:
        now = time.monotonic()
        keep = []
        for job in self._partials:
            if now - job.queued_at > self.partial_max_wait_s:
                metrics.PARTIALS_SHED.inc()
                log.debug("partial shed after %.2f s in queue", now - job.queued_at)
                job.callback(None, None, None)
            else:
                keep.append(job)
        self._partials = keep
        size = self.engine.max_batch_size
        # flush-requested and confirmed finals first, then least engine time lately; within a stream, in order
        self._finals.sort(key=lambda j: (not j.urgent, self._usage_of(j, now), j.queued_at))
        batch, self._finals = self._finals[:size], self._finals[size:]
        if len(batch) < size and self._partials:
            # speculative finals ahead of partials; both shed first when the engine is behind
            self._partials.sort(key=lambda j: (j.kind != "speculative", self._usage_of(j, now), j.queued_at))
            room = size - len(batch)
            batch, self._partials = batch + self._partials[:room], self._partials[room:]
        return batch

    async def _run(self) -> None:
        while True:
            if not self._finals and not self._partials:
                self.healthy = True  # the loop runs (again): nothing is stuck behind it
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            try:
                batch = self._next_batch()
            except BaseException:
                self._slots.release()  # the restarted loop must find its slot
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            metrics.QUEUE_SECONDS.labels(job.kind).observe(started - job.queued_at)
            if job.kind == "final" or job.urgent:  # a confirmed speculative final is urgent
                recent = self._recent_delay(started)
                self.final_delay_s = recent + DELAY_SMOOTHING * (started - job.queued_at - recent)
                self._delay_at = started
        try:
            await self._run_isolated(batch, started)
        finally:
            self._slots.release()

    async def _run_isolated(self, batch: list[Job], queued_until: float) -> None:
        """One engine call for the batch; if it fails and holds several requests, each one alone."""
        started = time.monotonic()
        metrics.BATCH_SIZE.observe(len(batch))
        try:
            results = await self.engine.transcribe([j.request for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        except EngineUnavailable as exc:
            metrics.ENGINE_CALLS.labels("unavailable").inc()
            for job in batch:
                job.callback(None, f"engine unavailable: {exc}", None)
            return
        except Exception as exc:
            metrics.ENGINE_CALLS.labels("error").inc()
            if len(batch) > 1:
                log.warning("engine call of %d failed (%r): retrying each request alone", len(batch), exc)
                for job in batch:
                    await self._run_isolated([job], queued_until)
                return
            log.exception("engine call failed")
            batch[0].callback(None, f"transcription failed: {type(exc).__name__}: {exc}", None)
            return
        finally:
            metrics.ENGINE_SECONDS.observe(time.monotonic() - started)
        metrics.ENGINE_CALLS.labels("ok").inc()
        now = time.monotonic()
        model_s = now - started
        total = sum(len(j.request.audio) for j in batch) or 1
        for job, result in zip(batch, results, strict=True):
            usage = self._usage.get(job.owner)  # None: the stream ended while its job was in the engine
            if usage is not None:
                usage.add(model_s * len(job.request.audio) / total, now)
            if isinstance(result, RequestError):
                job.callback(None, f"transcription failed: {result}", None)
                continue
            timing = {
                "queue_s": round(queued_until - job.queued_at, 4),
                "model_s": round(model_s, 4),
                "batch_size": len(batch),
            }
            job.callback(result, None, timing)
