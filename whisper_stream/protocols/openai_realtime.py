"""OpenAI's Realtime transcription (`/v1/realtime?intent=transcription`, WebSocket, GA event shapes) over the
same sessions, scheduler and engines.

Only names and shapes live here: `session.update` -> a `StreamConfig` (before any audio) or the session's
`update_config` (from the next utterance); `input_audio_buffer.append` / `.commit` / `.clear` -> audio /
finalize / clear; the core's turn events and transcripts -> `input_audio_buffer.speech_started` /
`speech_stopped` / `committed`, `conversation.item.input_audio_transcription.delta` / `.completed`.

One item per turn. Speculative and pause finals are on as on every protocol, so a long turn's text may come
as several finals: they are joined into the turn's one `completed` (their words arrive as deltas meanwhile).
One item per piece would make a voice agent (LiveKit's and pipecat's OpenAI plugins answer each `completed`)
reply to half a sentence; OpenAI's own server sends one `completed` per committed item.

Deltas: each partial re-transcribes the whole utterance, while OpenAI's deltas only append. A delta carries
the partial's words beyond those already sent, except its last word (often cut mid-word), and only while the
words already sent are still the partial's beginning; `.completed` always has the final transcript, and the
deltas of an item add up to it (a last delta carries the rest when they can).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from typing import Any

from whisper_stream.config import ConfigError, StreamConfig, StreamingParams, VadConfig, WhisperParams, short
from whisper_stream.core.events import Finished, FlushAnswered, Notice, Result, Transcript, TurnEvent
from whisper_stream.core.session import Session
from whisper_stream.serving.driver import Audio, Out, Send
from whisper_stream.serving.runtime import Limits, Runtime
from whisper_stream.serving.transport import Close, Transport

PATH = "/v1/realtime"
PARTIAL_INTERVAL_S = 1.0
DEFAULT_MODEL = "gpt-4o-transcribe"
FORMATS = {"audio/pcm": "pcm_s16le", "audio/pcmu": "pcm_mulaw", "audio/pcma": "pcm_alaw"}
DEFAULT_TURN = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}

# Conformance: every session field and client event -> what this server does with it.
SESSION_FIELDS = {
    "type": "transcription only ('realtime' refused: no responses are generated)",
    "audio.input.format": "audio/pcm (24000 Hz; 8000-48000 accepted), audio/pcmu, audio/pcma (8000 Hz)",
    "audio.input.transcription.model": "accepted and echoed; Whisper transcribes",
    "audio.input.transcription.language": "ISO code; null -> per-utterance detection",
    "audio.input.transcription.prompt": "Whisper's prompt",
    "audio.input.turn_detection": "server_vad (threshold, prefix_padding_ms, silence_duration_ms) or null "
    "(client commits turns); semantic_vad refused",
    "audio.input.noise_reduction": "accepted, not applied",
    "include": "accepted; logprobs not sent",
}
CLIENT_EVENTS = {
    "session.update": "session.updated; before audio: any field; after: from the next utterance (not format)",
    "input_audio_buffer.append": "base64 audio into the session",
    "input_audio_buffer.commit": "ends the turn now: committed, then completed (the fast-final path)",
    "input_audio_buffer.clear": "drops the open turn: cleared",
}


class RealtimeError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _event_id() -> str:
    return "event_" + uuid.uuid4().hex[:20]


class OpenAIRealtimeProtocol:
    """One `/v1/realtime?intent=transcription` connection: one session."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._parsed: tuple[str, Any] | None = None  # the latest frame and its JSON (`_parse`)
        self.id = "sess_" + uuid.uuid4().hex[:20]
        self._fields: dict[str, Any] = {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": DEFAULT_MODEL, "language": None, "prompt": ""},
            "turn_detection": dict(DEFAULT_TURN),
            "noise_reduction": None,
            "include": [],
        }
        self.session = self._new_session(self._config(self._fields), True)
        self._audio_seen = False
        self._appended = 0  # bytes since the last commit
        self._items: dict[int, str] = {}  # utterance -> its item, until its completed
        self._open: int | None = None  # the utterance speech started and no turn end came for yet
        self._last_item: str | None = None
        self._sent: dict[str, list[str]] = {}  # item -> words of its current final already sent as deltas
        self._carried: dict[str, tuple[str, float]] = {}  # item -> (its earlier finals' text, its start)
        self._finished = False

    @property
    def sessions(self) -> tuple[Session, ...]:
        return (self.session,)

    @property
    def finished(self) -> bool:
        return self._finished

    def _new_session(self, config: StreamConfig, end_on_silence: bool) -> Session:
        return self._runtime.session(config, stream_id=self.id, end_on_silence=end_on_silence)

    async def handshake(self, transport: Transport, limits: Limits) -> bool:
        return True  # the intent was checked before the upgrade

    # -- configuration -----------------------------------------------------------------------------------

    def _config(self, fields: dict[str, Any]) -> StreamConfig:
        fmt, tr, td = fields["format"], fields["transcription"], fields["turn_detection"]
        encoding = FORMATS[fmt["type"]]
        rate = int(fmt.get("rate") or 24000) if fmt["type"] == "audio/pcm" else 8000
        vad = VadConfig()
        if td is not None:
            vad = VadConfig(
                threshold=float(td.get("threshold", 0.5)),
                min_silence_duration_ms=int(td.get("silence_duration_ms", 500)),
                speech_pad_ms=min(2000, int(td.get("prefix_padding_ms", 300))),
            )
        language = tr.get("language") or "auto"
        return StreamConfig(
            streaming_vad_config=vad,
            streaming_params=StreamingParams(
                encoding=encoding,  # type: ignore[arg-type]
                sample_rate=rate,
                enable_partial_transcripts=True,
                partial_transcript_interval_s=PARTIAL_INTERVAL_S,
            ),
            whisper_params=WhisperParams(audio_language=language, prompt=tr.get("prompt") or ""),
        )

    def _merge(self, session: Any) -> dict[str, Any]:
        """session.update's `session` over the current fields (validated; RealtimeError names the param)."""
        if not isinstance(session, dict):
            raise RealtimeError("session must be an object", "session")
        kind = session.get("type", "transcription")
        if kind != "transcription":
            raise RealtimeError(
                f"session.type {kind!r}: this server serves transcription sessions only "
                "(connect with ?intent=transcription and session.type 'transcription')",
                "session.type",
            )
        unknown = sorted(set(session) - {"type", "audio", "include", "id", "object", "expires_at"})
        if unknown:
            raise RealtimeError(
                f"unknown session field {unknown[0]!r}", f"session.{unknown[0]}", "unknown_parameter"
            )
        fields = json.loads(json.dumps(self._fields))
        audio = session.get("audio") or {}
        inp = audio.get("input") or {} if isinstance(audio, dict) else None
        if not isinstance(inp, dict):
            raise RealtimeError("session.audio.input must be an object", "session.audio.input")
        for key in set(inp) - {"format", "transcription", "turn_detection", "noise_reduction"}:
            raise RealtimeError(f"unknown field session.audio.input.{key}", f"session.audio.input.{key}")
        if "format" in inp:
            fmt = inp["format"]
            if (
                not isinstance(fmt, dict)
                or not isinstance(fmt.get("type"), str)
                or fmt["type"] not in FORMATS
            ):
                raise RealtimeError(
                    f"session.audio.input.format: type must be one of {', '.join(FORMATS)}",
                    "session.audio.input.format.type",
                )
            rate = fmt.get("rate", 24000 if fmt["type"] == "audio/pcm" else 8000)
            if fmt["type"] == "audio/pcm" and not (isinstance(rate, int) and 8000 <= rate <= 48000):
                raise RealtimeError(
                    f"session.audio.input.format.rate {rate!r}: use 24000 (8000-48000 accepted)",
                    "session.audio.input.format.rate",
                )
            fields["format"] = {"type": fmt["type"], **({"rate": rate} if fmt["type"] == "audio/pcm" else {})}
        if "transcription" in inp:
            tr = inp["transcription"] or {}
            if not isinstance(tr, dict):
                raise RealtimeError("transcription must be an object", "session.audio.input.transcription")
            for key in set(tr) - {"model", "language", "prompt"}:
                raise RealtimeError(
                    f"session.audio.input.transcription.{key} is not supported",
                    f"session.audio.input.transcription.{key}",
                )
            fields["transcription"].update(tr)
        if "turn_detection" in inp:
            td = inp["turn_detection"]
            if td is not None:
                if not isinstance(td, dict) or td.get("type", "server_vad") != "server_vad":
                    raise RealtimeError(
                        "turn_detection: only server_vad (or null for client-committed turns) is available",
                        "session.audio.input.turn_detection.type",
                    )
                extra = set(td) - {*DEFAULT_TURN, "idle_timeout_ms", "create_response", "interrupt_response"}
                if extra:
                    name = sorted(extra)[0]
                    raise RealtimeError(
                        f"turn_detection.{name} is not supported",
                        f"session.audio.input.turn_detection.{name}",
                    )
                for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
                    value = td.get(key, 0)
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, int | float)
                        or not math.isfinite(value)
                    ):
                        raise RealtimeError(
                            f"turn_detection.{key} must be a finite number, got {short(value)}",
                            f"session.audio.input.turn_detection.{key}",
                        )
                base = fields["turn_detection"] or dict(DEFAULT_TURN)
                td = {**base, **{k: v for k, v in td.items() if k in DEFAULT_TURN}, "type": "server_vad"}
            fields["turn_detection"] = td
        if "noise_reduction" in inp:
            fields["noise_reduction"] = inp["noise_reduction"]
        if "include" in session:
            fields["include"] = session["include"] or []
        return fields

    def _session_object(self) -> dict[str, Any]:
        f = self._fields
        return {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": self.id,
            "expires_at": 0,
            "audio": {
                "input": {
                    "format": f["format"],
                    "transcription": f["transcription"],
                    "noise_reduction": f["noise_reduction"],
                    "turn_detection": f["turn_detection"],
                }
            },
            "include": f["include"],
        }

    # -- in ----------------------------------------------------------------------------------------------

    def start(self, now: float) -> list[Out]:
        return [self._own({"type": "session.created", "session": self._session_object()})]

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]:
        if isinstance(frame, bytes):
            return [
                self._error("binary frames are not accepted: send input_audio_buffer.append events", None)
            ]
        try:
            msg = self._parse(frame)
        except ValueError:
            return [self._error("the event is not valid JSON", None, code="invalid_json")]
        if not isinstance(msg, dict):
            return [self._error("an event must be a JSON object", None)]
        kind, client_id = msg.get("type"), msg.get("event_id")
        try:
            if kind == "session.update":
                return self._update(msg.get("session"))
            if kind == "input_audio_buffer.append":
                return self._append(msg.get("audio"), now)
            if kind == "input_audio_buffer.commit":
                return self._commit()
            if kind == "input_audio_buffer.clear":
                self._appended = 0
                if self._open is not None:
                    self._items.pop(self._open, None)
                    self._open = None
                outs: list[Out] = [(self.session, a) for a in self.session.clear()]
                return outs + [self._own({"type": "input_audio_buffer.cleared"})]
        except RealtimeError as exc:
            return [self._error(str(exc), exc.param, client_id, exc.code)]
        return [
            self._error(
                f"unsupported event type {kind!r} for a transcription session; expected session.update, "
                "input_audio_buffer.append, input_audio_buffer.commit or input_audio_buffer.clear",
                "type",
                client_id,
                "unknown_event",
            )
        ]

    def _update(self, session: Any) -> list[Out]:
        fields = self._merge(session)
        try:
            config = self._config(fields)
            manual = fields["turn_detection"] is None
            if not self._audio_seen:
                self._runtime.check_config(config)
                self.session = self._new_session(config, not manual)
            else:
                if fields["format"] != self._fields["format"]:
                    raise RealtimeError(
                        "session.audio.input.format cannot change after audio was appended",
                        "session.audio.input.format",
                    )
                self.session.update_config(config, end_on_silence=not manual)
        except ConfigError as exc:
            raise RealtimeError(str(exc), "session.audio.input.transcription") from None
        except ValueError as exc:  # pydantic bounds (threshold, silence_duration_ms ...)
            if isinstance(exc, RealtimeError):
                raise
            raise RealtimeError(
                " ".join(str(exc).split())[:300], "session.audio.input.turn_detection"
            ) from None
        self._fields = fields
        return [self._own({"type": "session.updated", "session": self._session_object()})]

    def _append(self, audio: Any, now: float) -> list[Out]:
        if not isinstance(audio, str):
            raise RealtimeError("audio must be a base64 string", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("audio is not valid base64", "audio") from None
        self._audio_seen = True
        self._appended += len(data)
        return [(self.session, Audio(data))]

    def audio_only(self, frame: str) -> bool:
        """An `input_audio_buffer.append`: it may be taken before the audio before it is applied."""
        try:
            msg = self._parse(frame)
        except (ValueError, RecursionError):  # on_frame answers it
            return False
        return isinstance(msg, dict) and msg.get("type") == "input_audio_buffer.append"

    def _parse(self, frame: str) -> Any:
        """A frame's JSON, parsed once for `audio_only` and then `on_frame` (the same frame, in turn)."""
        if self._parsed is None or self._parsed[0] is not frame:
            self._parsed = (frame, json.loads(frame))
        return self._parsed[1]

    def _commit(self) -> list[Out]:
        if self._appended == 0:
            raise RealtimeError(
                "the input audio buffer is empty: append audio before committing",
                None,
                "input_audio_buffer_commit_empty",
            )
        self._appended = 0
        return [(self.session, a) for a in self.session.finalize()]

    # -- items: one per turn, its finals joined into its one completed ------------------------------------

    def _item(self, utterance: int) -> str:
        if utterance not in self._items:
            self._items[utterance] = "item_" + uuid.uuid4().hex[:20]
        return self._items[utterance]

    def _committed(self, item: str) -> dict[str, Any]:
        previous, self._last_item = self._last_item, item
        return self._ev("input_audio_buffer.committed", previous_item_id=previous, item_id=item)

    # -- out ---------------------------------------------------------------------------------------------

    def _own(self, event: dict[str, Any]) -> Out:
        return (None, Send({"event_id": _event_id(), **event}))

    def render(self, session: Session | None, result: Result) -> list[dict[str, Any] | Close]:
        if session is not self.session:
            return []  # a session replaced by session.update before any audio
        if isinstance(result, TurnEvent):
            return self._turn(result)
        if isinstance(result, Transcript):
            return self._transcript(result)
        if isinstance(result, FlushAnswered):  # a commit with nothing to transcribe: an empty item, at once
            opened = self._items.pop(self._open, None) if self._open is not None else None
            item = opened or "item_" + uuid.uuid4().hex[:20]
            return [self._committed(item), self._completed(item, "", 0.0)]
        if isinstance(result, Notice):
            error = {"type": "server_error", "code": result.kind.lower(), "message": result.message}
            return [self._ev("error", error={**error, "param": None, "event_id": None})]
        if isinstance(result, Finished):
            self._finished = True
            if result.going_away:
                return [Close(1001, "server is shutting down")]
            return [Close(1000, "end of audio")]
        return []

    def _turn(self, event: TurnEvent) -> list[dict[str, Any] | Close]:
        vad = self._fields["turn_detection"] is not None
        item = self._item(event.utterance)
        if event.kind == "speech_started":
            self._open = event.utterance
        if event.kind in ("speech_started", "speech_stopped") and vad:
            key = "audio_start_ms" if event.kind == "speech_started" else "audio_end_ms"
            return [
                self._ev(f"input_audio_buffer.{event.kind}", **{key: int(event.time_s * 1000)}, item_id=item)
            ]
        if event.kind != "end_of_turn":
            return []
        self._open = None
        out: list[dict[str, Any] | Close] = [self._committed(item)]
        if not event.has_final:  # a click: too short to transcribe, still a committed turn
            self._items.pop(event.utterance, None)
            out.append(self._completed(item, "", 0.0))
        return out

    def _transcript(self, t: Transcript) -> list[dict[str, Any] | Close]:
        item = self._item(t.utterance)
        words = t.text.split()
        sent = self._sent.setdefault(item, [])
        before, start = self._carried.get(item, ("", t.start_s))
        space = " " if sent or before else ""
        if t.kind == "partial":
            stable = words[:-1]
            if stable[: len(sent)] != sent or len(stable) <= len(sent):
                return []
            self._sent[item] = stable
            return [self._delta(item, space + " ".join(stable[len(sent) :]))]
        out: list[dict[str, Any] | Close] = []
        if words[: len(sent)] == sent and len(words) > len(sent):
            out.append(self._delta(item, space + " ".join(words[len(sent) :])))
        self._sent.pop(item, None)
        transcript = f"{before} {t.text}".strip()
        if t.continues:  # more of this turn follows: its completed comes with the turn's last final
            self._carried[item] = (transcript, start)
            return out
        self._carried.pop(item, None)
        self._items.pop(t.utterance, None)
        return out + [self._completed(item, transcript, t.end_s - start)]

    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": _event_id(), **fields}

    def _delta(self, item: str, text: str) -> dict[str, Any]:
        return self._ev(
            "conversation.item.input_audio_transcription.delta", item_id=item, content_index=0, delta=text
        )

    def _completed(self, item: str, transcript: str, seconds: float) -> dict[str, Any]:
        return self._ev(
            "conversation.item.input_audio_transcription.completed",
            item_id=item,
            content_index=0,
            transcript=transcript,
            usage={"type": "duration", "seconds": round(max(0.0, seconds), 3)},
        )

    def _error(
        self, message: str, param: str | None, client_event_id: Any = None, code: str = "invalid_value"
    ) -> Out:
        error = {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
        return self._own({"type": "error", "error": error})

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]:
        error = {
            "type": "server_error",
            "code": error_type.lower(),
            "message": message,
            "param": None,
            "event_id": None,
        }
        return [self._own({"type": "error", "error": error}), (None, Close(code, message[:120]))]

    def idle(self, idle_s: float, now: float) -> list[Out]:
        message = f"no event for {idle_s:g} s: closing the idle session"
        return self.fail("STREAM_ERROR", message, 1000, now)
