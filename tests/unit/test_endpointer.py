"""The endpointing rule; the live session, the Triton trim and the benchmark share it frame for frame."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.fakes import BasetenStream, pcm
from whisper_stream.config import parse_metadata
from whisper_stream.core.endpointer import Endpointer, VadOptions, speech_spans, trim_to_speech
from whisper_stream.core.events import Transcribe
from whisper_stream.dsp.vad import FRAME

SR = 16_000


def events(probs: list[float], threshold: float = 0.5, min_silence: int = 3) -> list[tuple[int, str]]:
    ep, out = Endpointer(threshold, min_silence), []
    for i, p in enumerate(probs):
        event = ep.push(p, i * FRAME)
        if event:
            out.append((i, event))
            if event == "end":
                ep.close()
    return out


def test_speech_starts_at_the_threshold_and_ends_after_the_silence_run():
    assert events([0.1, 0.5, 0.9, 0.2, 0.2, 0.2, 0.9]) == [(1, "start"), (5, "end"), (6, "start")]


def test_frames_between_the_two_thresholds_neither_start_nor_cancel_a_silence_run():
    # 0.4 is below 0.5 (no start, no cancel) and above 0.35 (no silence of its own)
    assert events([0.4, 0.4]) == []
    assert events([0.9, 0.3, 0.4, 0.4, 0.9]) == [(0, "start"), (3, "end"), (4, "start")]
    assert events([0.9, 0.3, 0.9, 0.3, 0.3, 0.3]) == [(0, "start"), (5, "end")]  # 0.9 cancels the run


def test_spans_end_at_the_first_frame_of_the_silence_run():
    probs = np.array([0.1, 0.9, 0.9, 0.4, 0.2, 0.2, 0.2, 0.1, 0.9, 0.9], np.float32)
    # the run starts at frame 4 (0.4 is no silence), where the span ends; the last one runs to the end
    assert speech_spans(probs, VadOptions(min_silence_duration_ms=96)) == [(1, 4), (8, 10)]
    audio = np.ones(len(probs) * FRAME, np.float32)
    trimmed, offset, has_speech = trim_to_speech(audio, probs, VadOptions(min_silence_duration_ms=96))
    assert has_speech and offset == FRAME / SR and len(trimmed) == 9 * FRAME


class Scripted:
    """A VAD that returns a fixed probability sequence, frame after frame."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs, self.i = probs, 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = self.probs[self.i : self.i + len(frames)]
        self.i += len(frames)
        return out


@pytest.mark.parametrize("seed", range(5))
def test_the_live_session_and_speech_spans_agree_on_every_frame(seed):
    rng = np.random.default_rng(seed)
    # runs of speech-like, borderline and silent probabilities of random lengths
    probs = np.concatenate(
        [np.full(rng.integers(1, 40), rng.choice([0.05, 0.3, 0.42, 0.7, 0.95])) for _ in range(60)]
        + [np.full(20, 0.05)]  # trailing silence closes the last utterance
    ).astype(np.float32)
    opts = VadOptions(threshold=0.5, min_silence_duration_ms=300)
    meta = {
        "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 0},
        # only finals the endpoint asks for: no speculative decodes, no finals at pauses in long speech
        "streaming_params": {"speculative_finals": False, "pause_final_after_s": 0},
    }
    session = BasetenStream(parse_metadata(meta), Scripted(probs), stream_id="s")
    actions = session.feed_audio(pcm(np.zeros(len(probs) * FRAME, np.float32)), now=0.0)
    finals = [
        (round(a.start_s * SR) // FRAME, round(a.end_s * SR) // FRAME)
        for a in actions
        if isinstance(a, Transcribe)
    ]
    closed = [
        s for s in speech_spans(probs, opts) if s[1] < len(probs)
    ]  # the session still holds the open one
    long_enough = [s for s in closed if np.sum(probs[s[0] : s[1]] >= 0.5) >= 5]  # MIN_SPEECH_FRAMES
    assert finals == long_enough and finals, (finals, long_enough)
