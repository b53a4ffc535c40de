"""The stream metadata schema (Baseten's Whisper Streaming protocol), validated once at the first frame.

Three shapes arrive from real clients and normalise to one `StreamConfig`:
- current: `streaming_vad_config`, `streaming_params`, `whisper_params`;
- the documented seed example: `vad_params` instead of `streaming_vad_config`;
- early 2025, flat: `vad_params` + `streaming_whisper_params` (encoding, sample_rate,
  enable_partial_transcripts, audio_language, show_word_timestamps).
The deprecated `asr_options` (`beam_size`, `length_penalty`) maps onto `whisper_sampling_params`.
Unknown keys are errors (as on Baseten), but with a message that names them and the closest known key.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from whisper_stream.engines.interface import MAX_WINDOW_S, DecodeOptions

ENCODINGS = ("pcm_s16le", "pcm_mulaw", "pcm_f32le", "pcm_alaw")
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class _Strict(BaseModel):
    # strict: "300" is no number and "yes" no boolean (JSON arrays still fill the tuple fields)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class VadConfig(_Strict):
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    min_silence_duration_ms: int = Field(300, ge=0, le=10_000)
    speech_pad_ms: int = Field(0, ge=0, le=2_000)
    sampling_rate: Literal[8000, 16000] = 16000  # Silero's rate; audio is resampled to 16 kHz first


class StreamingParams(_Strict):
    encoding: Literal["pcm_s16le", "pcm_mulaw", "pcm_f32le", "pcm_alaw"] = "pcm_s16le"
    sample_rate: int = Field(16000, ge=8000, le=48000)
    enable_partial_transcripts: bool = False
    partial_transcript_interval_s: float = Field(0.5, ge=0.1, le=30.0)
    final_transcript_max_duration_s: float = Field(30.0, ge=1.0)  # clamped to Whisper's 30 s, as Baseten does
    prioritize_latency: bool = True
    skip_partial_if_hallucination: bool = True
    include_pipeline_latency_metric: bool = False
    # Our addition: decode an utterance's final from its first silent frame, sent once the endpoint or a
    # flush confirms it (dropped if speech resumes). Off: the final is decoded only after the endpoint.
    speculative_finals: bool = True
    # Our addition: once a final holds this many seconds, a pause of `session.PAUSE_FINAL_MS` also closes it
    # (the utterance goes on in the next final), so the final covering a long utterance's end holds only its
    # last few seconds. 0: finals end only at the endpoint, a flush or the maximum duration. 3 s by
    # `make bench-pause`: no WER cost against 0 on data/'s English recordings, the covering final's decode
    # ~25 % shorter than at 4 s, and nothing more gained at 2 s (docs/benchmarks.md).
    pause_final_after_s: float = Field(3.0, ge=0.0, le=30.0)

    @field_validator("final_transcript_max_duration_s")
    @classmethod
    def _clamp(cls, value: float) -> float:
        return min(value, MAX_WINDOW_S)


class SamplingParams(_Strict):
    beam_width: int = Field(1, ge=1, le=5)
    length_penalty: float = Field(2.0, ge=0.0, le=10.0)
    repetition_penalty: float = Field(1.01, ge=0.5, le=3.0)
    beam_search_diversity_rate: float = Field(0.0, ge=0.0, le=10.0)
    no_repeat_ngram_size: int = Field(0, ge=0, le=20)
    sampling_temperatures: tuple[StrictFloat | StrictInt, ...] = Field(
        DEFAULT_TEMPERATURES,
        min_length=1,
        max_length=10,
        strict=False,  # a JSON array; each item strict
    )
    max_new_tokens: int = Field(400, ge=1, le=440)

    @field_validator("sampling_temperatures")
    @classmethod
    def _temperatures(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0 <= t <= 1 for t in v):  # NaN fails this too; above 1 Whisper samples gibberish
            raise ValueError("each temperature must be a number from 0 to 1 (Whisper's ladder: 0.0 ... 1.0)")
        return tuple(float(t) for t in v)


class WhisperParams(_Strict):
    prompt: str = Field("", max_length=2000)
    prefix: str = Field("", max_length=500)
    audio_language: str = "en"
    output_language: str = "auto"
    language_detection_only: bool = False
    language_options: tuple[StrictStr, ...] = Field((), max_length=100, strict=False)
    use_dynamic_preprocessing: bool = False
    show_word_timestamps: bool = False
    enable_vad: bool = True
    show_beam_results: bool = False
    enable_chunk_level_language_detection: bool = False
    enable_diarization: bool = False
    whisper_sampling_params: SamplingParams = SamplingParams()
    # Our addition: prompt each segment with the stream's recent finals (bounded to ~150 tokens).
    condition_on_previous_finals: bool = False

    @model_validator(mode="after")
    def _output_language(self) -> WhisperParams:
        out = self.output_language
        if out not in ("auto", "en", self.audio_language):
            raise ValueError(
                f"output_language {out!r}: Whisper translates only into English; use 'auto' (same as the "
                "audio), 'en', or the audio_language"
            )
        return self

    @field_validator("audio_language", "output_language")
    @classmethod
    def _lang(cls, v: str) -> str:
        v = v.strip().lower()
        if not v or len(v) > 8 or not v.replace("-", "").isalpha():
            raise ValueError("must be an ISO 639-1 code such as 'en', or 'auto'")
        return v

    @field_validator("language_options")
    @classmethod
    def _langs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(x.strip().lower() for x in v)
        if any(not x.isalpha() or len(x) > 8 for x in out):
            raise ValueError("must be a list of ISO 639-1 codes such as ['en', 'de']")
        return out


class StreamConfig(_Strict):
    """The normalised metadata of one stream."""

    streaming_vad_config: VadConfig = VadConfig()
    streaming_params: StreamingParams = StreamingParams()
    whisper_params: WhisperParams = WhisperParams()
    stream_id: str | None = Field(None, max_length=200)
    include_timing_info: bool = False
    streaming_diarization_config: dict[str, Any] | None = None
    diarization_config: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_shapes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "vad_params" in data:
            if "streaming_vad_config" in data:
                raise ValueError("send either vad_params or streaming_vad_config, not both")
            data["streaming_vad_config"] = data.pop("vad_params")
        flat = data.pop("streaming_whisper_params", None)
        if flat is not None:
            if not isinstance(flat, dict):
                raise ValueError("streaming_whisper_params must be an object")
            flat = dict(flat)
            streaming, whisper = _section(data, "streaming_params"), _section(data, "whisper_params")
            if streaming is None or whisper is None:
                return data  # no object: the field's own validation names it
            for key in ("encoding", "sample_rate", "enable_partial_transcripts"):
                if key in flat:
                    streaming.setdefault(key, flat.pop(key))
            for key in ("audio_language", "show_word_timestamps"):
                if key in flat:
                    whisper.setdefault(key, flat.pop(key))
            if flat:
                raise ValueError(f"unknown key(s) in streaming_whisper_params: {', '.join(sorted(flat))}")
            data["streaming_params"], data["whisper_params"] = streaming, whisper
        asr = data.pop("asr_options", None)
        if asr is not None:
            if not isinstance(asr, dict) or set(asr) - {"beam_size", "length_penalty"}:
                raise ValueError("asr_options accepts only beam_size and length_penalty")
            whisper = _section(data, "whisper_params")
            sampling = None if whisper is None else _section(whisper, "whisper_sampling_params")
            if whisper is None or sampling is None:
                return data  # no object: the field's own validation names it
            if "beam_size" in asr:
                sampling.setdefault("beam_width", asr["beam_size"])
            if "length_penalty" in asr:
                sampling.setdefault("length_penalty", asr["length_penalty"])
            whisper["whisper_sampling_params"] = sampling
            data["whisper_params"] = whisper
        return data

    def decode_options(self) -> DecodeOptions:
        w, s = self.whisper_params, self.whisper_params.whisper_sampling_params
        detect = w.audio_language == "auto" or w.language_detection_only
        translate = w.output_language == "en" and w.audio_language != "en"
        return DecodeOptions(
            language=None if detect else w.audio_language,
            language_options=w.language_options,
            task="translate" if translate else "transcribe",
            prompt=w.prompt,
            prefix=w.prefix,
            beam_width=s.beam_width,
            length_penalty=s.length_penalty if s.beam_width > 1 else 1.0,
            repetition_penalty=s.repetition_penalty,
            no_repeat_ngram_size=s.no_repeat_ngram_size,
            temperatures=s.sampling_temperatures,
            max_new_tokens=s.max_new_tokens,
            word_timestamps=w.show_word_timestamps,
            language_detection_only=w.language_detection_only,
        )


# Settings accepted by the schema but not implemented yet: refused when set to a value that would change
# results, so a client never silently gets something other than what it asked for.
NOT_IMPLEMENTED: dict[str, Any] = {
    "whisper_params.show_beam_results": False,
    "whisper_params.enable_diarization": False,
    "whisper_params.whisper_sampling_params.beam_search_diversity_rate": 0.0,
    "streaming_diarization_config": None,
    "diarization_config": None,
}


def _section(data: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A copy of the object at `key` ({} when absent), or None when the client sent no object there."""
    value = data.get(key)
    if value is None:
        return {}
    return dict(value) if isinstance(value, dict) else None


class ConfigError(ValueError):
    """Bad metadata. `field` names the offending key; `unsupported` marks valid-but-unserved settings."""

    def __init__(self, message: str, field: str | None = None, unsupported: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.unsupported = unsupported


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


ECHO_CHARS = 80  # an error quotes at most this much of the offending value (a 15 MB prompt is not echoed)


def short(value: Any) -> str:
    """`repr(value)`, cut to ECHO_CHARS: what error messages quote of client input."""
    text = repr(value) if not isinstance(value, (dict, list)) else f"<{type(value).__name__}>"
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


def _loc(error: dict[str, Any], alias: str | None) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "metadata"
    if alias and loc.startswith("streaming_vad_config"):  # name the key the client actually sent
        loc = alias + loc[len("streaming_vad_config") :]
    return loc


# Top-level keys the older shapes accept besides StreamConfig's own fields (see `_normalise_shapes`).
OLDER_SHAPE_KEYS = ("vad_params", "streaming_whisper_params", "asr_options")


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """' (did you mean 'X'?)' for a misspelt key: the closest field of the object it was sent in, if any."""
    model: Any = StreamConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    known = list(model.model_fields) + (list(OLDER_SHAPE_KEYS) if model is StreamConfig else [])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: dict[str, Any], alias: str | None) -> str:
    loc = _loc(error, alias)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown field {short(loc)}{_did_you_mean(error['loc'])}"
    if kind == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return f"{loc}: got {short(error.get('input'))}, allowed values: {allowed}"
    ctx = error.get("ctx") or {}
    bounds = [f"{k.replace('_', ' ')} {v}" for k, v in ctx.items() if k in ("ge", "gt", "le", "lt")]
    bound_text = f" (allowed: {', '.join(bounds)})" if bounds else ""
    message = str(error["msg"])[: ECHO_CHARS * 2]
    return f"{loc}: {message}{bound_text}; got {short(error.get('input'))}"


UPDATABLE = ("streaming_vad_config", "streaming_params", "whisper_params")


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def merge_update(config: StreamConfig, changes: Any) -> StreamConfig:
    """A mid-stream `update_config`: the keys given (same shape as the metadata) over the current config,
    validated like metadata. Only the three blocks may change (`vad_params` is accepted for the first)."""
    if not isinstance(changes, dict) or not changes:
        raise ConfigError(
            "update_config needs a body object with the keys to change, e.g. "
            '{"whisper_params": {"prompt": "..."}}',
            field="body",
        )
    changes = dict(changes)
    if "vad_params" in changes:
        changes["streaming_vad_config"] = changes.pop("vad_params")
    unknown = sorted(set(changes) - set(UPDATABLE))
    if unknown:
        raise ConfigError(
            f"update_config cannot change {', '.join(unknown)}; it accepts {', '.join(UPDATABLE)}",
            field=unknown[0],
        )
    return parse_metadata(_merge(config.model_dump(), changes))


def parse_metadata(raw: Any) -> StreamConfig:
    """Validate the first frame (already JSON-decoded). Raises ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"metadata must be a JSON object, got {type(raw).__name__}")
    try:
        config = StreamConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        alias = "vad_params" if "vad_params" in raw else None
        loc = _loc(errors[0], alias) if errors[0]["loc"] else None
        message = "; ".join(_describe(e, alias) for e in errors[:5])
        raise ConfigError(f"invalid metadata: {message}", field=loc) from None
    for field, default in NOT_IMPLEMENTED.items():
        value = _get(config, field)
        if value != default:
            raise ConfigError(
                f"{field}={value!r} is not supported by this server yet (supported: {default!r})",
                field=field,
                unsupported=True,
            )
    return config
