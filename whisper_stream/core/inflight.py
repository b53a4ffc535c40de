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

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

import numpy as np

from whisper_stream.core.delivery import InOrder
from whisper_stream.core.events import (
    Action,
    Cancel,
    Cause,
    Notice,
    Promote,
    RequestKind,
    Transcribe,
    Transcript,
)
from whisper_stream.core.hallucination import possible_hallucination
from whisper_stream.core.settings import Settings
from whisper_stream.core.transcripts import transcript_of_request
from whisper_stream.engines.interface import SAMPLE_RATE, DecodeOptions, TranscribeRequest, TranscribeResult

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

    @property
    def speculative(self) -> bool:
        return self.transcribe.kind == "speculative"


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

    def utterance_goes_on(self, result: TranscribeResult) -> None:
        """A piece of the open utterance was decoded: its later pieces keep its language."""
        self.utterance_language = self.utterance_language or (result.language, result.language_prob)

    def final_sent(self, text: str, language: str, condition: bool) -> None:
        if text:
            self.last_language = language
        if condition:
            self.previous_text = (self.previous_text + " " + text).strip()[-PREVIOUS_TEXT_CHARS:]


@dataclass(frozen=True)
class Answer:
    """What an engine answer means for the stream: a partial to send, finals to send in order, a request to
    submit again (a confirmed decode the scheduler shed before the promotion reached it), or nothing."""

    partial: Request | None = None
    final: Request | None = None  # the final answered (it may wait for earlier ones)
    finals: tuple[Request, ...] = ()
    again: Transcribe | None = None
    failed_partial: str | None = None


class InFlight:
    def __init__(self) -> None:
        self._next_id = 0
        self.table: dict[int, Request] = {}
        self.partial: int | None = None  # the partial in flight (at most one)
        self.spec: Request | None = None  # the open segment's speculative decode
        self.delivery: InOrder[Request, Request] = InOrder()
        self.cond = Conditioning()
        self.covered_s = 0.0  # end of the audio the latest sent transcript covers (lag is measured from it)

    def options_for(
        self, kind: RequestKind, settings: Settings
    ) -> tuple[DecodeOptions, tuple[str, float | None] | None]:
        """The options a request made now gets, and the language it reuses (if any)."""
        w = settings.config.whisper_params
        base = settings.partial_options if kind == "partial" else settings.options
        return self.cond.options_for(
            base, w.enable_chunk_level_language_detection, w.condition_on_previous_finals
        )

    def request(
        self, kind: RequestKind, window: tuple[int, int], audio: np.ndarray, settings: Settings, *,
        number: int, utterance: int, urgent: bool = False, continues: bool = False,
        cause: Cause | None = None, end_of_audio: bool = False, processing_s: float = 0.0,
        silence_start: int | None = None,
    ) -> Transcribe:  # fmt: skip
        """A new request of `window` (stream samples at 16 kHz): its action, and its row in the table."""
        rid, self._next_id = self._next_id, self._next_id + 1
        options, known = self.options_for(kind, settings)
        start_s, end_s = window[0] / SAMPLE_RATE, window[1] / SAMPLE_RATE
        t = Transcribe(
            rid, kind, TranscribeRequest(audio, options), number, start_s, end_s, urgent, continues
        )
        state = State.SPECULATIVE if kind == "speculative" else State.QUEUED
        r = Request(t, "partial" if kind == "partial" else "final", utterance, settings.options, state, known)
        r.end_of_audio, r.continues, r.cause, r.processing_s = end_of_audio, continues, cause, processing_s
        r.window, r.silence_start = window, silence_start
        self.table[rid] = r
        if kind == "final":
            self.delivery.expect(rid)
        elif kind == "partial":
            self.partial = rid
        else:
            self.spec = r
        return t

    @property
    def finals_outstanding(self) -> int:
        return self.delivery.outstanding

    def owed_starts(self) -> list[float]:
        """Start times of finals (speculative ones too) requested and not answered yet."""
        return [r.transcribe.start_s for r in self.table.values() if r.kind == "final"]

    def drop_spec(self) -> list[Action]:
        """Forget the open segment's speculative decode (a late result is ignored, a queued one cancelled)."""
        spec, self.spec = self.spec, None
        if spec is None:
            return []
        self.table.pop(spec.id, None)
        return [Cancel(spec.id)] if spec.state is State.SPECULATIVE else []

    def cancel_partial(self) -> list[Action]:
        """The open segment changed: a queued partial of it is not worth running."""
        return [Cancel(self.partial)] if self.partial is not None else []

    def take_spec(self, window: tuple[int, int], settings: Settings) -> Request | None:
        """The speculative decode, if it has exactly this window and the options a final gets now; any other
        stays (`drop_spec` cancels it)."""
        spec = self.spec
        if spec is None or spec.window != window:
            return None
        if (spec.transcribe.request.options, spec.known_language) != self.options_for("final", settings):
            return None
        self.spec = None
        return spec

    def confirm(
        self, spec: Request, *, cause: Cause, continues: bool, urgent: bool, end_of_audio: bool,
        processing_s: float,
    ) -> tuple[list[Request], list[Action]]:  # fmt: skip
        """The speculative decode becomes the final: finals ready to leave (in order), or its promotion."""
        spec.cause, spec.continues, spec.end_of_audio, spec.processing_s = (
            cause,
            continues,
            end_of_audio,
            processing_s,
        )
        spec.transcribe = replace(spec.transcribe, urgent=urgent, continues=continues)
        if continues and spec.result is not None:  # decoded before the cut: the utterance's language
            self.cond.utterance_goes_on(spec.result)
        self.delivery.expect(spec.id)
        if spec.state is State.DONE:
            return self.delivery.complete(spec.id, spec), []
        spec.state = State.CONFIRMED
        return [], [Promote(spec.id)]

    def answer_flush(self) -> bool:
        """A flush with nothing of its own: the latest final still on its way answers it (False: none is)."""
        last = self.delivery.last()
        request = None if last is None else self.table.get(last) or self.delivery.waiting(last)
        if request is not None:
            request.answers_flush = True
        return request is not None

    def on_result(
        self, request_id: int, result: TranscribeResult | None, error: str | None,
        timing: dict[str, float] | None,
    ) -> Answer:  # fmt: skip
        """An engine answer, a failure, or a shed or cancelled request (result and error None)."""
        r = self.table.pop(request_id, None)
        if r is None:
            return Answer()
        r.result, r.error, r.timing = result, error, timing
        if r.kind == "partial":
            self.partial = None
            return Answer(partial=r) if result is not None else Answer(failed_partial=error)
        if r.state is State.SPECULATIVE:  # not confirmed yet
            if self.spec is r:
                if result is not None:
                    r.state = State.DONE  # its confirmation delivers it
                else:  # shed or failed: the endpoint asks for the final as usual
                    self.spec = None
            return Answer()
        if r.state is State.CONFIRMED and result is None and error is None:
            # shed before its promotion reached the scheduler: decoded now, as a final
            r.state, r.transcribe = State.QUEUED, replace(r.transcribe, kind="final")
            self.table[r.id] = r
            return Answer(again=r.transcribe)
        r.state = State.DONE
        return Answer(final=r, finals=tuple(self.delivery.complete(r.id, r)))

    # -- what is sent of the answers -----------------------------------------------------------------------

    def _transcript(self, r: Request, received_s: float, settings: Settings) -> Transcript:
        t = transcript_of_request(r, received_s, settings.timing)
        if t.segments or t.language_only:  # what a client is sent covers the window
            self.covered_s = max(self.covered_s, r.transcribe.end_s)
        return t

    def partial_result(self, r: Request, received_s: float, settings: Settings) -> list[Action]:
        """A current partial's transcript: held while finals before it are on their way."""
        skip = settings.config.streaming_params.skip_partial_if_hallucination
        if skip and r.result is not None and any(possible_hallucination(s) for s in r.result.segments):
            return []
        if self.finals_outstanding:
            self.delivery.hold(r)
            return []
        t = self._transcript(r, received_s, settings)
        return [t] if t.segments or t.language_only else []

    def deliver(
        self, finals: list[Request], received_s: float, settings: Settings, current: Callable[[Request], bool]
    ) -> list[Action]:
        """Finals leaving in order (empty ones too: protocols report every turn's end), each feeding the
        conditioning; then the held partial, if still `current`."""
        actions: list[Action] = []
        condition = settings.config.whisper_params.condition_on_previous_finals
        for r in finals:
            t = r.transcribe
            if r.result is None:
                actions.append(Notice("TRANSCRIPTION_ERROR", r.error or "failed", True, t.start_s, t.end_s))
                continue
            transcript = self._transcript(r, received_s, settings)
            self.cond.final_sent(transcript.text, transcript.language, condition)
            actions.append(transcript)
        held = self.delivery.release_held()
        if held is not None and current(held):
            actions += self.partial_result(held, received_s, settings)
        return actions
