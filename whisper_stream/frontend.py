"""The audio front end of every stream, off the event loop: decoding and resampling in worker threads, and
Silero VAD batched across streams.

Per message the event loop only hands work to the pool and applies the result (`Session.on_frames`): the
one loop thread that reads every socket never waits behind a 1 MiB frame's decoding. VAD requests that
arrive while a batch runs wait for the next one, so under load one ONNX call per 32 ms step serves every
stream with frames waiting (`SileroModel.run_streams`); a lone stream is served at once (no tick delay).

Memory: nothing per stream beyond the frames of the message in progress.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from whisper_stream.session import Action, Session
from whisper_stream.vad import SileroModel, SileroStream

FRONTEND_THREADS = 2  # decoding/resampling and VAD batches; each ONNX call uses one core


class FrontEnd:
    def __init__(self, model: SileroModel, threads: int = FRONTEND_THREADS) -> None:
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frontend")
        self._waiting: list[tuple[SileroStream, np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._running = False

    async def feed(self, session: Session, data: bytes) -> list[Action]:
        """`session.feed_audio` with the costly parts in the pool and its VAD batched with other streams'
        (a session on another VAD, e.g. a test's, runs `feed_audio` as it is)."""
        vad = session.vad
        if not isinstance(vad, SileroStream):
            return session.feed_audio(data, time.time())
        loop = asyncio.get_running_loop()
        frames = await loop.run_in_executor(self._pool, session.take_frames, data)
        if not len(frames):
            return []
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._waiting.append((vad, frames, future))
        if not self._running:
            self._running = True
            loop.create_task(self._run_batches())
        return session.on_frames(frames, await future)

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                streams = [s for s, _, _ in batch]
                try:
                    probs = await loop.run_in_executor(
                        self._pool, self.model.run_streams, streams, [f for _, f, _ in batch]
                    )
                except Exception as exc:  # every stream of the batch gets the failure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), p in zip(batch, probs, strict=True):
                    if not future.done():
                        future.set_result(p)
        finally:
            self._running = False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
