"""One stream's streaming core, sans-I/O: frames with their speech probabilities, control events and engine
results in; decode requests, `Transcript`s, `TurnEvent`s and `Finished` out. No JSON, no bytes, no clock.

It orchestrates the `Segmenter` (where finals begin and end) and `InFlight` (the requests, their states,
delivery order and conditioning). Speculative finals: at an utterance's first silent frame the final's
decode starts; speech resuming cancels it; the endpoint or a flush that closes the segment at exactly that
window confirms it. Pause finals: a long segment also closes at a pause and the utterance goes on in the
next final; if the pause grows into the endpoint with nothing after the cut, the last piece takes the
endpoint's cause (still on its way) or an empty final carries it, so a turn's end is reported once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from whisper_stream.config import StreamConfig
from whisper_stream.core.events import (
    Action,
    Cause,
    Finished,
    FlushAnswered,
    Notice,
    RequestKind,
    Transcribe,
)  # fmt: skip
from whisper_stream.core.inflight import InFlight, Request
from whisper_stream.core.segmenter import MIN_SPEECH_FRAMES, Segmenter
from whisper_stream.core.settings import Settings
from whisper_stream.core.turns import Turns
from whisper_stream.dsp.audio import normalize_loudness
from whisper_stream.dsp.vad import FRAME
from whisper_stream.engines.interface import SAMPLE_RATE, TranscribeResult


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
        engine on its finals). `end_on_silence` False: client-committed turns. `utterance_end_ms`: report
        utterance_end. `check_config`: the engine's check of an update (raises ConfigError)."""
        self.stream_id = stream_id or config.stream_id
        self._max_partial_lag_s = max_partial_lag_s
        self._check_config = check_config
        self.settings = Settings(config, end_on_silence, utterance_end_ms)
        self._next: Settings | None = None  # an update waiting for the utterance's end
        self._seg = Segmenter(self.settings.rules)
        self._flight = InFlight()
        self._number = 0  # the open (or next) final's number
        self._turns = Turns()
        self._since_partial = 0
        self._processing_s = 0.0
        self._spec_run: int | None = None  # the silence run the latest speculative decode was started for
        self._ending = self._going_away = self.finished = False

    @property
    def config(self) -> StreamConfig:
        return self.settings.config

    def update_config(
        self, config: StreamConfig, *, end_on_silence: bool | None = None, utterance_end_ms: int | None = None
    ) -> bool:
        """New settings from the next utterance on (now if none is open); ConfigError for the audio format
        or enable_vad. Returns whether they apply now."""
        updated = self.settings.updated(config, end_on_silence, utterance_end_ms)
        if self._check_config is not None:
            self._check_config(config)
        self._next = updated
        if not self._seg.in_speech:
            self._apply_pending()
        return self._next is None

    def _apply_pending(self) -> None:
        if self._next is not None:
            self.settings, self._next = self._next, None
            self._seg.apply(self.settings.rules)

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
        return self.received_s - max(self._flight.covered_s, min(owed)) if owed else 0.0

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
            actions = self._flight.cancel_partial() + self._flight.drop_spec()
            self._number += 1
            self._turns.dropped()
            self._flight.cond.utterance_language = None
            self._apply_pending()
        self._seg.drop()
        return actions

    def finalize(self) -> list[Action]:
        """The speech so far becomes a final now; the stream stays open. Less speech than
        `MIN_SPEECH_FRAMES` stays open (it joins the next final, never lost). A flush with nothing of its
        own is answered by the final still on its way, or at once (`FlushAnswered`)."""
        if self._seg.in_speech and self._seg.speech_frames >= MIN_SPEECH_FRAMES:
            return self._close(self._flush_end(), urgent=True, cause="finalize")
        return [] if self._flight.answer_flush() else [FlushAnswered(self.received_s)]

    def end_audio(self) -> list[Action]:
        """No more audio: the open speech becomes its final, then `Finished` once every final is out."""
        if self._ending:
            return []
        self._ending = True
        actions = self._flight.cancel_partial()
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
        seg, use_vad = self._seg, self._seg.rules.use_vad
        step = seg.push(frame, p)
        if step == "idle":
            return self._utterance_end_event()
        if step == "start" and use_vad:
            self._since_partial = seg.end - seg.seg_start
            return [self._turns.event("speech_started", seg.end - FRAME)]
        spec, actions = self._flight.spec, []
        if spec is not None and seg.silence_start != spec.silence_start:
            actions += self._flight.drop_spec()  # speech resumed: the speculative result is never sent
        if step == "end":
            end = seg.endpoint_end()
            stopped = self._turns.event("speech_stopped", end)
            return [*actions, stopped, *self._close(end, cause="endpoint")]
        self._since_partial = FRAME if step == "start" else self._since_partial + FRAME
        if not use_vad:  # fixed-length segments; one the VAD heard no speech in is discarded
            if seg.too_long():
                return actions + self._close(seg.end, cause="max_duration")
            return actions + (self._maybe_partial() if seg.speech_frames else [])
        if seg.too_long():
            actions += self._flight.drop_spec() + self._cut(*seg.forced_cut(), cause="max_duration")
        window = seg.speculation_window()
        if self.settings.config.streaming_params.speculative_finals and not self._ending and window:
            if self._spec_run != seg.silence_start:  # one try per silence run
                self._spec_run = seg.silence_start
                actions.append(self._request("speculative", window))
        if not self._ending and seg.pause_due():
            actions += self._cut(*seg.pause_cut(), cause="pause")
        return actions + (self._maybe_partial() if seg.speech_frames >= MIN_SPEECH_FRAMES else [])

    def _maybe_partial(self) -> list[Action]:
        params = self.settings.config.streaming_params
        if (
            params.enable_partial_transcripts
            and self._flight.partial is None
            and self._since_partial >= int(params.partial_transcript_interval_s * SAMPLE_RATE)
            and not self._ending
            and (self._max_partial_lag_s is None or self.lag_s <= self._max_partial_lag_s)
        ):
            self._since_partial = 0
            return [self._request("partial", (self._seg.seg_start, self._seg.end))]
        return []

    # -- finals --------------------------------------------------------------------------------------------

    def _close(
        self, end: int, *, end_of_audio: bool = False, urgent: bool = False, cause: Cause
    ) -> list[Action]:
        """The utterance ends at `end`: its final (or its last piece's), then the turn's end."""
        speech_frames = self._seg.speech_frames
        window = self._seg.close(end)
        actions = self._flight.cancel_partial()
        # after a cut, even a short last word is speech of an utterance that passed the click test
        piece = self._turns.last_piece
        has_final = speech_frames >= MIN_SPEECH_FRAMES or piece is not None and speech_frames > 0
        has_final = has_final and window[1] > window[0]
        ready: list[Request] = []
        results: list[Action] = []  # after the turn's end: a client hears of the turn's end first
        if has_final:
            acts, ready = self._final(window, end_of_audio, urgent, cause, continues=False)
            actions += acts
            self._number += 1
        else:
            actions += self._flight.drop_spec()
            if piece is not None:  # only silence (or a click) after a cut: its final ends the turn
                floor, number = self._seg.floor, self._number
                results = self._turns.piece_ends(self._flight, cause, end_of_audio, floor, number)
                self._number += end_of_audio  # numbered: Baseten sends it, as end_audio's flush is answered
                has_final = True
        actions.append(self._turns.ended(end, cause, has_final))
        self._flight.cond.utterance_language = None
        self._seg.after_close(end)
        self._apply_pending()
        return actions + results + (self._deliver(ready) if ready else [])

    def _cut(self, start: int, end: int, cause: Cause) -> list[Action]:
        """A final for the first part of the open utterance, which goes on in the next segment."""
        actions, ready = self._final((start, end), False, False, cause, continues=True)
        self._number += 1
        self._since_partial = self._seg.end - end
        self._seg.trim(end)
        return self._flight.cancel_partial() + actions + (self._deliver(ready) if ready else [])

    def _final(
        self, window: tuple[int, int], end_of_audio: bool, urgent: bool, cause: Cause, continues: bool
    ) -> tuple[list[Action], list[Request]]:
        """The final of `window`: the speculative decode if it has exactly this window and these options
        (-> finals ready to leave, or its promotion), else a new request."""
        spec = self._flight.take_spec(window, self.settings)
        if spec is not None:
            processing, self._processing_s = self._processing_s, 0.0
            self._turns.last_piece = spec if continues else None
            ready, actions = self._flight.confirm(
                spec, cause=cause, continues=continues, urgent=urgent, end_of_audio=end_of_audio,
                processing_s=processing,
            )  # fmt: skip
            return actions, ready
        actions = self._flight.drop_spec()
        t = self._request("final", window, end_of_audio, urgent, cause, continues)
        self._turns.last_piece = self._flight.table[t.request_id] if continues else None
        return [*actions, t], []

    def _utterance_end_event(self) -> list[Action]:
        outstanding, ms = self._flight.finals_outstanding, self.settings.utterance_end_ms
        return self._turns.utterance_end(self._seg.end, outstanding, ms)

    def _request(
        self, kind: RequestKind, window: tuple[int, int], end_of_audio: bool = False, urgent: bool = False,
        cause: Cause | None = None, continues: bool = False,
    ) -> Transcribe:  # fmt: skip
        audio = self._seg.audio(*window)
        if self.settings.config.whisper_params.use_dynamic_preprocessing:
            audio = normalize_loudness(audio)
        t = self._flight.request(
            kind, window, audio, self.settings, number=self._number, utterance=self._turns.utterance,
            urgent=urgent, continues=continues, cause=cause, end_of_audio=end_of_audio,
            processing_s=self._processing_s, silence_start=self._seg.silence_start,
        )  # fmt: skip
        self._processing_s = 0.0 if kind == "final" else self._processing_s
        return t

    # -- results -------------------------------------------------------------------------------------------

    def on_result(
        self, request_id: int, result: TranscribeResult | None, error: str | None, timing: dict | None = None
    ) -> list[Action]:
        """An engine answer, a failure (`error`), or a shed or cancelled request (both None)."""
        answer = self._flight.on_result(request_id, result, error, timing)
        if answer.again is not None:
            return [answer.again]
        if answer.partial is not None:
            return self._on_partial(answer.partial)
        if answer.failed_partial:
            return [Notice("TRANSCRIPTION_ERROR", answer.failed_partial)]
        r = answer.final  # a piece of the open utterance: its later pieces keep its language
        if r is not None and r.result is not None and r.continues and self._is_open_after(r):
            self._flight.cond.utterance_goes_on(r.result)
        return self._deliver(list(answer.finals)) if answer.finals else []

    def _is_open_after(self, r: Request) -> bool:
        return self.in_speech and self._number == r.number + 1

    def _partial_current(self, r: Request) -> bool:
        return self.in_speech and r.number == self._number and not self._ending

    def _on_partial(self, r: Request) -> list[Action]:
        if not self._partial_current(r):
            return []  # stale: its utterance ended
        return self._flight.partial_result(r, self.received_s, self.settings)

    def _deliver(self, finals: list[Request]) -> list[Action]:
        actions = self._flight.deliver(finals, self.received_s, self.settings, self._partial_current)
        if not self.in_speech and not self._ending:
            actions += self._utterance_end_event()
        return actions + self._maybe_finish()

    def _maybe_finish(self) -> list[Action]:
        if self._ending and not self._flight.finals_outstanding and not self.finished:
            self.finished = True
            return [Finished(self._going_away)]
        return []
