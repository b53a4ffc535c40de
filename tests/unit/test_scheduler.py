"""The scheduler with a fake engine: batching across streams, finals first, unwanted partials never run."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.unit.fakes import fake_result
from whisper_stream.engines.interface import RequestError, TranscribeRequest
from whisper_stream.serving.scheduler import Job, Scheduler


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


async def until(condition, timeout_s: float = 1.0) -> None:
    """Let the scheduler's task run until `condition()` holds (or time is up: the asserts say why)."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)


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
    scheduler.submit(Job("c", "partial", request(2.5), done("p-c"), request_id=7))
    scheduler.cancel_request("c", 7)  # its utterance ended: the session cancels it
    for i, owner in enumerate("abcd"):
        scheduler.submit(Job(owner, "final", request(3.0 + i), done(f"f-{owner}")))
    engine.gate.set()
    await until(lambda: len(got) == 7)
    await scheduler.stop()
    assert engine.calls[0] == [1.0]
    # finals first, up to max_batch_size, least engine time first: "a" already had its partial run
    assert engine.calls[1] == [4.0, 5.0, 6.0]
    assert engine.calls[2] == [3.0, 2.0]  # the last final, then the wanted partial
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
    await until(lambda: got)
    await scheduler.stop()
    assert got == ["b"]


async def test_the_admission_delay_of_a_burst_fades_once_the_engine_is_idle():
    """After a burst no stream is admitted and no final runs: the measured wait must fade on its own, or the
    server refuses every new stream forever (while /health says it is fine)."""
    engine = RecordingEngine()
    engine.gate.set()
    scheduler = Scheduler(engine)
    scheduler.start()
    got = []
    for n, (kind, urgent) in enumerate((("final", False), ("speculative", True)), 1):  # confirmed: counts
        job = Job("a", kind, request(1.0), lambda *a: got.append(1), urgent=urgent)
        job.queued_at -= 8.0  # it waited 8 s for the engine
        scheduler.submit(job)
        await until(lambda n=n: len(got) == n)
    await scheduler.stop()
    assert scheduler.delay_s() > 2.0  # a real burst: above what admission accepts for a while
    scheduler._delay_at -= 30.0  # 30 s later, nothing ran
    assert scheduler.delay_s() < 0.2


async def test_a_stream_that_ends_during_its_engine_call_is_forgotten():
    """Its fairness record is not re-created by the late answer (it would keep the whole session alive)."""
    engine = RecordingEngine()
    scheduler = Scheduler(engine)
    scheduler.start()
    got = []
    scheduler.submit(Job("a", "partial", request(1.0), lambda *a: got.append("a")))
    await until(lambda: scheduler.queued == 0)  # inside the engine call, held by the gate
    scheduler.cancel("a")  # the client went away
    engine.gate.set()
    await until(lambda: got)
    await scheduler.stop()
    assert got == ["a"]
    assert scheduler._usage == {}


class PickyEngine(RecordingEngine):
    """Fails any call that holds the poisoned request; answers the rest."""

    def __init__(self, poison: float, wrong_count: bool = False) -> None:
        super().__init__()
        self.gate.set()
        self.poison, self.wrong_count = poison, wrong_count

    async def transcribe(self, requests):
        lengths = [len(r.audio) / 16000 for r in requests]
        self.calls.append(lengths)
        if self.poison in lengths:
            raise RuntimeError("cannot decode this one")
        results = [fake_result(r) for r in requests]
        return results[:-1] if self.wrong_count and len(results) > 1 else results


async def _run_all(scheduler: Scheduler, jobs: list[Job], expected: int, got: list) -> None:
    scheduler.start()
    for job in jobs:
        scheduler.submit(job)
    for _ in range(200):
        if len(got) == expected:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()


async def test_a_failing_request_fails_alone_and_its_batch_neighbours_get_their_results():
    engine = PickyEngine(poison=2.0)
    got: dict[str, tuple[bool, str | None]] = {}
    jobs = [
        Job(owner, "final", request(s), lambda r, e, t, o=owner: got.__setitem__(o, (r is not None, e)))
        for owner, s in (("a", 1.0), ("b", 2.0), ("c", 3.0))
    ]
    await _run_all(Scheduler(engine), jobs, 3, got)  # type: ignore[arg-type]
    assert engine.calls[0] == [1.0, 2.0, 3.0]  # one batch, which fails, then each alone
    assert got["a"] == (True, None) and got["c"] == (True, None)
    assert got["b"][0] is False and "cannot decode this one" in got["b"][1]


async def test_a_wrong_result_count_fails_nobody_silently():
    engine = PickyEngine(poison=-1.0, wrong_count=True)
    got: list[bool] = []
    jobs = [
        Job(o, "final", request(1.0 + i), lambda r, e, t: got.append(r is not None))
        for i, o in enumerate("ab")
    ]
    await _run_all(Scheduler(engine), jobs, 2, got)
    assert sorted(got) == [True, True]  # the short answer is not paired up; each is retried alone


async def test_a_request_error_item_fails_only_that_request():
    class OneBad(RecordingEngine):
        async def transcribe(self, requests):
            return [
                RequestError("bad language") if len(r.audio) == 32000 else fake_result(r) for r in requests
            ]

    got: dict[str, str | None] = {}
    jobs = [
        Job(o, "final", request(s), lambda r, e, t, o=o: got.__setitem__(o, e))
        for o, s in (("a", 1.0), ("b", 2.0))
    ]
    await _run_all(Scheduler(OneBad()), jobs, 2, got)
    assert got["a"] is None and "bad language" in (got["b"] or "")


async def test_a_dead_scheduling_task_fails_queued_work_reports_unhealthy_and_restarts():
    engine = RecordingEngine()
    engine.gate.set()
    scheduler = Scheduler(engine)
    got: list[str | None] = []
    health: list[bool] = []

    def boom(job, now) -> float:
        raise RuntimeError("bug while choosing a batch")

    def failed(r, e, t) -> None:
        got.append(e)
        health.append(scheduler.healthy)  # what /health reports while the requests are failed

    usage_of = scheduler._usage_of
    scheduler._usage_of = boom  # type: ignore[method-assign]
    scheduler.start()
    scheduler.submit(Job("a", "final", request(1.0), failed))
    scheduler.submit(Job("b", "partial", request(1.0), lambda r, e, t: got.append(e)))
    await until(lambda: got)
    scheduler._usage_of = usage_of  # type: ignore[method-assign]
    assert got and "scheduler error" in (got[0] or "") and health == [False]
    got.clear()
    scheduler.submit(Job("c", "final", request(1.0), lambda r, e, t: got.append(e)))  # after the restart
    await until(lambda: got)
    await scheduler.stop()
    assert got == [None] and scheduler.healthy


async def test_flush_finals_first_speculative_before_partials_and_confirmed_ones_promoted():
    engine = RecordingEngine()
    engine.max_batch_size = 2
    scheduler = Scheduler(engine)
    order: list[str] = []

    def done(tag):
        return lambda result, error, timing: order.append(tag if result is not None else f"shed {tag}")

    scheduler.submit(Job("a", "partial", request(1.0), done("p-a")))
    scheduler.submit(Job("b", "speculative", request(1.1), done("s-b"), request_id=1))
    scheduler.submit(Job("c", "speculative", request(1.2), done("s-c"), request_id=2))
    scheduler.submit(Job("d", "final", request(1.3), done("f-d")))
    scheduler.submit(Job("e", "final", request(1.4), done("f-e"), urgent=True))
    scheduler.promote("b", 1)  # its endpoint came while it was queued: it is a final now, first in line
    scheduler.cancel_request("c", 2)  # speech resumed: dropped unrun
    scheduler.promote("c", 2)  # too late (a race): nothing to promote
    scheduler.cancel_request("b", 1)  # a final now: never cancelled
    scheduler.start()
    engine.gate.set()
    await until(lambda: len(order) == 5)
    await scheduler.stop()
    assert engine.calls == [[1.1, 1.4], [1.3, 1.0]]
    assert "shed s-c" in order
