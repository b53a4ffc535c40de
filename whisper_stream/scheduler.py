"""Batches transcription requests from all streams into engine calls: finals first, partials shed.

Finals are never dropped. Partials are best-effort: each stream has at most one in flight (the session
enforces it); a queued partial whose utterance has meanwhile ended (its final is queued) is dropped unrun,
and so is one still waiting after `partial_max_wait_s`. Speculative finals (a final decoded before its
endpoint) queue with the partials, ahead of them, and are shed by the same rules until the session confirms
them; a confirmed one moves to the front of the finals. A final a client's flush asked for (`urgent`) goes
ahead of every other final. Up to `engine.max_inflight` calls run at once
(1 for the in-process CPU engine, several for Triton, whose dynamic batcher merges them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from whisper_stream import metrics
from whisper_stream.engines.interface import Engine, EngineUnavailable, TranscribeRequest, TranscribeResult

log = logging.getLogger(__name__)

# Called with (result, error, timing). result and error both None: the request was shed (partials only).
# timing: {"queue_s": waiting for the engine, "model_s": the engine call, "batch_size": requests in it}.
Callback = Callable[[TranscribeResult | None, str | None, dict[str, float] | None], None]


@dataclass
class Job:
    owner: object
    kind: str  # "final" | "partial" | "speculative"
    request: TranscribeRequest
    callback: Callback
    wanted: Callable[[], bool] = lambda: True  # a partial whose utterance already ended is not run
    queued_at: float = field(default_factory=time.monotonic)
    urgent: bool = False  # a final a flush asked for: ahead of every other final
    confirmed: Callable[[], bool] = lambda: False  # a speculative final its endpoint confirmed: now a final


class Scheduler:
    def __init__(self, engine: Engine, partial_max_wait_s: float = 10.0) -> None:
        self.engine = engine
        self.partial_max_wait_s = partial_max_wait_s
        self._finals: deque[Job] = deque()
        self._partials: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, engine.max_inflight))
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, *self._calls, return_exceptions=True)
            self._task = None

    def submit(self, job: Job) -> None:
        if job.kind == "final" and job.urgent:
            self._finals.appendleft(job)
        elif job.kind == "final":
            self._finals.append(job)
        elif job.kind == "speculative":  # behind other speculative finals, ahead of partials
            queued = self._partials
            at = next((i for i, j in enumerate(queued) if j.kind != "speculative"), len(queued))
            queued.insert(at, job)
        else:
            self._partials.append(job)
        self._wake.set()

    def cancel(self, owner: object) -> None:
        """Forget the queued work of a stream that went away."""
        self._finals = deque(j for j in self._finals if j.owner is not owner)
        self._partials = deque(j for j in self._partials if j.owner is not owner)

    @property
    def queued(self) -> int:
        return len(self._finals) + len(self._partials)

    def _next_batch(self) -> list[Job]:
        now = time.monotonic()
        keep: deque[Job] = deque()
        confirmed = [j for j in self._partials if j.confirmed()]
        self._finals.extendleft(reversed(confirmed))  # waiting since the first silent frame: oldest first
        for job in self._partials:
            if any(job is c for c in confirmed):
                continue
            if now - job.queued_at > self.partial_max_wait_s or not job.wanted():
                metrics.PARTIALS_SHED.inc()
                log.debug("partial shed after %.2f s in queue", now - job.queued_at)
                job.callback(None, None, None)
            else:
                keep.append(job)
        self._partials = keep
        size = self.engine.max_batch_size
        batch = [self._finals.popleft() for _ in range(min(size, len(self._finals)))]
        while len(batch) < size and self._partials:
            batch.append(self._partials.popleft())
        return batch

    async def _run(self) -> None:
        while True:
            if not self._finals and not self._partials:
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            batch = self._next_batch()
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
        metrics.BATCH_SIZE.observe(len(batch))
        outcome = "error"
        try:
            results = await self.engine.transcribe([j.request for j in batch])
            outcome = "ok"
        except EngineUnavailable as exc:
            for job in batch:
                job.callback(None, f"engine unavailable: {exc}", None)
            return
        except Exception as exc:  # a bad batch must not kill the scheduler
            log.exception("engine call failed")
            for job in batch:
                job.callback(None, f"transcription failed: {type(exc).__name__}: {exc}", None)
            return
        finally:
            self._slots.release()
            metrics.ENGINE_CALLS.labels(outcome).inc()
            metrics.ENGINE_SECONDS.observe(time.monotonic() - started)
            log.debug("engine call: %s in %.3f s", [j.kind for j in batch], time.monotonic() - started)
        model_s = time.monotonic() - started
        for job, result in zip(batch, results, strict=True):
            timing = {
                "queue_s": round(started - job.queued_at, 4),
                "model_s": round(model_s, 4),
                "batch_size": len(batch),
            }
            job.callback(result, None, timing)
