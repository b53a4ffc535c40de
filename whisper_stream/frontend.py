"""The audio front end of every stream, off the event loop: decoding and resampling in worker threads, and
Silero VAD batched across streams.

Per message the event loop only hands work to the pool and applies the result (`Session.on_frames`): the
one loop thread that reads every socket never waits behind a 1 MiB frame's decoding. VAD requests gather for
one tick (`VAD_TICK_S`) and then run as one batch: one ONNX call per 32 ms frame step serves every stream with
frames waiting (`SileroModel.run_streams`). An ONNX call costs about the same for 1 or many streams, so with
many real-time streams this cuts the VAD's CPU severalfold, for at most a tick of added latency. While the
batches hold a single stream there is no tick: a lone client uploading small frames as fast as it can is not
slowed to one frame per tick.

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
VAD_TICK_S = 0.02  # VAD requests gather this long before one batched call (clients send every 32 ms)
# A message this small (0.5 s of 16 kHz s16le; clients send 32 ms) is decoded on the loop: the hop to a worker
# thread costs more than decoding it. Larger ones (up to --max-frame-bytes) go to the pool.
INLINE_DECODE_BYTES = 16 << 10


class FrontEnd:
    def __init__(self, model: SileroModel, threads: int = FRONTEND_THREADS) -> None:
        self.model = model
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frontend")
        self._waiting: list[tuple[SileroStream, np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._running = False
        self._last_batch = 1  # streams in the latest batch: more than one means others are worth waiting for

    async def feed(self, session: Session, data: bytes) -> list[Action]:
        """`session.feed_audio` with the costly parts in the pool and its VAD batched with other streams'
        (a session on another VAD, e.g. a test's, runs `feed_audio` as it is)."""
        vad = session.vad
        if not isinstance(vad, SileroStream):
            return session.feed_audio(data, time.time())
        loop = asyncio.get_running_loop()
        if len(data) <= INLINE_DECODE_BYTES:
            frames = session.take_frames(data)
        else:
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
            if self._last_batch > 1:
                await asyncio.sleep(VAD_TICK_S)  # let the other streams' frames of this tick join the batch
            while self._waiting:
                batch, self._waiting = self._waiting, []
                streams = [s for s, _, _ in batch]
                self._last_batch = len(streams)
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
