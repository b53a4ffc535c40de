"""Fakes for unit tests of the session logic: a VAD that hears loudness, and synthetic audio."""

from __future__ import annotations

import numpy as np

from whisper_stream.engines.interface import Segment, TranscribeRequest, TranscribeResult

SR = 16_000


class LoudnessVad:
    """p = 0.9 for frames with RMS above 0.05, else 0.02; records how many frames it saw."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.frames += len(frames)
        rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
        return np.where(rms > 0.05, 0.9, 0.02).astype(np.float32)


def tone(seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def fake_result(request: TranscribeRequest, text: str | None = None, **seg: float) -> TranscribeResult:
    """A result whose text records the window length, so tests can see what audio was sent."""
    duration = len(request.audio) / SR
    body = text if text is not None else f"audio {duration:.2f}"
    fields = {"avg_logprob": -0.1, "no_speech_prob": 0.01, "compression_ratio": 1.0, **seg}
    return TranscribeResult(
        segments=(Segment(start=0.0, end=duration, text=" " + body, **fields),),  # type: ignore[arg-type]
        language="en",
        language_prob=None,
    )
