"""Outgoing JSON messages, shaped as Baseten's Whisper Streaming server sends them, plus our additions.

Additions old clients ignore: the top-level `transcript` (+ `confidence`, `message_type`) that the documented
example and pipecat read, and `server_lag_s` (seconds of received audio the transcript does not cover yet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from whisper_stream.engines.interface import Segment

ERROR_TYPES = (
    "CONFIGURATION_ERROR",
    "AUDIO_PROCESSING_ERROR",
    "TRANSCRIPTION_ERROR",
    "STREAM_ERROR",
    "WEBSOCKET_ERROR",
)


def segment_dict(
    seg: Segment,
    offset_s: float,
    language: str,
    language_prob: float | None,
    hallucination: bool,
    word_timestamps: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "start_time": round(offset_s + seg.start, 3),
        "end_time": round(offset_s + seg.end, 3),
        "text": seg.text.strip(),
        "log_prob": round(seg.avg_logprob, 4),
        "possible_hallucination": hallucination,
        "language_code": language,
        "language_prob": None if language_prob is None else round(language_prob, 4),
    }
    if word_timestamps:
        out["word_timestamps"] = [
            {
                "word": w.word.strip(),
                "start_time": round(offset_s + w.start, 3),
                "end_time": round(offset_s + w.end, 3),
                "prob": round(w.prob, 4),
            }
            for w in seg.words
        ]
    return out


def transcription(
    *,
    is_final: bool,
    number: int,
    segments: Sequence[dict[str, Any]],
    language: str,
    language_prob: float | None,
    audio_length_s: float,
    lag_s: float,
    flush: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    text = " ".join(s["text"] for s in segments if s["text"]).strip()
    log_probs = [s["log_prob"] for s in segments]
    msg: dict[str, Any] = {
        "type": "transcription",
        "is_final": is_final,
        "transcription_num": number,
        "segments": list(segments),
        "language_code": language,
        "language_prob": None if language_prob is None else round(language_prob, 4),
        "audio_length_sec": round(audio_length_s, 3),
        "transcript": text,
        "confidence": round(math.exp(sum(log_probs) / len(log_probs)), 4) if log_probs else 0.0,
        "message_type": "final_transcript" if is_final else "partial_transcript",
        "server_lag_s": round(max(0.0, lag_s), 3),
    }
    if flush:
        msg["is_end_of_audio_flush"] = True
    msg.update(extra)
    return msg


def error(
    error_type: str, message: str, *, stream_id: str | None, recoverable: bool, now: float, **extra: Any
) -> dict[str, Any]:
    assert error_type in ERROR_TYPES, error_type
    body = {
        "error_type": error_type,
        "message": message,
        "stream_id": stream_id or "",
        "recoverable": recoverable,
        "timestamp": now,
        **extra,
    }
    return {"type": "error", "trace_id": None, "timestamp": None, "body": body}


def end_audio(status: str, trace_id: Any = None) -> dict[str, Any]:
    return {"type": "end_audio", "trace_id": trace_id, "body": {"status": status}}


def update_config(status: str, trace_id: Any = None) -> dict[str, Any]:
    """The answer to `update_config`: `applied` (no utterance open) or `pending_utterance_end`."""
    return {"type": "update_config", "trace_id": trace_id, "body": {"status": status}}


def health(trace_id: Any, now: float, stream_id: str | None, lag_s: float) -> dict[str, Any]:
    return {
        "type": "health_check",
        "trace_id": trace_id,
        "timestamp": now,
        "body": {"healthy": True, "stream_id": stream_id or "", "server_lag_s": round(lag_s, 3)},
    }
