"""The one interface every Whisper engine implements, and the data that crosses it.

Engines are batched: the scheduler hands them many windows (from many streams) per call. Audio is always
16 kHz mono float32 in [-1, 1], at most 30 s (one Whisper window). Times in results are seconds relative to
the start of the window; the session moves them to stream time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Literal, Protocol

import numpy as np

SAMPLE_RATE = 16_000
MAX_WINDOW_S = 30.0

# Whisper's own fallback thresholds (openai/whisper transcribe.py defaults).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6


@dataclass(frozen=True)
class DecodeOptions:
    """Per-request decoding options; requests with equal options can share one generate call."""

    language: str | None = "en"  # None: detect
    language_options: tuple[str, ...] = ()  # restricts detection when language is None
    language_hint: str | None = None  # the stream's previous language, kept when detection is unsure
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str = ""  # previous-text conditioning (<|startofprev|>)
    prefix: str = ""  # forced start of the transcript
    beam_width: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperatures: tuple[float, ...] = (0.0,)  # fallback ladder
    max_new_tokens: int = 400
    word_timestamps: bool = False
    language_detection_only: bool = False


# Options an engine applies to each request on its own (in its prompt, detection or post-processing); every
# other field changes the decoding itself, so requests share a generate call only when all of those are equal.
PER_REQUEST_OPTIONS = frozenset(
    {"language", "language_options", "language_hint", "task", "prompt", "prefix", "word_timestamps",
     "language_detection_only"}
)  # fmt: skip


def generation_key(options: DecodeOptions) -> tuple[object, ...]:
    """The decoding options requests must share to be decoded together: any field a future change adds to
    `DecodeOptions` is part of it unless listed in `PER_REQUEST_OPTIONS`."""
    return tuple(getattr(options, f.name) for f in fields(options) if f.name not in PER_REQUEST_OPTIONS)


@dataclass(frozen=True)
class TranscribeRequest:
    audio: np.ndarray  # float32, 16 kHz mono, <= 30 s
    options: DecodeOptions = field(default_factory=DecodeOptions)


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    prob: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    temperature: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscribeResult:
    segments: tuple[Segment, ...]
    language: str
    language_prob: float | None  # None when the language was given, not detected

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()


class EngineUnavailable(RuntimeError):
    """The engine cannot serve now (e.g. Triton down); streams get an error, the server stays up."""


class RequestError(RuntimeError):
    """One request's own failure, returned in its place so the rest of the batch is unaffected."""


class Engine(Protocol):
    """A batched Whisper engine.

    `transcribe` returns one item per request, in order: its result, or a `RequestError` when that request
    alone failed (raising fails the whole call; the scheduler then retries its requests one by one).
    `check_options` raises ValueError, at stream start, for options the engine cannot honour: an option is
    refused, never silently ignored. `max_batch_size` bounds one call; `max_inflight` says how many calls
    the scheduler may have running at once (the CPU engine's replicas, 1 for the TensorRT-LLM executor,
    more for a remote server that batches on its side).
    """

    name: str
    model_name: str
    max_batch_size: int
    max_inflight: int

    def check_options(self, options: DecodeOptions) -> None: ...

    async def transcribe(
        self, requests: Sequence[TranscribeRequest]
    ) -> list[TranscribeResult | RequestError]: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


# JSON codecs: how options and results cross a process boundary (Triton tensors carry them as strings).


def options_to_json(options: DecodeOptions) -> str:
    return json.dumps(asdict(options), separators=(",", ":"))


def options_from_json(text: str) -> DecodeOptions:
    raw = json.loads(text)
    for key in ("language_options", "temperatures"):
        raw[key] = tuple(raw.get(key, ()))
    return DecodeOptions(**raw)


def result_to_json(result: TranscribeResult) -> str:
    return json.dumps(asdict(result), separators=(",", ":"))


def result_from_json(text: str) -> TranscribeResult:
    raw = json.loads(text)
    segments = tuple(
        Segment(**{**s, "words": tuple(Word(**w) for w in s.get("words", ()))}) for s in raw["segments"]
    )
    return TranscribeResult(segments=segments, language=raw["language"], language_prob=raw["language_prob"])
