"""One stream's decode requests, in one table with explicit states, and what they are conditioned on.

States: QUEUED (asked of the scheduler), SPECULATIVE (a final decoded before its endpoint confirmed it: shed
like a partial), CONFIRMED (a speculative decode the endpoint or a flush confirmed: now the final, promoted in
the scheduler), DONE (its result arrived: a final waits here for the finals before it; a speculative decode
for its confirmation). Promotion and cancellation are pushed to the scheduler as `Promote` / `Cancel`
actions; nothing is polled.

Finals leave in request order whatever order the engine answers in, and a partial never overtakes a final
(`delivery.InOrder`). Conditioning: a later piece of the same utterance keeps its language; the latest final's
language hints detection; recent finals become the prompt (`condition_on_previous_finals`).

Memory: one entry per final in flight (the driver caps them), one partial, one speculative decode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from whisper_stream.core.events import Cause, Promote, Transcribe
from whisper_stream.delivery import InOrder
from whisper_stream.engines.interface import DecodeOptions, TranscribeResult

PREVIOUS_TEXT_CHARS = 600  # bound on the previous finals used as prompt (~150 tokens, half Whisper's limit)


class State(Enum):
    QUEUED = "queued"
    SPECULATIVE = "speculative"
    CONFIRMED = "confirmed"
    DONE = "done"


@dataclass
class Request:
    transcribe: Transcribe
    kind: Literal["partial", "final"]
    utterance: int
    options: DecodeOptions  # the stream's options when it was requested (an update waits for the next)
    state: State
    known_language: tuple[str, float | None] | None = None  # reused from the utterance's first piece
    end_of_audio: bool = False
    continues: bool = False
    cause: Cause | None = None
    answers_flush: bool = False
    processing_s: float = 0.0  # audio decoding + VAD time spent on this window's audio
    speculative: bool = False  # decoded from the first silent frame, before the endpoint confirmed it
    window: tuple[int, int] = (0, 0)  # stream samples (speculative decodes: what a final must match)
    silence_start: int | None = None  # speculative: the silence run it was started for
    result: TranscribeResult | None = None
    error: str | None = None
    timing: dict[str, float] | None = None

    @property
    def id(self) -> int:
        return self.transcribe.request_id

    @property
    def number(self) -> int:
        return self.transcribe.number


class Conditioning:
    """What a request is conditioned on: the utterance's language, the last language, recent finals."""

    def __init__(self) -> None:
        self.previous_text = ""
        self.utterance_language: tuple[str, float | None] | None = None
        self.last_language: str | None = None  # of the latest final with text: a hint for detection

    def options_for(
        self, options: DecodeOptions, chunk_language: bool, condition: bool
    ) -> tuple[DecodeOptions, tuple[str, float | None] | None]:
        known = None
        if options.language is None and not chunk_language and self.utterance_language:
            known = self.utterance_language  # a later piece of the same utterance keeps its language
            options = replace(options, language=known[0])
        elif options.language is None and self.last_language:
            options = replace(options, language_hint=self.last_language)
        if condition and self.previous_text:
            options = replace(options, prompt=(options.prompt + " " + self.previous_text).strip())
        return options, known

    def final_sent(self, text: str, language: str, condition: bool) -> None:
        if text:
            self.last_language = language
        if condition:
            self.previous_text = (self.previous_text + " " + text).strip()[-PREVIOUS_TEXT_CHARS:]


class InFlight:
    def __init__(self) -> None:
        self._next_id = 0
        self.table: dict[int, Request] = {}
        self.partial: int | None = None  # the partial in flight (at most one)
        self.spec: Request | None = None  # the open segment's speculative decode
        self.delivery: InOrder[Request, Request] = InOrder()

    def next_id(self) -> int:
        rid, self._next_id = self._next_id, self._next_id + 1
        return rid

    def add(self, request: Request) -> None:
        self.table[request.id] = request
        if request.transcribe.kind == "final":
            self.delivery.expect(request.id)
        elif request.kind == "partial":
            self.partial = request.id
        else:
            self.spec = request

    @property
    def finals_outstanding(self) -> int:
        return self.delivery.outstanding

    def owed_starts(self) -> list[float]:
        """Start times of finals (speculative ones too) requested and not answered yet."""
        return [r.transcribe.start_s for r in self.table.values() if r.kind == "final"]

    def drop_spec(self) -> Request | None:
        """Forget the open segment's speculative decode (a late result is ignored)."""
        spec, self.spec = self.spec, None
        if spec is not None:
            self.table.pop(spec.id, None)
        return spec

    def confirm(self, spec: Request, end_of_audio: bool) -> tuple[list[Request], list[Promote]]:
        """The speculative decode becomes the final: finals ready to leave (in order), or its promotion."""
        spec.end_of_audio = end_of_audio
        self.delivery.expect(spec.id)
        if spec.state is State.DONE:
            return self.delivery.complete(spec.id, spec), []
        spec.state = State.CONFIRMED
        return [], [Promote(spec.id)]

    def last_outstanding(self) -> Request | None:
        """The latest final not delivered yet (requested, or decoded and held behind an earlier one)."""
        last = self.delivery.last()
        if last is None:
            return None
        return self.table.get(last) or self.delivery.waiting(last)

    def pop(self, request_id: int) -> Request | None:
        return self.table.pop(request_id, None)

    def complete(self, request: Request) -> list[Request]:
        """A final's outcome arrived: every final that can now leave, in order."""
        request.state = State.DONE
        return self.delivery.complete(request.id, request)
