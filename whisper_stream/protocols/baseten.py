"""Baseten's Whisper Streaming protocol (`/v1/websocket`): the metadata frame, the control messages and the
`transcription` frame, as one adapter of the neutral core like Deepgram's and OpenAI's.

Additions old clients ignore: the top-level `transcript` (+ `confidence`, `message_type`) that the documented
example and pipecat read, `server_lag_s`, a non-terminal `{"type": "finalize"}` (and pipecat's bare
`finalize`), `update_config`, LiveKit's `terminate_session`.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

from whisper_stream.config import ConfigError, merge_update, parse_metadata, short
from whisper_stream.core.events import Finished, Notice, Result, Segment, Transcript
from whisper_stream.core.session import Session
from whisper_stream.serving.driver import Audio, EndAudio, Out, Send
from whisper_stream.serving.runtime import Limits, Runtime
from whisper_stream.serving.transport import (
    CLOSE_INVALID,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    Close,
    Transport,
    fail_transport,
)

PATH = "/v1/websocket"
TRACE_ID_CHARS = 256  # a trace_id is echoed back: longer ones are refused, not echoed
ERROR_TYPES = (
    "CONFIGURATION_ERROR",
    "AUDIO_PROCESSING_ERROR",
    "TRANSCRIPTION_ERROR",
    "STREAM_ERROR",
    "WEBSOCKET_ERROR",
)


# -- messages ---------------------------------------------------------------------------------------------


def segment_dict(seg: Segment, language: str, language_prob: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "start_time": round(seg.start_s, 3),
        "end_time": round(seg.end_s, 3),
        "text": seg.text,
        "log_prob": round(seg.log_prob, 4),
        "possible_hallucination": seg.possible_hallucination,
        "language_code": language,
        "language_prob": None if language_prob is None else round(language_prob, 4),
    }
    if seg.words is not None:
        out["word_timestamps"] = [
            {
                "word": w.text,
                "start_time": round(w.start_s, 3),
                "end_time": round(w.end_s, 3),
                "prob": round(w.prob, 4),
            }
            for w in seg.words
        ]
    return out


def transcription(t: Transcript) -> dict[str, Any]:
    segments = [segment_dict(s, t.language, t.language_prob) for s in t.segments]
    log_probs = [s["log_prob"] for s in segments]
    msg: dict[str, Any] = {
        "type": "transcription",
        "is_final": t.kind == "final",
        "transcription_num": t.number,
        "segments": segments,
        "language_code": t.language,
        "language_prob": None if t.language_prob is None else round(t.language_prob, 4),
        "audio_length_sec": round(t.end_s - t.start_s, 3),
        "transcript": t.text,
        "confidence": round(math.exp(sum(log_probs) / len(log_probs)), 4) if log_probs else 0.0,
        "message_type": "final_transcript" if t.kind == "final" else "partial_transcript",
        "server_lag_s": round(max(0.0, t.lag_s), 3),
    }
    if t.end_of_audio:
        msg["is_end_of_audio_flush"] = True
    if t.timing is not None:
        msg["timing_info"] = t.timing
    return msg


def error(
    error_type: str, message: str, *, stream_id: str | None, recoverable: bool, **extra: Any
) -> dict[str, Any]:
    assert error_type in ERROR_TYPES, error_type
    body = {
        "error_type": error_type,
        "message": message,
        "stream_id": stream_id or "",
        "recoverable": recoverable,
        "timestamp": time.time(),
        **extra,
    }
    return {"type": "error", "trace_id": None, "timestamp": None, "body": body}


def _ack(kind: str, status: str, trace_id: Any = None) -> dict[str, Any]:
    return {"type": kind, "trace_id": trace_id, "body": {"status": status}}


# -- the protocol -----------------------------------------------------------------------------------------


class BasetenProtocol:
    """One `/v1/websocket` connection: its metadata frame makes the session (`handshake`)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.session: Session | None = None

    @property
    def sessions(self) -> Sequence[Session]:
        return (self.session,) if self.session is not None else ()

    @property
    def finished(self) -> bool:
        return self.session is not None and self.session.finished

    @property
    def stream_id(self) -> str | None:
        return self.session.stream_id if self.session is not None else None

    async def handshake(self, transport: Transport, limits: Limits) -> bool:
        """The metadata frame -> the session; or an error frame and a close that says why."""
        config_error = "CONFIGURATION_ERROR"
        try:
            first = await asyncio.wait_for(transport.recv(), limits.metadata_timeout_s)
        except TimeoutError:
            message = f"no metadata within {limits.metadata_timeout_s:g} s"
            msg = error(config_error, message, stream_id=None, recoverable=False)
            return await fail_transport(transport, msg, CLOSE_POLICY, message)
        problem: tuple[str, int] | None = None
        raw: Any = None
        if isinstance(first, bytes):
            problem = (
                "the first frame must be the JSON metadata (text), got binary audio",
                CLOSE_UNSUPPORTED,
            )
        elif len(first.encode("utf-8", "replace")) > limits.max_text_bytes:
            problem = (f"metadata of more than {limits.max_text_bytes} bytes", CLOSE_TOO_BIG)
        else:
            try:
                raw = json.loads(first)
            except RecursionError:
                problem = ("metadata is not valid JSON: nested too deeply", CLOSE_INVALID)
            except ValueError as exc:
                problem = (f"metadata is not valid JSON: {str(exc)[:160]}", CLOSE_INVALID)
        if problem is not None:
            msg = error(config_error, problem[0], stream_id=None, recoverable=False)
            return await fail_transport(transport, msg, problem[1], problem[0])
        stream_id = raw.get("stream_id") if isinstance(raw, dict) else None
        if not isinstance(stream_id, str) or not stream_id.isprintable() or len(stream_id) > 128:
            stream_id = None
        stream_id = stream_id or uuid.uuid4().hex[:12]
        try:
            config = parse_metadata(raw)
            self._runtime.check_config(config)
        except ConfigError as exc:
            if exc.field in ("streaming_params.encoding", "streaming_params.sample_rate"):
                code = CLOSE_UNSUPPORTED
            else:
                code = CLOSE_POLICY if exc.unsupported else CLOSE_INVALID
            msg = error(config_error, str(exc), stream_id=stream_id, recoverable=False, field=exc.field)
            return await fail_transport(transport, msg, code, str(exc))
        self.session = self._runtime.session(config, stream_id=stream_id)
        return True

    def start(self, now: float) -> list[Out]:
        return []

    def audio_only(self, frame: str) -> bool:
        return False

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]:
        session = self.session
        assert session is not None
        if isinstance(frame, bytes):
            return [(session, Audio(frame))]
        return self._control(session, frame, now)

    def _control(self, session: Session, text: str, now: float) -> list[Out]:
        """A text frame after the metadata: a control message, or a recoverable error."""
        if text.strip().lower() == "finalize":  # pipecat's bare flush signal
            return [(session, a) for a in session.finalize()]
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
            return self._problem(
                'text frame is not valid JSON; send a control message such as {"type": "end_audio"}'
            )
        if not isinstance(msg, dict):
            return self._problem("control message must be a JSON object")
        trace_id = msg.get("trace_id")
        if msg.get("terminate_session") is True:  # LiveKit's end-of-stream signal
            return self._end_audio(session, None)
        kind = msg.get("type")
        if not (trace_id is None or isinstance(trace_id, str | int) and len(str(trace_id)) <= TRACE_ID_CHARS):
            return self._problem(f"trace_id must be a string of at most {TRACE_ID_CHARS} characters")
        if kind == "end_audio":
            return self._end_audio(session, trace_id)
        if kind == "finalize":
            return [(session, a) for a in session.finalize()]
        if kind == "health_check":
            body = {"healthy": True, "stream_id": session.stream_id, "server_lag_s": round(session.lag_s, 3)}
            return [self._own({"type": "health_check", "trace_id": trace_id, "timestamp": now, "body": body})]
        if kind == "update_config":
            try:
                applied = session.update_config(merge_update(session.config, msg.get("body")))
            except ConfigError as exc:
                sid, field = session.stream_id, exc.field
                return [
                    self._own(
                        error("CONFIGURATION_ERROR", str(exc), stream_id=sid, recoverable=True, field=field)
                    )
                ]
            return [
                self._own(_ack("update_config", "applied" if applied else "pending_utterance_end", trace_id))
            ]
        return self._problem(
            f"unknown control message type {short(kind)}; expected one of "
            "'end_audio', 'finalize', 'health_check', 'update_config'"
        )

    def _end_audio(self, session: Session, trace_id: Any) -> list[Out]:
        if not session.accepting_audio:
            return []
        return [self._own(_ack("end_audio", "acknowledged", trace_id)), (session, EndAudio())]

    def _problem(self, message: str) -> list[Out]:
        return [self._own(error("STREAM_ERROR", message, stream_id=self.stream_id, recoverable=True))]

    @staticmethod
    def _own(message: dict[str, Any]) -> Out:
        return (None, Send(message))

    def render(self, session: Session | None, result: Result) -> list[dict[str, Any] | Close]:
        if isinstance(result, Transcript):
            if result.segments or result.end_of_audio or result.language_only:
                return [transcription(result)]
            return []  # an empty final: Baseten's clients are sent nothing for it
        if isinstance(result, Notice):
            extra = {} if result.start_s is None else {"start_time": result.start_s, "end_time": result.end_s}
            sid, ok = self.stream_id, result.recoverable
            return [error(result.kind, result.message, stream_id=sid, recoverable=ok, **extra)]
        if isinstance(result, Finished):
            if result.going_away:
                return [Close(1001, "server is shutting down")]
            return [_ack("end_audio", "finished"), Close(1000, "end of audio")]
        return []  # turn events: Baseten's protocol has none

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]:
        msg = error(error_type, message, stream_id=self.stream_id, recoverable=False)
        return [(None, Send(msg)), (None, Close(code, message))]

    def idle(self, idle_s: float, now: float) -> list[Out]:
        message = f"no audio or control message for {idle_s:g} s: closing the idle stream"
        return self.fail("STREAM_ERROR", message, CLOSE_POLICY, now)
