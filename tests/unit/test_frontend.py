"""The per-tick front end with the real Silero model and real speech: batching streams changes no stream's
actions, a session's audio is applied in order, one stream's bad audio fails only that stream."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from client.kit.speech import load_audio, to_pcm16
from whisper_stream.config import parse_metadata
from whisper_stream.core.events import Transcribe
from whisper_stream.core.session import Session
from whisper_stream.dsp.vad import SileroModel
from whisper_stream.serving.frontend import GATHER_MAX_BYTES, FrontEnd, Ticket
from whisper_stream.serving.stream_audio import StreamAudio

FRAME_BYTES = 1024  # 32 ms of 16 kHz s16le, what clients send


@pytest.fixture(scope="module")
def model() -> SileroModel:
    return SileroModel()


META = {"streaming_params": {"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.5}}


class Stream:
    """A session and its audio state, as the driver pairs them."""

    def __init__(self, model: SileroModel) -> None:
        self.session = Session(parse_metadata(META), stream_id="t")
        self.audio = StreamAudio("pcm_s16le", 16000, model.stream())

    def submit(self, front: FrontEnd, data: bytes, on_done) -> Ticket:
        return front.submit(self.session, self.audio, data, on_done)


def session(model: SileroModel) -> Stream:
    return Stream(model)


def summary(actions: list) -> list[tuple[str, int, int]]:
    """What a stream did: each request's kind and window (the session's clock is its own audio)."""
    return [(a.kind, len(a.request.audio), a.number) for a in actions if isinstance(a, Transcribe)]


def alone(model: SileroModel, pcm: bytes) -> list:
    s, actions = Stream(model), []
    for i in range(0, len(pcm), FRAME_BYTES):
        frames = s.audio.take_frames(pcm[i : i + FRAME_BYTES])
        actions += s.session.on_frames(frames, s.audio.vad(frames)) if len(frames) else []
    return actions


class CountingModel(SileroModel):
    """The real model, counting its calls and the streams in each."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def run(self, inputs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(inputs))
        return super().run(inputs, state)


async def stream_all(front: FrontEnd, sessions: list[Stream], pcms: list[bytes]) -> list[list]:
    """Each stream sends its next 32 ms frame every tick, as real-time clients do; one ticket at a time."""
    got: list[list] = [[] for _ in sessions]
    done = asyncio.Event()
    pending = [0]

    def on_done(ticket: Ticket) -> None:
        assert ticket.error is None
        got[[s.session for s in sessions].index(ticket.session)].extend(ticket.actions)
        pending[0] -= 1
        if not pending[0]:
            done.set()

    for i in range(0, max(len(p) for p in pcms), FRAME_BYTES):
        done.clear()
        for s, p in zip(sessions, pcms, strict=True):
            if i < len(p):
                pending[0] += 1
                s.submit(front, p[i : i + FRAME_BYTES], on_done)
        await done.wait()
    return got


async def test_batched_streams_act_exactly_as_each_alone(speech):
    model = CountingModel()
    front = FrontEnd(model)
    ids = ["ls_1089-134686-0001", "ls_1221-135766-0002", "ls_61-70968-0000"]
    pcms = [to_pcm16(load_audio(speech[i].path)) + bytes(32000) for i in ids]
    try:
        got = await stream_all(front, [session(model) for _ in ids], pcms)
    finally:
        front.close()
    assert max(model.calls) == len(ids)  # the streams did share ONNX calls
    for actions, pcm in zip(got, pcms, strict=True):
        want = summary(alone(SileroModel(), pcm))
        assert any(kind == "final" or kind == "speculative" for kind, _, _ in want)
        assert summary(actions) == want


async def test_a_sessions_tickets_are_applied_in_order_one_per_batch(model, speech):
    """Tickets of one session submitted before a batch runs: the second waits for the next batch."""
    front = FrontEnd(model)
    pcm = to_pcm16(load_audio(speech["ls_1089-134686-0001"].path)) + bytes(32000)
    s, order, actions = session(model), [], []

    def on_done(ticket: Ticket) -> None:
        order.append(ticket)
        actions.extend(ticket.actions)

    try:
        chunk = 16 * FRAME_BYTES
        tickets = [s.submit(front, pcm[i : i + chunk], on_done) for i in range(0, len(pcm), chunk)]
        while len(order) < len(tickets):
            await asyncio.sleep(0.01)
    finally:
        front.close()
    assert order == tickets
    assert summary(actions) == summary(alone(SileroModel(), pcm))


async def test_bad_audio_fails_its_own_ticket_only(model, speech):
    front = FrontEnd(model)
    pcm = to_pcm16(load_audio(speech["ls_1089-134686-0001"].path))[: 100 * FRAME_BYTES]
    good, bad = session(model), session(model)

    def broken(data: bytes) -> np.ndarray:
        raise ValueError("undecodable")

    bad.audio.take_frames = broken  # type: ignore[method-assign]
    finished: list[Ticket] = []
    try:
        tickets = [s.submit(front, pcm, finished.append) for s in (good, bad)]
        while len(finished) < 2:
            await asyncio.sleep(0.01)
    finally:
        front.close()
    assert isinstance(tickets[1].error, ValueError) and tickets[0].error is None
    assert good.session.received_s == pytest.approx(100 * FRAME_BYTES / 2 / 16000)


async def test_a_cancelled_ticket_is_never_applied(model, speech):
    front = FrontEnd(model)
    pcm = to_pcm16(load_audio(speech["ls_1089-134686-0001"].path))[: 10 * FRAME_BYTES]
    s, finished = session(model), []
    try:
        ticket = s.submit(front, pcm, finished.append)
        ticket.cancelled = True
        other = session(model).submit(front, pcm, finished.append)
        while not other.done:
            await asyncio.sleep(0.01)
    finally:
        front.close()
    assert finished == [other] and s.session.received_s == 0


async def test_audio_joins_a_waiting_ticket_up_to_its_bound(model, speech):
    front = FrontEnd(model)
    pcm = to_pcm16(load_audio(speech["ls_1089-134686-0001"].path))
    s, finished = session(model), []
    try:
        ticket = s.submit(front, pcm[:FRAME_BYTES], finished.append)
        assert front.extend(ticket, pcm[FRAME_BYTES : 2 * FRAME_BYTES])  # still waiting for its batch
        assert not front.extend(ticket, bytes(GATHER_MAX_BYTES))  # over the bound: a ticket of its own
        while not finished:
            await asyncio.sleep(0.01)
        assert not front.extend(ticket, pcm[2 * FRAME_BYTES : 3 * FRAME_BYTES])  # applied: too late
    finally:
        front.close()
    assert s.session.received_s == pytest.approx(2 * FRAME_BYTES / 2 / 16000)


async def test_an_owner_that_fails_does_not_stop_the_batch(model, speech):
    front = FrontEnd(model)
    pcm = to_pcm16(load_audio(speech["ls_1089-134686-0001"].path))[: 10 * FRAME_BYTES]
    finished: list[Ticket] = []

    def broken(ticket: Ticket) -> None:
        raise RuntimeError("the owner's bug")

    try:
        session(model).submit(front, pcm, broken)
        other = session(model).submit(front, pcm, finished.append)  # the same batch
        for _ in range(200):
            if finished:
                break
            await asyncio.sleep(0.01)
    finally:
        front.close()
    assert finished == [other]
