"""Signals that a decoded segment is not speech but Whisper inventing text."""

from __future__ import annotations

from whisper_stream.engine import (
    COMPRESSION_RATIO_THRESHOLD,
    LOG_PROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    Segment,
)


def is_silence(seg: Segment) -> bool:
    """Whisper's own rule for dropping a window as non-speech."""
    return seg.no_speech_prob > NO_SPEECH_THRESHOLD and seg.avg_logprob < LOG_PROB_THRESHOLD


def possible_hallucination(seg: Segment) -> bool:
    return (
        seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        or seg.avg_logprob < LOG_PROB_THRESHOLD
        or seg.no_speech_prob > NO_SPEECH_THRESHOLD
    )
