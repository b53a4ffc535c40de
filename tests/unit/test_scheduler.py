"""The scheduler with a fake engine: batching across streams, finals first, unwanted partials never run."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.unit.fakes import fake_result
from whisper_stream.engines.interface import TranscribeRequest
from whisper_stream.scheduler import Job, Scheduler


class RecordingEngine:
    name = "fake"
    model_name = "fake"
    max_batch_size = 3
    max_inflight = 1

    def __init__(self) -> None:
        self.calls: list[list[float]] = []
        self.gate = asyncio.Event()

    async def transcribe(self, requests):
        await self.gate.wait()
        self.calls.append([len(r.audio) / 16000 for r in requests])
        return [fake_result(r) for r in requests]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


def request(seconds: float) -> TranscribeRequest:
    return TranscribeRequest(np.zeros(int(seconds * 16000), np.float32))


async def test_finals_first_batched_and_unwanted_partials_dropped():
    engine = RecordingEngine()
    scheduler = Scheduler(engine)
    scheduler.start()
    got: list[tuple[str, object]] = []

    def done(tag):
        return lambda result, error, timing: got.append((tag, result is not None, timing))

    scheduler.submit(Job("a", "partial", request(1.0), done("p-a")))
    await asyncio.sleep(0.01)  # the first call takes p-a and blocks on the gate
    scheduler.submit(Job("b", "partial", request(2.0), done("p-b")))
    scheduler.submit(Job("c", "partial", request(2.5), done("p-c"), wanted=lambda: False))
    for i, owner in enumerate("abcd"):
        scheduler.submit(Job(owner, "final", request(3.0 + i), done(f"f-{owner}")))
    engine.gate.set()
    for _ in range(100):
        if len(got) == 7:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert engine.calls[0] == [1.0]
    assert engine.calls[1] == [3.0, 4.0, 5.0]  # finals first, up to max_batch_size
    assert engine.calls[2] == [6.0, 2.0]  # the last final, then the wanted partial
    assert ("p-c", False, None) in got  # shed unrun
    timings = [t for tag, ok, t in got if ok]
    assert all(t["batch_size"] >= 1 and t["model_s"] >= 0 for t in timings)


async def test_cancel_forgets_a_stream():
    engine = RecordingEngine()
    scheduler = Scheduler(engine)
    got = []
    scheduler.submit(Job("a", "final", request(1.0), lambda *a: got.append("a")))
    scheduler.submit(Job("b", "final", request(1.0), lambda *a: got.append("b")))
    scheduler.cancel("a")
    assert scheduler.queued == 1
    engine.gate.set()
    scheduler.start()
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert got == ["b"]


async def test_flush_finals_first_speculative_before_partials_and_confirmed_ones_promoted():
    engine = RecordingEngine()
    engine.max_batch_size = 2
    scheduler = Scheduler(engine)
    order: list[str] = []
    confirmed = {"s-b": False}

    def done(tag):
        return lambda result, error, timing: order.append(tag if result is not None else f"shed {tag}")

    scheduler.submit(Job("a", "partial", request(1.0), done("p-a")))
    scheduler.submit(Job("b", "speculative", request(1.1), done("s-b"), confirmed=lambda: confirmed["s-b"]))
    scheduler.submit(Job("c", "speculative", request(1.2), done("s-c"), wanted=lambda: False))
    scheduler.submit(Job("d", "final", request(1.3), done("f-d")))
    scheduler.submit(Job("e", "final", request(1.4), done("f-e"), urgent=True))
    confirmed["s-b"] = True  # its endpoint came while it was queued: it is a final now, first in line
    scheduler.start()
    engine.gate.set()
    for _ in range(100):
        if len(order) == 5:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert engine.calls == [[1.1, 1.4], [1.3, 1.0]]
    assert "shed s-c" in order
