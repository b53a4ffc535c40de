"""Deepgram's live API (`GET /v1/listen`, WebSocket) over the same sessions, scheduler and engines.

Only names and shapes live here: query parameters -> a `StreamConfig` per channel; `KeepAlive`, `Finalize`,
`CloseStream`, `Configure` -> core events; the core's transcripts and turn events -> `Results`,
`SpeechStarted`, `UtteranceEnd`, `Metadata`. The conformance table (docs/protocols.md, `PARAMETERS` below)
says for every parameter whether it is mapped, accepted without effect, or refused.

Endpointing: Deepgram's `endpointing` is the silence (ms) that ends speech, 10 ms by default (25 in some
clients). Whisper needs whole phrases for context, so the value maps onto the session's endpointer with a
floor of `ENDPOINTING_FLOOR_MS`; `endpointing=false` keeps that floor for segmenting but never reports
`speech_final: true` (as on Deepgram, where only endpointing sets it).
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from whisper_stream.config import ConfigError, StreamConfig, StreamingParams, VadConfig, WhisperParams
from whisper_stream.core.events import Finished, FlushAnswered, Notice, Result, Transcript, TurnEvent
from whisper_stream.core.session import Session
from whisper_stream.serving.driver import Audio, EndAudio, Out, Send
from whisper_stream.serving.runtime import Limits, Runtime
from whisper_stream.serving.transport import Close, Transport

PATH = "/v1/listen"
ENDPOINTING_FLOOR_MS = 300  # below this Whisper gets phrase fragments; Deepgram's 10 / 25 ms become 300
ENDPOINTING_DEFAULT_MS = 10  # Deepgram's default, hence the floor
SPEECH_PAD_MS = 30
PARTIAL_INTERVAL_S = 1.0  # interim results about once a second of new speech, as Deepgram's cadence
UTTERANCE_END_MIN_MS = 1000  # Deepgram's documented minimum
CLOSE_NET_TIMEOUT = 1011  # Deepgram closes an idle stream with 1011 and reason NET-0001

ENCODINGS = {
    "linear16": ("pcm_s16le", 2, 16000),
    "mulaw": ("pcm_mulaw", 1, 8000),
    "alaw": ("pcm_alaw", 1, 8000),
}
CONTAINER_ENCODINGS = ("opus", "ogg-opus", "flac", "amr-nb", "amr-wb", "speex", "g729", "mp3", "aac", "webm")

# Parameter -> what this server does with it. "mapped": applied (how, in words); "accepted": taken, no
# effect (Whisper has no such switch), listed in Metadata's `warnings`; "refused": any value but the one
# given (None: any value at all) is a 400 at the handshake.
MAPPED = {
    "encoding": "linear16 / mulaw / alaw decoded; containers (opus, flac, ...) refused",
    "sample_rate": "8000-48000 Hz, resampled to 16 kHz (default 16000 linear16, 8000 G.711)",
    "channels": "1; N with multichannel=true (one session per channel)",
    "multichannel": "true: one session per channel, Results labelled channel_index [i, N]",
    "language": "ISO code (en-US -> en); multi or absent -> Whisper's per-utterance detection",
    "interim_results": "partial transcripts as is_final=false Results, about every 1 s of speech",
    "endpointing": f"silence ms that ends speech, floor {ENDPOINTING_FLOOR_MS} ms; false: no speech_final",
    "utterance_end_ms": f"UtteranceEnd after this much audio without speech (min {UTTERANCE_END_MIN_MS})",
    "vad_events": "SpeechStarted at each VAD onset",
    "keyterm": "into Whisper's prompt (repeatable)",
    "keywords": "into Whisper's prompt (the :boost is dropped)",
    "punctuate": "false (with smart_format false): transcript lower-case without punctuation",
    "smart_format": "true: Whisper's punctuated, cased text (Whisper formats numbers itself)",
    "model": "accepted and reported in Metadata (requested_model); Whisper transcribes",
    "tag": "reported in Metadata (tags)",
}
ACCEPTED = {
    "filler_words": "Whisper mostly omits fillers; not switchable",
    "numerals": "Whisper writes numbers as it learned; not switchable",
    "no_delay": "no effect (results are sent when ready)",
    "profanity_filter": "not applied",
    "mip_opt_out": "nothing is retained here",
    "dictation": "not applied",
    "version": "not applied",
    "measurements": "not applied",
    "language_hint": "not applied",
    "extra": "not applied",
    "diarize": "false only",
    "redact": "false only",
    "detect_entities": "false only",
}
REFUSED: dict[str, str | None] = {  # parameter -> the only value accepted (None: never accepted)
    "diarize": "false",
    "diarize_model": None,
    "redact": "false",
    "detect_entities": "false",
    "search": None,
    "replace": None,
    "callback": None,
    "callback_method": None,
    "alternatives": "1",
    "topics": "false",
    "intents": "false",
    "sentiment": "false",
    "summarize": "false",
}
BOOL_PARAMS = {"multichannel", "interim_results", "vad_events", "punctuate", "smart_format"}


class ParamError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Options:
    config: StreamConfig
    channels: int = 1
    width: int = 2  # bytes per sample
    interim: bool = False
    endpointing: bool = True
    utterance_end_ms: int | None = None
    vad_events: bool = False
    punctuate: bool = False
    model: str = "nova-3"
    tags: tuple[str, ...] = ()
    keyterms: tuple[str, ...] = ()
    warnings: tuple[dict[str, str], ...] = field(default=())


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1", ""):
        return True
    if v in ("false", "0"):
        return False
    raise ParamError(f"{name}={value!r}: expected true or false", name)


def _int(name: str, value: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ParamError(f"{name}={value!r}: expected an integer", name) from None
    if not lo <= n <= hi:
        raise ParamError(f"{name}={n}: allowed {lo}..{hi}", name)
    return n


def _language(value: str) -> str:
    v = value.strip().lower()
    if v in ("", "multi", "auto"):
        return "auto"
    base = v.split("-", 1)[0]
    if not (base.isascii() and base.isalpha()) or len(base) > 8:
        raise ParamError(f"language={value!r}: expected a code such as en, en-US or multi", "language")
    return base


def _prompt(terms: Sequence[str]) -> str:
    return ", ".join(terms)[:2000]


def parse_params(query: str) -> Options:
    """The query string of `/v1/listen` -> Options. Raises ParamError naming the parameter."""
    pairs = parse_qsl(query, keep_blank_values=True)
    single: dict[str, str] = {}
    keyterms: list[str] = []
    tags: list[str] = []
    warnings: list[dict[str, str]] = []
    for name, value in pairs:
        if name in ("keyterm", "keywords"):
            term = value.rsplit(":", 1)[0] if name == "keywords" and re.search(r":-?\d", value) else value
            if term.strip():
                keyterms.append(term.strip())
        elif name == "tag":
            tags.append(value)
        elif name in REFUSED and (REFUSED[name] is None or value.strip().lower() != REFUSED[name]):
            raise ParamError(
                f"{name}={value!r} is not supported by this server"
                + (f" (only {name}={REFUSED[name]})" if REFUSED[name] else ""),
                name,
            )
        elif name in ACCEPTED or name in REFUSED:  # a REFUSED one here has its one harmless value
            note = ACCEPTED.get(name, f"{value} only")
            warnings.append({"parameter": name, "type": "accepted_not_applied", "message": note})
        elif name in MAPPED:
            single[name] = value
        elif name in ("token", "api_key"):
            continue  # a browser's key (the API key check reads it)
        else:
            raise ParamError(f"unknown parameter {name!r}", name)

    bools = {k: _bool(k, single[k]) for k in BOOL_PARAMS if k in single}
    encoding = single.get("encoding", "").strip().lower()
    if not encoding:
        raise ParamError(
            "encoding is required: this server takes raw audio (encoding=linear16, mulaw or alaw with "
            "sample_rate); containerized audio (webm, ogg, wav, mp3, flac) is not decoded",
            "encoding",
        )
    if encoding not in ENCODINGS:
        kind = (
            "containerized/compressed audio is not decoded" if encoding in CONTAINER_ENCODINGS else "unknown"
        )
        raise ParamError(
            f"encoding={encoding!r}: {kind}; supported: {', '.join(ENCODINGS)}",
            "encoding",
        )
    internal, width, default_rate = ENCODINGS[encoding]
    rate = (
        _int("sample_rate", single["sample_rate"], 8000, 48000) if "sample_rate" in single else default_rate
    )
    channels = _int("channels", single["channels"], 1, 8) if "channels" in single else 1
    multichannel = bools.get("multichannel", False)
    if channels > 1 and not multichannel:
        raise ParamError(
            f"channels={channels} needs multichannel=true (one transcript per channel); this server does not "
            "mix channels down",
            "channels",
        )
    endpointing = True
    silence_ms = ENDPOINTING_DEFAULT_MS
    if "endpointing" in single:
        value = single["endpointing"].strip().lower()
        if value == "false":
            endpointing = False
        elif value != "true":
            silence_ms = _int("endpointing", value, 0, 10_000)
    utterance_end = None
    if "utterance_end_ms" in single:
        utterance_end = max(
            UTTERANCE_END_MIN_MS, _int("utterance_end_ms", single["utterance_end_ms"], 0, 60_000)
        )
    interim = bools.get("interim_results", False)
    config = StreamConfig(
        streaming_vad_config=VadConfig(
            min_silence_duration_ms=max(ENDPOINTING_FLOOR_MS, silence_ms), speech_pad_ms=SPEECH_PAD_MS
        ),
        streaming_params=StreamingParams(
            encoding=internal,  # type: ignore[arg-type]
            sample_rate=rate,
            enable_partial_transcripts=interim,
            partial_transcript_interval_s=PARTIAL_INTERVAL_S,
        ),
        whisper_params=WhisperParams(
            audio_language=_language(single.get("language", "")),
            prompt=_prompt(keyterms),
            show_word_timestamps=True,
        ),
    )
    return Options(
        config=config,
        channels=channels,
        width=width,
        interim=interim,
        endpointing=endpointing,
        utterance_end_ms=utterance_end,
        vad_events=bools.get("vad_events", False),
        punctuate=bools.get("punctuate", False) or bools.get("smart_format", False),
        model=single.get("model", "nova-3") or "nova-3",
        tags=tuple(tags),
        keyterms=tuple(keyterms),
        warnings=tuple(warnings),
    )


def check(query: str, runtime: Runtime) -> Options:
    """parse_params plus the engine's own check (languages it has); raises ParamError."""
    options = parse_params(query)
    try:
        runtime.check_config(options.config)
    except ConfigError as exc:
        raise ParamError(str(exc), "language") from None
    return options


def error_body(message: str, request_id: str) -> dict[str, Any]:
    """Deepgram's HTTP error body (with the 400 answer to a bad handshake)."""
    return {"err_code": "INVALID_QUERY_PARAMETER", "err_msg": message, "request_id": request_id}


_PUNCT = re.compile(r"[^\w'\-]+", re.UNICODE)


def _plain(word: str) -> str:
    """Deepgram's `word`: lower case, no punctuation around it."""
    return _PUNCT.sub("", word).strip("'-").lower()


class DeepgramProtocol:
    """One `/v1/listen` connection: one session per channel."""

    def __init__(self, options: Options, runtime: Runtime) -> None:
        self.options = options
        self.request_id = str(uuid.uuid4())
        self.created = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        engine = runtime.scheduler.engine
        self._model_info = {
            "name": str(getattr(engine, "model_name", "whisper")),
            "version": "whisper-stream",
            "arch": str(getattr(engine, "name", "whisper")),
        }
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, "whisper-stream/" + self._model_info["name"]))
        self._runtime = runtime
        self.sessions: tuple[Session, ...] = tuple(
            self._session(runtime, options, i) for i in range(options.channels)
        )
        self._channel = {id(s): i for i, s in enumerate(self.sessions)}
        self._carry = b""
        self._done: set[int] = set()
        self._closing = False
        self._finished = False
        self._last_word_end = [0.0] * options.channels

    def _session(self, runtime: Runtime, options: Options, channel: int) -> Session:
        return runtime.session(
            options.config,
            stream_id=f"{self.request_id}/{channel}",
            utterance_end_ms=options.utterance_end_ms,
        )

    @property
    def finished(self) -> bool:
        return self._finished

    async def handshake(self, transport: Transport, limits: Limits) -> bool:
        return True  # its parameters were checked before the upgrade (`check`)

    # -- in ----------------------------------------------------------------------------------------------

    def on_frame(self, frame: str | bytes, now: float) -> list[Out]:
        if isinstance(frame, bytes):
            return self._audio(frame, now)
        try:
            msg = json.loads(frame)
        except ValueError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "KeepAlive":
            return []
        if kind == "Finalize":
            return self._finalize()
        if kind == "CloseStream":
            return self._close_stream(now)
        if kind == "Configure":
            return self._configure(msg)
        return [
            (
                None,
                Send(
                    self._error(
                        "SchemaError",
                        f"could not parse the message {frame[:200]!r}: "
                        "expected KeepAlive, Finalize, CloseStream or Configure",
                        frame,
                    )
                ),
            )
        ]

    def _audio(self, data: bytes, now: float) -> list[Out]:
        if self._closing:
            return []
        n = self.options.channels
        if n == 1:
            return [(self.sessions[0], Audio(data))]
        data = self._carry + data
        step = n * self.options.width
        usable = len(data) - len(data) % step
        self._carry = data[usable:]
        frames = np.frombuffer(data[:usable], dtype=np.uint8).reshape(-1, n, self.options.width)
        outs: list[Out] = []
        for i, session in enumerate(self.sessions):
            outs.append((session, Audio(frames[:, i, :].tobytes())))
        return outs

    def audio_only(self, frame: str) -> bool:
        return False

    def _finalize(self) -> list[Out]:
        return [(session, a) for session in self.sessions for a in session.finalize()]

    def _close_stream(self, now: float) -> list[Out]:
        if self._closing:
            return []
        self._closing = True
        if self.options.channels > 1 and self._carry:
            self._carry = b""
        return [(session, EndAudio()) for session in self.sessions]

    def _configure(self, msg: dict[str, Any]) -> list[Out]:
        """Deepgram's `Configure` (keyterms, features), plus this server's `language` and `endpointing`."""
        try:
            options = self.options
            keyterms = msg.get("keyterms")
            features = msg.get("features") or {}
            if keyterms is not None and (
                not isinstance(keyterms, list) or not all(isinstance(k, str) for k in keyterms)
            ):
                raise ParamError("keyterms must be a list of strings", "keyterms")
            if not isinstance(features, dict) or not all(isinstance(v, bool) for v in features.values()):
                raise ParamError("features must be an object of booleans (true / false)", "features")
            unknown = sorted(set(msg) - {"type", "keyterms", "features", "language", "endpointing"})
            if unknown:
                raise ParamError(f"unknown Configure field(s): {', '.join(unknown)}", unknown[0])
            config = options.config
            w, v = config.whisper_params, config.streaming_vad_config
            if keyterms is not None:
                options = replace(options, keyterms=tuple(k.strip() for k in keyterms if k.strip()))
                w = w.model_copy(update={"prompt": _prompt(options.keyterms)})
            if "language" in msg:
                w = w.model_copy(update={"audio_language": _language(str(msg["language"] or ""))})
            endpointing = options.endpointing
            if "endpointing" in msg:
                value = msg["endpointing"]
                integer = isinstance(value, int) and not isinstance(value, bool)
                if not (value is False or integer and 0 <= value <= 10_000):
                    raise ParamError("endpointing: an integer 0..10000 (ms) or false", "endpointing")
                endpointing = integer
                if integer:
                    v = v.model_copy(update={"min_silence_duration_ms": max(ENDPOINTING_FLOOR_MS, value)})
            punctuate = options.punctuate
            for name in ("punctuate", "smart_format"):
                if name in features:
                    punctuate = features[name]
            config = StreamConfig.model_validate(
                {
                    **config.model_dump(),
                    "whisper_params": w.model_dump(),
                    "streaming_vad_config": v.model_dump(),
                }
            )
            for session in self.sessions:
                session.update_config(config)
            self.options = replace(options, config=config, endpointing=endpointing, punctuate=punctuate)
        except (ParamError, ConfigError, ValueError) as exc:
            failure = {
                "type": "ConfigureFailure",
                "request_id": self.request_id,
                "code": "CONFIGURE_INTERNAL_ERROR",
                "description": str(exc),
            }
            return [(None, Send(failure))]
        success: dict[str, Any] = {"type": "ConfigureSuccess", "request_id": self.request_id}
        if keyterms is not None:
            success["keyterms"] = list(self.options.keyterms)
        return [(None, Send(success))]

    # -- out ---------------------------------------------------------------------------------------------

    def render(self, session: Session | None, result: Result) -> list[dict[str, Any] | Close]:
        assert session is not None
        channel, n = self._channel[id(session)], self.options.channels
        if isinstance(result, Transcript):
            return [self._transcription(channel, result)]
        if isinstance(result, TurnEvent):
            if result.kind == "speech_started" and self.options.vad_events:
                return [
                    {"type": "SpeechStarted", "channel": [channel, n], "timestamp": round(result.time_s, 3)}
                ]
            if result.kind == "utterance_end":
                last = self._last_word_end[channel] or result.time_s
                return [{"type": "UtteranceEnd", "channel": [channel, n], "last_word_end": round(last, 3)}]
            return []
        if isinstance(result, FlushAnswered):  # nothing to finalize: answered at once, empty
            return [self._results(channel, "", [], result.time_s, 0.0, True, False, True)]
        if isinstance(result, Notice):
            return [self._error(result.kind, result.message)]
        if isinstance(result, Finished):  # the stream closes once every channel finished
            self._done.add(id(session))
            if len(self._done) == len(self.sessions) and not self._finished:
                self._finished = True
                return [self._metadata(), Close(1000, "")]
        return []

    def _transcription(self, channel: int, t: Transcript) -> dict[str, Any]:
        words = []
        punctuate = self.options.punctuate
        for seg in t.segments:
            for w in seg.words or ():
                plain = _plain(w.text)
                if not plain:
                    continue
                word = {
                    "word": plain,
                    "start": round(w.start_s, 3),
                    "end": round(w.end_s, 3),
                    "confidence": round(w.prob, 4),
                }
                if punctuate:
                    word["punctuated_word"] = w.text
                words.append(word)
        text = t.text
        transcript = text if punctuate else " ".join(p for p in (_plain(w) for w in text.split()) if p)
        final = t.kind == "final"
        if final and words:
            self._last_word_end[channel] = words[-1]["end"]
        results = self._results(
            channel,
            transcript,
            words,
            t.start_s,
            t.end_s - t.start_s,
            final,
            final and self.options.endpointing and t.cause == "endpoint",
            final and t.answers_flush,
        )
        alternative = results["channel"]["alternatives"][0]
        alternative["confidence"] = round(t.confidence, 4)
        if t.segments and t.language:
            alternative["languages"] = [t.language]
        return results

    def _results(
        self,
        channel: int,
        transcript: str,
        words: list[dict[str, Any]],
        start: float,
        duration: float,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        return {
            "type": "Results",
            "channel_index": [channel, self.options.channels],
            "duration": round(duration, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.0, "words": words}]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": self._model_info,
                "model_uuid": self._model_uuid,
            },
        }

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "",
            "created": self.created,
            "duration": round(max(s.received_s for s in self.sessions), 3),
            "channels": self.options.channels,
            "models": [self._model_uuid],
            "model_info": {self._model_uuid: self._model_info},
            "requested_model": self.options.model,
            "tags": list(self.options.tags),
            "warnings": list(self.options.warnings),
        }

    def _error(self, variant: str, description: str, original: str | None = None) -> dict[str, Any]:
        msg = {"type": "Error", "variant": variant, "description": description, "message": description}
        if original is not None:
            msg["message"] = original[:500]
        return msg

    def start(self, now: float) -> list[Out]:
        return []

    def fail(self, error_type: str, message: str, code: int, now: float) -> list[Out]:
        return [(None, Send(self._error(error_type, message))), (None, Close(code, message[:120]))]

    def idle(self, idle_s: float, now: float) -> list[Out]:
        reason = f"NET-0001 no audio or KeepAlive for {idle_s:g} s"
        return [(None, Close(CLOSE_NET_TIMEOUT, reason))]
