"""The CPU engine runs `workers` calls at once, one per CTranslate2 replica: a final need not wait for another
stream's call to finish (the scheduler dispatches up to `max_inflight` calls)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from client.kit.speech import load_audio
from whisper_stream.engines import create_engine
from whisper_stream.engines.ctranslate2 import DEFAULT_WORKERS, CTranslate2Engine
from whisper_stream.engines.interface import TranscribeRequest
from whisper_stream.settings import ServerSettings


def busiest(engine: CTranslate2Engine, requests: list[TranscribeRequest]) -> tuple[int, int]:
    """Two calls at once: the most batches CTranslate2 ran at the same time, and the most it queued."""
    running = queued = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal running, queued
        while not done.is_set():
            waiting = engine._model.num_queued_batches  # CTranslate2's "active" counts queued ones too
            running = max(running, engine._model.num_active_batches - waiting)
            queued = max(queued, waiting)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(engine.transcribe_sync, [r]) for r in requests]:
                assert "God" in f.result()[0].text
    finally:
        done.set()
        watcher.join()
    return running, queued


@pytest.mark.parametrize("workers", [1, 0])
def test_calls_run_side_by_side_on_their_own_replicas(speech, workers):
    """`--engine-workers 1`, and the default (0: `DEFAULT_WORKERS`, two)."""
    engine = create_engine(ServerSettings(engine_workers=workers))
    assert isinstance(engine, CTranslate2Engine) and DEFAULT_WORKERS == 2
    workers = workers or DEFAULT_WORKERS
    assert engine.max_inflight == workers and engine._model.num_workers == workers
    audio = load_audio(speech["ls_1221-135766-0001"].path)  # 16.7 s: a call lasts ~0.5 s
    running, queued = busiest(engine, [TranscribeRequest(audio), TranscribeRequest(audio)])
    if workers == 1:
        assert (running, queued) == (1, 1)  # the second call waited for the first
    else:
        assert running == 2  # both ran at once
