"""OpenAI's Realtime transcription (`/v1/realtime?intent=transcription`, WebSocket, GA event shapes) over the
same sessions, scheduler and engines.

Only names and shapes live here: `session.update` -> a `StreamConfig` (before any audio) or the session's
`update_config` (from the next utterance); `input_audio_buffer.append` / `.commit` / `.clear` -> feed_audio /
finalize / clear; the session's turn events and transcriptions -> `input_audio_buffer.speech_started` /
`speech_stopped` / `committed`, `conversation.item.input_audio_transcription.delta` / `.completed`.

Deltas: each partial re-transcribes the whole utterance, while OpenAI's deltas only append. A delta carries
the partial's words beyond those already sent, except its last word (often cut mid-word), and only while the
words already sent are still the partial's beginning; `.completed` always has the final transcript, and the
deltas of an item add up to it (a last delta carries the rest when they can).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from whisper_stream.config import ConfigError, StreamConfig, StreamingParams, VadConfig, WhisperParams, short
from whisper_stream.session import Close, Event, Send, Session, Transcribe
from whisper_stream.stream import Audio, Out, Runtime

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
        self._open_item: str | None = None
        self._items: dict[int, str] = {}  # session segment -> item id
        self._last_item: str | None = None
        self._sent: dict[str, list[str]] = {}  # item -> words already sent as deltas
        # client-committed turns longer than Whisper's 30 s window: finals of the pieces before the commit
        self._pieces: set[int] = set()  # segments that are such a piece
        self._carried: dict[str, tuple[str, float]] = {}  # item -> (its pieces' text, its start)
        self._finished = False

    @property
    def sessions(self) -> tuple[Session, ...]:
        return (self.session,)

    @property
    def finished(self) -> bool:
        return self._finished

    def _new_session(self, config: StreamConfig, end_on_silence: bool) -> Session:
        return self._runtime.session(config, stream_id=self.id, events=True, end_on_silence=end_on_silence)

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
                # an item is committed when its final is requested; a speculative decode may still be
                # dropped, so this adapter keeps the plain path (its commit stays fast: an urgent final)
                speculative_finals=False,
                # an item is one turn, as turn_detection ends it: no finals at pauses inside it
                pause_final_after_s=0.0,
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
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise RealtimeError(
                            f"turn_detection.{key} must be a number, got {short(value)}",
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
                self._open_item = None
                outs = self._wrap(self.session.clear())
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

    def on_actions(self, session: Session, actions: list[Any]) -> list[Out]:
        return self._wrap(actions)

    def _commit(self) -> list[Out]:
        if self._appended == 0:
            raise RealtimeError(
                "the input audio buffer is empty: append audio before committing",
                None,
                "input_audio_buffer_commit_empty",
            )
        self._appended = 0
        actions, final_coming = self.session.finalize_turn()
        outs = self._wrap(actions)
        if not final_coming:
            item = self._item_for_commit()  # no speech in the turn: an empty transcript, at once
            outs += [self._committed(item), self._own(self._completed(item, "", 0.0))]
        return outs

    def on_result(
        self, session: Session, request_id: int, result: Any, error: str | None, now: float, timing: Any
    ) -> list[Out]:
        if session is not self.session:
            return []
        return self._wrap(session.on_result(request_id, result, error, now, timing))

    # -- items -------------------------------------------------------------------------------------------

    def _new_item(self) -> str:
        return "item_" + uuid.uuid4().hex[:20]

    def _item_for_commit(self) -> str:
        item = self._open_item or self._new_item()
        self._open_item = None
        return item

    def _committed(self, item: str) -> Out:
        previous, self._last_item = self._last_item, item
        return self._own(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item}
        )

    def _wrap(self, actions: list[Any]) -> list[Out]:
        outs: list[Out] = []
        vad = self._fields["turn_detection"] is not None
        stopped = None  # an item whose speech_stopped went out: it is committed, even if it held no words
        for action in actions:
            if isinstance(action, Event) and action.kind in ("speech_started", "speech_stopped"):
                if action.kind == "speech_started":
                    self._open_item = self._new_item()
                self._open_item = self._open_item or self._new_item()
                if vad:
                    key = "audio_start_ms" if action.kind == "speech_started" else "audio_end_ms"
                    event = {"type": f"input_audio_buffer.{action.kind}", key: int(action.time_s * 1000)}
                    outs.append(self._own({**event, "item_id": self._open_item}))
                    stopped = self._open_item if action.kind == "speech_stopped" else None
                continue
            if isinstance(action, Transcribe):
                if action.kind == "partial":
                    self._open_item = self._open_item or self._new_item()
                    self._items[action.segment] = self._open_item
                elif action.continues and not vad:  # a cut in a client-committed turn: the item stays open
                    self._open_item = self._open_item or self._new_item()
                    self._items[action.segment] = self._open_item
                    self._pieces.add(action.segment)
                    outs.append((self.session, action))
                    continue
                else:
                    item = self._item_for_commit()
                    self._items[action.segment] = item
                    outs.append((self.session, action))
                    outs.append(self._committed(item))
                    stopped = None
                    continue
            if isinstance(action, Close):
                self._finished = True
            outs.append((self.session, action))
        if stopped is not None and stopped == self._open_item:  # a click: too short to transcribe
            item = self._item_for_commit()
            outs += [self._committed(item), self._own(self._completed(item, "", 0.0))]
        return outs

    # -- out ---------------------------------------------------------------------------------------------

    def _own(self, event: dict[str, Any]) -> Out:
        return (None, Send({"event_id": _event_id(), **event}))

    def render(self, session: Session | None, action: Send | Event) -> list[dict[str, Any]]:
        if session is None:
            return [action.message] if isinstance(action, Send) else []
        if isinstance(action, Event):
            if action.kind == "final_empty" and action.info is not None:
                if action.info.segment not in self._items:  # a turn's end after a cut: no item of it
                    return []
                item = self._items.pop(action.info.segment)
                return [self._completed(item, "", action.info.end_s - action.info.start_s)]
            return []
        msg = action.message
        if msg.get("type") == "error":
            body = msg["body"]
            return [
                self._ev(
                    "error",
                    error={
                        "type": "server_error",
                        "code": body["error_type"].lower(),
                        "message": body["message"],
                        "param": None,
                        "event_id": None,
                    },
                )
            ]
        if msg.get("type") != "transcription" or action.info is None:
            return []  # Baseten's own acknowledgements
        info = action.info
        item = self._items.get(info.segment)
        if item is None:
            return []
        words = msg["transcript"].split()
        sent = self._sent.setdefault(item, [])
        if info.kind == "partial":
            stable = words[:-1]
            if stable[: len(sent)] != sent or len(stable) <= len(sent):
                return []
            delta = " ".join(stable[len(sent) :])
            self._sent[item] = stable
            return [self._delta(item, (" " if sent else "") + delta)]
        self._items.pop(info.segment, None)
        out = []
        before, start = self._carried.get(item, ("", info.start_s))
        if words[: len(sent)] == sent and len(words) > len(sent):
            space = " " if sent or before else ""
            out.append(self._delta(item, space + " ".join(words[len(sent) :])))
        self._sent.pop(item, None)
        transcript = f"{before} {msg['transcript']}".strip()
        if info.segment in self._pieces:  # more of this turn follows: completed comes with its commit
            self._pieces.discard(info.segment)
            self._carried[item] = (transcript, start)
            return out
        self._carried.pop(item, None)
        out.append(self._completed(item, transcript, info.end_s - start))
        return out

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
