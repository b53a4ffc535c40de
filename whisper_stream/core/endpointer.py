"""The endpointing rule, in one place: where speech starts and ends, given Silero's per-frame probabilities.

Silero's streaming rule: speech starts at a frame with p >= threshold; a silence run starts at the first frame
with p < threshold - 0.15 and is cancelled by a frame with p >= threshold (frames in between neither start nor
cancel it); speech ends once the run has lasted `min_silence_duration_ms`, at the run's first frame. That
first silent frame is also the earliest moment the end is known if it comes (`pause_started`): the session
starts a speculative final there, and drops it if speech resumes (`silence_start` back to None). The live
session, the Triton ensemble's VAD trimming and the benchmark's speech bounds all use this code, so they agree
on every frame. Pure: positions in, events out, no audio and no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from whisper_stream.dsp.vad import FRAME, SAMPLE_RATE

NEG_OFFSET = 0.15  # speech ends when p < threshold - 0.15 (Silero's reference iterator)


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    min_silence_duration_ms: int = 300
    speech_pad_ms: int = 0


def silence_frames(min_silence_duration_ms: int) -> int:
    """Frames of silence that end speech (at least one)."""
    return max(1, round(min_silence_duration_ms * SAMPLE_RATE / 1000 / FRAME))


class Endpointer:
    """The rule above, one frame at a time. Positions are stream samples (frame starts), so a caller that cuts
    a segment mid-frame can move `silence_start` to the cut."""

    def __init__(self, threshold: float, min_silence_frames: int) -> None:
        self.threshold = threshold
        self.min_silence_frames = min_silence_frames
        self.in_speech = False
        self.speech_frames = 0  # frames with p >= threshold in the open segment
        self.silence_start: int | None = None  # sample where the current silence run began
        self.pause_started = False  # whether the latest frame began a silence run (its first silent frame)

    def push(self, p: float, frame_start: int) -> Literal["start", "end"] | None:
        """The frame at `frame_start` had speech probability `p`: did speech start, or end?"""
        self.pause_started = False
        if not self.in_speech:
            if p >= self.threshold:
                self.in_speech, self.speech_frames, self.silence_start = True, 1, None
                return "start"
            return None
        if p >= self.threshold:
            self.silence_start = None
            self.speech_frames += 1
        elif p < self.threshold - NEG_OFFSET and self.silence_start is None:
            self.silence_start = frame_start
            self.pause_started = True
        if self.silence_start is not None:
            if (frame_start + FRAME - self.silence_start) // FRAME >= self.min_silence_frames:
                return "end"
        return None

    def open(self) -> None:
        """A segment that is open whatever the audio (fixed segmentation): speech is only counted."""
        self.in_speech, self.speech_frames, self.silence_start = True, 0, None

    def close(self) -> None:
        self.in_speech, self.speech_frames, self.silence_start = False, 0, None


def speech_spans(probs: np.ndarray, opts: VadOptions) -> list[tuple[int, int]]:
    """Speech spans [start, end) in frames of a whole recording, by the same rule as the live session."""
    ep = Endpointer(opts.threshold, silence_frames(opts.min_silence_duration_ms))
    spans: list[tuple[int, int]] = []
    start = 0
    for i, p in enumerate(probs):
        event = ep.push(float(p), i * FRAME)
        if event == "start":
            start = i
        elif event == "end":
            assert ep.silence_start is not None
            spans.append((start, ep.silence_start // FRAME))
            ep.close()
    if ep.in_speech:
        end = ep.silence_start // FRAME if ep.silence_start is not None else len(probs)
        spans.append((start, end))
    return spans


def trim_to_speech(audio: np.ndarray, probs: np.ndarray, opts: VadOptions) -> tuple[np.ndarray, float, bool]:
    """Cut leading and trailing non-speech (keeping speech_pad_ms) -> (audio, offset_s, has_speech)."""
    spans = speech_spans(probs, opts)
    if not spans:
        return audio[:0], 0.0, False
    pad = opts.speech_pad_ms * SAMPLE_RATE // 1000
    begin = max(0, spans[0][0] * FRAME - pad)
    end = min(len(audio), spans[-1][1] * FRAME + pad)
    return audio[begin:end], begin / SAMPLE_RATE, True
