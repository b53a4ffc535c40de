"""What the streaming core takes and gives: decode requests out, engine results in, and the neutral results
every wire protocol renders its own way (a `Transcript`, a `TurnEvent`, a `Notice`, `Finished`).

No field here belongs to one vendor: Baseten's `transcription` frame, Deepgram's `Results` and OpenAI's
`conversation.item.input_audio_transcription.*` events are each one adapter's rendering of a `Transcript`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from whisper_stream.engines.interface import TranscribeRequest

# Why a final ended: the endpointer's silence, a client flush, the maximum duration, a pause in a long
# utterance, or the end of the audio.
Cause = Literal["endpoint", "finalize", "max_duration", "pause", "end_of_audio"]
RequestKind = Literal["partial", "final", "speculative"]


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float  # stream time
    end_s: float
    prob: float


@dataclass(frozen=True)
class Segment:
    start_s: float  # stream time
    end_s: float
    text: str
    log_prob: float
    possible_hallucination: bool
    words: tuple[Word, ...] | None  # None: word timestamps were not asked for


@dataclass(frozen=True)
class Transcript:
    """A partial or final transcription of one window of one stream.

    `number` counts the stream's finals (a partial carries the number its final will have); `utterance`
    counts speech turns: the finals of one utterance cut at pauses or at the maximum duration share it, and
    all but its last have `continues`. A final may be empty (no segments): protocols that report every turn's
    end (Deepgram's `speech_final`, OpenAI's `completed`) still need it."""

    kind: Literal["partial", "final"]
    number: int
    utterance: int
    start_s: float
    end_s: float
    segments: tuple[Segment, ...]
    language: str
    language_prob: float | None
    lag_s: float  # received audio this transcript does not cover yet
    cause: Cause | None = None  # finals: why the window ended
    continues: bool = False  # finals: the utterance goes on in the next final
    answers_flush: bool = False  # a client's flush (finalize) is answered by this final
    end_of_audio: bool = False  # the final that end_audio (or a drain) flushed out
    language_only: bool = False  # language detection was all that was asked for: sent even without text
    timing: dict[str, Any] | None = None  # queue, model and audio-processing seconds, when asked for

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()

    @property
    def confidence(self) -> float:
        """exp of the segments' mean log probability (0 without segments)."""
        if not self.segments:
            return 0.0
        return math.exp(sum(s.log_prob for s in self.segments) / len(self.segments))


@dataclass(frozen=True)
class TurnEvent:
    """speech_started: the VAD heard an utterance begin at `time_s`. speech_stopped: the endpointer ended it
    (`time_s` is its end). end_of_turn: the utterance is over (endpoint, flush or end of audio; `has_final`:
    a final of it is sent or on its way). utterance_end: `utterance_end_ms` of audio without speech followed
    the utterance that ended at `time_s`, and all its finals were sent."""

    kind: Literal["speech_started", "speech_stopped", "end_of_turn", "utterance_end"]
    time_s: float
    utterance: int
    cause: Cause | None = None
    has_final: bool = True


@dataclass(frozen=True)
class FlushAnswered:
    """A flush found nothing to transcribe and no final on its way: protocols that answer every flush
    (Deepgram's `Finalize`, OpenAI's `commit`) answer it now, empty."""

    time_s: float


@dataclass(frozen=True)
class Notice:
    """A problem to report to the client. `recoverable`: the stream goes on."""

    kind: Literal["AUDIO_PROCESSING_ERROR", "TRANSCRIPTION_ERROR", "STREAM_ERROR", "CONFIGURATION_ERROR"]
    message: str
    recoverable: bool = True
    start_s: float | None = None  # the window a failed transcription covered
    end_s: float | None = None


@dataclass(frozen=True)
class Finished:
    """Every final is delivered after the end of the audio; `going_away`: the server is shutting down."""

    going_away: bool = False


@dataclass(frozen=True)
class Transcribe:
    """A decode to run. Partials and speculative finals may be shed; finals never are."""

    request_id: int
    kind: RequestKind
    request: TranscribeRequest
    number: int
    start_s: float
    end_s: float
    urgent: bool = False  # a final a client's flush asked for: ahead of every other queued job
    continues: bool = False  # a final cut at the maximum duration or a pause: the utterance goes on


@dataclass(frozen=True)
class Promote:
    """A queued speculative decode is now the final (its window was confirmed): never shed, and urgent."""

    request_id: int


@dataclass(frozen=True)
class Cancel:
    """A queued partial or speculative decode is no longer wanted (speech resumed, the utterance ended)."""

    request_id: int


Result = Transcript | TurnEvent | FlushAnswered | Notice | Finished
Action = Transcribe | Promote | Cancel | Result
