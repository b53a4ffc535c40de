"""One stream's streaming core, sans-I/O: frames with their speech probabilities, control events and engine
results in; decode requests, `Transcript`s, `TurnEvent`s and `Finished` out. No JSON, no bytes, no clock.

It orchestrates two parts: the `Segmenter` (where finals begin and end) and `InFlight` (the requests with
their states, delivery order and conditioning). Speculative finals (`streaming_params.speculative_finals`):
at an utterance's first silent frame the final's decode starts at once; speech resuming cancels it; the
endpoint or a flush that closes the segment at exactly that window, with the same options, confirms it (sent
at once if its result is in, else promoted in the scheduler). Pause finals (`pause_final_after_s`): a long
segment is also closed at a pause and the utterance goes on in the next final; when the pause grows into the
endpoint with nothing after the cut, the last piece takes the endpoint's cause (still on its way) or an empty
final carries it (already sent), so a turn's end is still reported once per utterance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from whisper_stream.audio import normalize_loudness
from whisper_stream.config import ConfigError, StreamConfig
from whisper_stream.core.events import (
    Action,
    Cancel,
    Cause,
    Finished,
    FlushAnswered,
    Notice,
    RequestKind,
    Transcribe,
    Transcript,
    TurnEvent,
)
from whisper_stream.core.inflight import Conditioning, InFlight, Request, State
from whisper_stream.core.segmenter import MIN_SPEECH_FRAMES, Rules, Segmenter
from whisper_stream.core.transcripts import transcript_of
from whisper_stream.engines.interface import SAMPLE_RATE, DecodeOptions, TranscribeRequest, TranscribeResult
from whisper_stream.hallucination import possible_hallucination
from whisper_stream.vad import FRAME


def rules_of(config: StreamConfig, end_on_silence: bool) -> Rules:
    v, s, w = config.streaming_vad_config, config.streaming_params, config.whisper_params
    return Rules(
        v.threshold, v.min_silence_duration_ms, v.speech_pad_ms, s.final_transcript_max_duration_s,
        s.pause_final_after_s, end_on_silence, w.enable_vad,
    )  # fmt: skip


class Session:
    def __init__(
        self,
        config: StreamConfig,
        *,
        stream_id: str | None = None,
        max_partial_lag_s: float | None = None,
        end_on_silence: bool = True,
        utterance_end_ms: int | None = None,
        check_config: Callable[[StreamConfig], None] | None = None,
    ) -> None:
        """`max_partial_lag_s`: above this lag no partial is requested (a stream that falls behind spends the
        engine on its finals). `end_on_silence` False: only a flush or the maximum duration ends an utterance
        (client-committed turns). `utterance_end_ms`: report utterance_end. `check_config`: the engine's check
        of an update (raises ConfigError)."""
        self.stream_id = stream_id or config.stream_id
        self._max_partial_lag_s = max_partial_lag_s
        self._check_config = check_config
        self._next: tuple[StreamConfig, bool, int | None] | None = None  # an update waiting for the turn end
        self._seg = Segmenter(rules_of(config, end_on_silence))
        self._apply(config, end_on_silence, utterance_end_ms)
        self._flight = InFlight()
        self._cond = Conditioning()
        self._number = 0  # the open (or next) final's number
        self._utterance = 0
        self._since_partial = 0
        self._processing_s = 0.0
        self._spec_run: int | None = None  # the silence run the latest speculative decode was started for
        self._last_piece: Request | None = None  # the open utterance's latest cut final
        self._covered_s = 0.0  # end of the audio the latest sent transcript covers
        self._speech_end: int | None = None  # end of the latest utterance, until utterance_end is reported
        self._ending = False
        self._going_away = False
        self.finished = False

    def _apply(self, config: StreamConfig, end_on_silence: bool, utterance_end_ms: int | None) -> None:
        """Take `config` for what follows; called between utterances only."""
        self.config, self.end_on_silence, self.utterance_end_ms = config, end_on_silence, utterance_end_ms
        self._seg.apply(rules_of(config, end_on_silence))
        s, w = config.streaming_params, config.whisper_params
        self._partials, self._partial_every = s.enable_partial_transcripts, s.partial_transcript_interval_s
        self._speculate = s.speculative_finals
        self._options = config.decode_options()
        self._partial_options = replace(self._options, temperatures=self._options.temperatures[:1])

    def update_config(
        self, config: StreamConfig, *, end_on_silence: bool | None = None, utterance_end_ms: int | None = None
    ) -> bool:
        """New settings from the next utterance on (now if none is open). The audio format and enable_vad
        cannot change mid-stream (ConfigError). Returns whether they apply now."""
        for name in ("encoding", "sample_rate"):
            if getattr(config.streaming_params, name) != getattr(self.config.streaming_params, name):
                raise ConfigError(
                    f"streaming_params.{name} cannot change mid-stream (reconnect for another audio format)",
                    field=f"streaming_params.{name}",
                    unsupported=True,
                )
        if config.whisper_params.enable_vad != self.config.whisper_params.enable_vad:
            raise ConfigError(
                "whisper_params.enable_vad cannot change mid-stream",
                field="whisper_params.enable_vad",
                unsupported=True,
            )
        if self._check_config is not None:
            self._check_config(config)
        ending = self.end_on_silence if end_on_silence is None else end_on_silence
        update = (config, ending, self.utterance_end_ms if utterance_end_ms is None else utterance_end_ms)
        if self._seg.in_speech:
            self._next = update
            return False
        self._next = None
        self._apply(*update)
        return True

    def _apply_pending(self) -> None:
        if self._next is not None:
            self._apply(*self._next)
            self._next = None

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        return self._seg.in_speech

    @property
    def received_s(self) -> float:
        return self._seg.end / SAMPLE_RATE

    @property
    def lag_s(self) -> float:
        """Received audio after the oldest speech still owed a final that no sent transcript covers yet. A
        pause between utterances is never lag."""
        owed = self._flight.owed_starts() + ([self._seg.seg_start / SAMPLE_RATE] if self.in_speech else [])
        return self.received_s - max(self._covered_s, min(owed)) if owed else 0.0

    @property
    def accepting_audio(self) -> bool:
        return not self._ending

    @property
    def finals_in_flight(self) -> int:
        return self._flight.finals_outstanding

    def add_processing_time(self, seconds: float) -> None:
        """Audio decoding + VAD time the caller measured (reported with include_timing_info)."""
        self._processing_s += seconds

    # -- control events ------------------------------------------------------------------------------------

    def clear(self) -> list[Action]:
        """Drop the open utterance without transcribing it."""
        actions: list[Action] = []
        if self._seg.in_speech:
            actions += self._cancel_partial() + self._drop_spec()
            self._number += 1
            self._utterance += 1
            self._cond.utterance_language, self._last_piece = None, None
            self._apply_pending()
        self._seg.drop()
        return actions

    def finalize(self) -> list[Action]:
        """The speech so far becomes a final now; the stream stays open. Less speech than
        `MIN_SPEECH_FRAMES` stays open (its audio joins the next final, never lost). A flush with nothing of
        its own is answered by the final still on its way, or at once (`FlushAnswered`)."""
        if self._seg.in_speech and self._seg.speech_frames >= MIN_SPEECH_FRAMES:
            return self._close(self._flush_end(), urgent=True, cause="finalize")
        last = self._flight.last_outstanding()
        if last is not None:
            last.answers_flush = True
            return []
        return [FlushAnswered(self.received_s)]

    def end_audio(self) -> list[Action]:
        """No more audio: the open speech becomes its final, then `Finished` once every final is out."""
        if self._ending:
            return []
        self._ending = True
        actions = self._cancel_partial()
        if self._seg.in_speech:
            actions += self._close(self._flush_end(), end_of_audio=True, urgent=True, cause="end_of_audio")
        return actions + self._maybe_finish()

    def shutdown(self) -> list[Action]:
        """The server is going away: `end_audio`, then Finished(going_away)."""
        if self._ending:
            return []
        self._going_away = True
        return self.end_audio()

    def _flush_end(self) -> int:
        """Where a flush closes the segment: at the speculative window if only silence followed it."""
        spec = self._flight.spec
        if spec is not None and self._seg.silence_start == spec.silence_start:
            return spec.window[1]
        return self._seg.end

    # -- frames --------------------------------------------------------------------------------------------

    def on_frames(self, frames: np.ndarray, probs: np.ndarray) -> list[Action]:
        """Whole 512-sample frames at 16 kHz with their speech probabilities, in stream order."""
        actions: list[Action] = []
        for frame, p in zip(frames, probs, strict=True):
            actions += self._on_frame(frame, float(p))
        return actions

    def _on_frame(self, frame: np.ndarray, p: float) -> list[Action]:
        seg = self._seg
        step = seg.push(frame, p)
        if step == "idle":
            return self._utterance_end_event()
        if step == "start" and seg.rules.use_vad:
            self._since_partial = seg.end - seg.seg_start
            return [TurnEvent("speech_started", (seg.end - FRAME) / SAMPLE_RATE, self._utterance)]
        spec = self._flight.spec
        actions: list[Action] = []
        if spec is not None and seg.silence_start != spec.silence_start:
            actions += self._drop_spec()  # speech resumed: the speculative result is never sent
        if step == "end":
            end = seg.endpoint_end()
            stopped = TurnEvent("speech_stopped", end / SAMPLE_RATE, self._utterance)
            return [*actions, stopped, *self._close(end, cause="endpoint")]
        if not seg.rules.use_vad:
            return actions + self._on_fixed_frame(step)
        if seg.too_long():
            actions += self._cut(*seg.forced_cut(), cause="max_duration")
        if self._speculate and not self._ending:
            actions += self._maybe_speculate()
        if not self._ending and seg.pause_due():
            actions += self._cut(*seg.pause_cut(), cause="pause")
        self._since_partial += FRAME
        if seg.speech_frames >= MIN_SPEECH_FRAMES:  # not a segment of silence after a cut
            actions += self._maybe_partial()
        return actions

    def _on_fixed_frame(self, step: str) -> list[Action]:
        """enable_vad false: fixed-length segments; one the VAD heard no speech in is discarded."""
        self._since_partial = FRAME if step == "start" else self._since_partial + FRAME
        if self._seg.too_long():
            return self._close(self._seg.end, cause="max_duration")
        return self._maybe_partial() if self._seg.speech_frames else []

    def _maybe_partial(self) -> list[Action]:
        if (
            self._partials
            and self._flight.partial is None
            and self._since_partial >= int(self._partial_every * SAMPLE_RATE)
            and not self._ending
            and (self._max_partial_lag_s is None or self.lag_s <= self._max_partial_lag_s)
        ):
            self._since_partial = 0
            return [self._request("partial", self._seg.seg_start, self._seg.end)]
        return []

    def _maybe_speculate(self) -> list[Action]:
        window = self._seg.speculation_window()
        if window is None or self._spec_run == self._seg.silence_start:  # one try per silence run
            return []
        self._spec_run = self._seg.silence_start
        return [self._request("speculative", *window)]

    # -- finals --------------------------------------------------------------------------------------------

    def _close(
        self, end: int, *, end_of_audio: bool = False, urgent: bool = False, cause: Cause
    ) -> list[Action]:
        """The utterance ends at `end`: its final (or its last piece's), and the turn's end."""
        speech_frames = self._seg.speech_frames
        start, end = self._seg.close(end)
        actions = self._cancel_partial()
        # after a cut, even a short last word is speech of an utterance that passed the click test
        tail = self._last_piece is not None and speech_frames > 0
        has_final = (speech_frames >= MIN_SPEECH_FRAMES or tail) and end > start
        ready: list[Request] = []
        results: list[Action] = []  # after the turn's end: a client hears of the turn's end first
        if has_final:
            acts, ready = self._final(start, end, end_of_audio, urgent, cause, continues=False)
            actions += acts
            self._number += 1
            self._speech_end = end
        else:
            actions += self._drop_spec()
            if self._last_piece is not None:  # only silence (or a click) after a cut: its final ends the turn
                results = self._piece_ends_utterance(cause, end_of_audio)
                self._speech_end, has_final = end, True
        actions.append(TurnEvent("end_of_turn", end / SAMPLE_RATE, self._utterance, cause, has_final))
        self._utterance += 1
        self._last_piece, self._cond.utterance_language = None, None
        self._seg.after_close(end)
        self._apply_pending()
        return actions + results + (self._deliver(ready) if ready else [])

    def _cut(self, start: int, end: int, cause: Cause) -> list[Action]:
        """A final for the first part of the open utterance, which goes on in the next segment."""
        actions = self._cancel_partial()
        if cause == "max_duration":
            actions += self._drop_spec()  # its window started before the cut
        acts, ready = self._final(start, end, False, False, cause, continues=True)
        self._number += 1
        self._since_partial = self._seg.end - end
        self._seg.trim(end)
        return actions + acts + (self._deliver(ready) if ready else [])

    def _final(
        self, start: int, end: int, end_of_audio: bool, urgent: bool, cause: Cause, continues: bool
    ) -> tuple[list[Action], list[Request]]:
        """The final of [start, end): the speculative decode if it has exactly this window and these options
        (-> finals ready to leave, or its promotion), else a new request."""
        spec, self._flight.spec = self._flight.spec, None
        if (
            spec is not None
            and spec.window == (start, end)
            and (spec.transcribe.request.options, spec.known_language) == self._options_for("final")
        ):
            spec.cause, spec.continues = cause, continues
            spec.transcribe = replace(spec.transcribe, urgent=urgent, continues=continues)
            spec.processing_s, self._processing_s = self._processing_s, 0.0
            self._last_piece = spec if continues else None
            if continues and spec.result is not None:  # decoded before the cut: the utterance's language
                self._cond.utterance_language = self._cond.utterance_language or (
                    spec.result.language,
                    spec.result.language_prob,
                )
            ready, promote = self._flight.confirm(spec, end_of_audio)
            return list(promote), ready
        actions: list[Action] = [Cancel(spec.id)] if spec is not None else []
        if spec is not None:
            self._flight.pop(spec.id)
        t = self._request("final", start, end, end_of_audio, urgent, cause, continues)
        self._last_piece = self._flight.table[t.request_id] if continues else None
        return [*actions, t], []

    def _piece_ends_utterance(self, cause: Cause, end_of_audio: bool) -> list[Action]:
        """The utterance ended with nothing after its last cut: that piece, still on its way, becomes the
        utterance's last final; already sent, an empty final carries the end."""
        piece = self._last_piece
        assert piece is not None
        piece.cause, piece.continues = cause, False
        piece.end_of_audio = piece.end_of_audio or end_of_audio
        if self._flight.delivery.last() == piece.id:
            return []
        end_s = self._seg.floor / SAMPLE_RATE
        language = self._cond.last_language or piece.options.language or ""
        empty = transcript_of(
            None, kind="final", number=self._number, utterance=self._utterance, start_s=end_s, end_s=end_s,
            language=language, cause=cause, end_of_audio=end_of_audio,
        )  # fmt: skip
        if end_of_audio:  # numbered: Baseten sends it, as any end_audio flush is answered
            self._number += 1
        return [empty]

    def _utterance_end_event(self) -> list[Action]:
        if (
            self.utterance_end_ms is None
            or self._speech_end is None
            or self._flight.finals_outstanding
            or self._seg.end - self._speech_end < self.utterance_end_ms * SAMPLE_RATE // 1000
        ):
            return []
        end, self._speech_end = self._speech_end, None
        return [TurnEvent("utterance_end", end / SAMPLE_RATE, self._utterance - 1)]

    # -- requests ------------------------------------------------------------------------------------------

    def _options_for(self, kind: RequestKind) -> tuple[DecodeOptions, tuple[str, float | None] | None]:
        w = self.config.whisper_params
        base = self._partial_options if kind == "partial" else self._options
        return self._cond.options_for(
            base, w.enable_chunk_level_language_detection, w.condition_on_previous_finals
        )

    def _request(
        self,
        kind: RequestKind,
        start: int,
        end: int,
        end_of_audio: bool = False,
        urgent: bool = False,
        cause: Cause | None = None,
        continues: bool = False,
    ) -> Transcribe:
        options, known = self._options_for(kind)
        audio = self._seg.audio(start, end)
        if self.config.whisper_params.use_dynamic_preprocessing:
            audio = normalize_loudness(audio)
        t = Transcribe(
            self._flight.next_id(), kind, TranscribeRequest(audio, options), self._number,  # type: ignore[arg-type]
            start / SAMPLE_RATE, end / SAMPLE_RATE, urgent, continues,
        )  # fmt: skip
        state = State.SPECULATIVE if kind == "speculative" else State.QUEUED
        r = Request(
            t, "partial" if kind == "partial" else "final", self._utterance, self._options, state, known,
            end_of_audio, continues, cause, processing_s=self._processing_s, speculative=kind == "speculative",
            window=(start, end), silence_start=self._seg.silence_start,
        )  # fmt: skip
        if kind == "final":
            self._processing_s = 0.0
        self._flight.add(r)
        return t

    def _drop_spec(self) -> list[Action]:
        spec = self._flight.spec
        self._flight.drop_spec()
        return [Cancel(spec.id)] if spec is not None and spec.state is State.SPECULATIVE else []

    def _cancel_partial(self) -> list[Action]:
        """The open segment changes: a queued partial of it is not worth running."""
        return [Cancel(self._flight.partial)] if self._flight.partial is not None else []

    # -- results -------------------------------------------------------------------------------------------

    def on_result(
        self,
        request_id: int,
        result: TranscribeResult | None,
        error: str | None,
        timing: dict[str, float] | None = None,
    ) -> list[Action]:
        """An engine answer, a failure (`error`), or a shed or cancelled request (both None)."""
        r = self._flight.pop(request_id)
        if r is None:
            return []
        r.result, r.error, r.timing = result, error, timing
        if r.kind == "partial":
            self._flight.partial = None
            if result is None:
                return [Notice("TRANSCRIPTION_ERROR", error)] if error else []
            return self._on_partial(r)
        if r.state is State.SPECULATIVE:  # not confirmed yet
            if self._flight.spec is r:
                if result is not None:
                    r.state = State.DONE  # its confirmation delivers it
                else:  # shed or failed: the endpoint asks for the final as usual
                    self._flight.spec = None
            return []
        if r.state is State.CONFIRMED and result is None and error is None:
            # shed before its promotion reached the scheduler: decoded now, as a final
            r.speculative, r.state = False, State.QUEUED
            r.transcribe = replace(r.transcribe, kind="final")
            self._flight.table[r.id] = r
            return [r.transcribe]
        if result is not None and r.continues and self.in_speech and self._number == r.number + 1:
            self._cond.utterance_language = self._cond.utterance_language or (
                result.language,
                result.language_prob,
            )
        return self._deliver(self._flight.complete(r))

    def _transcript(self, r: Request) -> Transcript:
        assert r.result is not None
        t = transcript_of(
            r.result, kind=r.kind, number=r.number, utterance=r.utterance, start_s=r.transcribe.start_s,
            end_s=r.transcribe.end_s, options=r.options, known_language=r.known_language,
            lag_s=self.received_s - r.transcribe.end_s, cause=r.cause, continues=r.continues,
            answers_flush=r.answers_flush or r.cause == "finalize", end_of_audio=r.end_of_audio,
            timing=self._timing(r),
        )  # fmt: skip
        if t.segments or t.language_only:
            self._covered_s = max(self._covered_s, r.transcribe.end_s)
        return t

    def _timing(self, r: Request) -> dict[str, object] | None:
        c = self.config
        if (
            not (c.include_timing_info or c.streaming_params.include_pipeline_latency_metric)
            or r.timing is None
        ):
            return None
        return {**r.timing, "audio_processing_s": round(r.processing_s, 4), "speculative": r.speculative}

    def _partial_current(self, r: Request) -> bool:
        return self.in_speech and r.number == self._number and not self._ending

    def _on_partial(self, r: Request) -> list[Action]:
        if not self._partial_current(r):
            return []  # stale: its utterance ended
        skip = self.config.streaming_params.skip_partial_if_hallucination
        if skip and r.result is not None and any(possible_hallucination(s) for s in r.result.segments):
            return []
        if self._flight.finals_outstanding:  # earlier finals still on their way: the partial waits
            self._flight.delivery.hold(r)
            return []
        t = self._transcript(r)
        return [t] if t.segments or t.language_only else []

    def _deliver(self, finals: list[Request]) -> list[Action]:
        actions: list[Action] = []
        for r in finals:
            if r.result is None:
                t = r.transcribe
                actions.append(Notice("TRANSCRIPTION_ERROR", r.error or "failed", True, t.start_s, t.end_s))
                continue
            t = self._transcript(r)
            self._cond.final_sent(t.text, t.language, self.config.whisper_params.condition_on_previous_finals)
            actions.append(t)
        held = self._flight.delivery.release_held()
        if held is not None and self._partial_current(held):
            t = self._transcript(held)
            actions += [t] if t.segments or t.language_only else []
        if not self.in_speech and not self._ending:
            actions += self._utterance_end_event()
        return actions + self._maybe_finish()

    def _maybe_finish(self) -> list[Action]:
        if self._ending and not self._flight.finals_outstanding and not self.finished:
            self.finished = True
            return [Finished(self._going_away)]
        return []
