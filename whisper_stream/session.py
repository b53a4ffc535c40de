"""One stream's state machine, sans-I/O: events in (audio bytes, text frames, engine results), actions out.

No sockets, threads or clock reads: callers pass `now` and carry out the returned actions (send a message,
run a transcription, close). Every endpointing and ordering rule is therefore testable with synthetic audio,
a fake VAD and a fake clock.

Endpointing is `endpointer.Endpointer` (Silero's streaming rule, shared with the Triton ensemble and the
benchmark); `speech_pad_ms` is added on both sides but never
reaches back into audio an earlier final already covered, so consecutive finals never share audio. A segment
that reaches `final_transcript_max_duration_s` is cut at its quietest frame near the end and the rest of the
speech continues in the next segment: every sample of speech is in exactly one final.

Speculative finals (`streaming_params.speculative_finals`, on by default): at an utterance's first silent
frame (once its padding has arrived) the session asks for the final's decode at once (`Transcribe` kind
"speculative", which the scheduler sheds like a partial). If speech resumes, that decode is dropped and its
result never sent. If the endpoint or a flush (`finalize`, `end_audio`) then closes the segment at exactly
that window, with the same decoding options, the result is the final: sent at once if it has arrived,
otherwise as soon as it does (the scheduler promotes the queued job to a final). A flush whose trailing audio
the VAD calls silence closes the segment at the speculative window, so it needs no new decode. A flush with
less speech than `MIN_SPEECH_FRAMES` leaves the segment open: its audio joins the next flush or endpoint
instead of being lost.

Pause finals (`streaming_params.pause_final_after_s`, 3 s by default): once a segment holds that much audio,
a pause of `PAUSE_FINAL_MS` closes it too, at the same window a speculative final was started for, and the
utterance goes on in the next segment (`continues`, cause "pause"). A final's decode grows with its length, so
the final covering a long utterance's end then holds only its last few seconds. The endpoint itself does not
move: when the pause grows into the endpoint with no speech after the cut, the last piece takes the endpoint's
cause (still to be sent) or an empty `final_empty` event carries it (already sent), so turn-level signals such
as Deepgram's `speech_final` still come once per utterance.

Memory per stream is bounded: the audio buffer holds at most the maximum segment plus padding (about 2 MB
for 30 s), and at most one partial is in flight.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from whisper_stream import messages
from whisper_stream.audio import AudioDecoder, normalize_loudness
from whisper_stream.config import ConfigError, StreamConfig, merge_update, short
from whisper_stream.delivery import InOrder
from whisper_stream.endpointer import Endpointer, silence_frames
from whisper_stream.engines.interface import SAMPLE_RATE, DecodeOptions, TranscribeRequest, TranscribeResult
from whisper_stream.hallucination import filter_segments, possible_hallucination
from whisper_stream.vad import FRAME, SpeechProbability

log = logging.getLogger(__name__)

MIN_SPEECH_FRAMES = 5  # less speech than 160 ms is a click or a breath, not a word: never sent to Whisper
# A pause this long ends a segment that reached `pause_final_after_s`: Silero's own rule for splitting long
# speech (`min_silence_at_max_speech`, 98 ms).
PAUSE_FINAL_MS = 100
CUT_SEARCH_S = 3.0  # a forced cut looks for the quietest frame within the last seconds of the segment
TRACE_ID_CHARS = 256  # a trace_id is echoed back: longer ones are refused, not echoed
PREVIOUS_TEXT_CHARS = 600  # bound on the previous finals used as prompt (~150 tokens, half Whisper's limit)


Cause = Literal["endpoint", "finalize", "max_duration", "pause", "end_of_audio"]


@dataclass(frozen=True)
class TranscriptInfo:
    """What a transcription message is, for protocols that report more than Baseten's shape carries."""

    kind: Literal["partial", "final"]
    segment: int
    start_s: float
    end_s: float
    cause: Cause | None = None  # finals: why the segment ended
    answers_flush: bool = False  # a flush asked for it, or came while it was decoding with nothing after it


@dataclass(frozen=True)
class Send:
    message: dict[str, Any]
    info: TranscriptInfo | None = field(default=None, compare=False)  # set on transcription messages


@dataclass(frozen=True)
class Transcribe:
    request_id: int
    kind: Literal["partial", "final", "speculative"]
    request: TranscribeRequest
    segment: int
    start_s: float
    end_s: float
    urgent: bool = False  # a final a client's flush asked for: ahead of every other queued job
    continues: bool = False  # a final cut at the maximum duration or a pause: the utterance goes on


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Event:
    """Only with `Session(events=True)`: turn events that other protocols report (Baseten's has none).

    speech_started: VAD onset at `time_s`; speech_stopped: the endpointer ended the utterance, `time_s` is
    its end; utterance_end: `utterance_end_ms` of audio without speech followed the speech that ended at
    `time_s` and all its finals were sent; final_empty: a final whose transcript was empty (nothing else
    is sent for it)."""

    kind: Literal["speech_started", "speech_stopped", "utterance_end", "final_empty"]
    time_s: float
    info: TranscriptInfo | None = None


Action = Send | Transcribe | Close | Event


@dataclass
class _Pending:
    kind: Literal["partial", "final"]
    segment: int
    start_s: float
    end_s: float
    options: DecodeOptions  # the stream's options when it was requested (an update_config waits for the next)
    flush: bool = False
    continues: bool = False  # a forced cut: the utterance goes on in the next segment
    known_language: tuple[str, float | None] | None = None  # language reused from the utterance's first chunk
    processing_s: float = 0.0  # audio decoding + VAD time spent on this segment's audio
    cause: Cause | None = None
    speculative: bool = False  # decoded from the first silent frame, before the endpoint confirmed it
    answers_flush: bool = False  # a flush came while it was outstanding, with no speech open after it


@dataclass
class _Spec:
    """The open segment's speculative final: requested, not yet confirmed by the endpoint or a flush."""

    transcribe: Transcribe
    pending: _Pending
    silence_start: int  # the silence run it was started for: speech resuming ends that run
    start: int
    end: int
    done: _Done | None = None  # its result, when it arrived before the confirmation


@dataclass
class _Done:
    """A final whose result (or failure) arrived, waiting for the finals before it."""

    pending: _Pending
    result: TranscribeResult | None
    error: str | None = None
    timing: dict[str, float] | None = None


class Session:
    def __init__(
        self,
        config: StreamConfig,
        vad: SpeechProbability,
        *,
        stream_id: str | None = None,
        max_partial_lag_s: float | None = None,
        events: bool = False,
        end_on_silence: bool = True,
        utterance_end_ms: int | None = None,
        check_config: Callable[[StreamConfig], None] | None = None,
    ) -> None:
        """`max_partial_lag_s`: above this much lag (`lag_s`) no partial is requested, so a stream that
        falls behind spends the engine on its finals first. `events`: also emit `Event` actions;
        `end_on_silence` False: only finalize (or the maximum duration) ends an utterance (client-committed
        turns); `utterance_end_ms`: emit utterance_end events; `check_config`: the engine's check of an
        `update_config` (raises ConfigError)."""
        self._max_partial_lag_s = max_partial_lag_s
        self.stream_id = stream_id or config.stream_id
        self._vad = vad
        self._events = events
        self._check_config = check_config
        self._next: tuple[StreamConfig, bool, int | None] | None = (
            None  # update waiting for the utterance end
        )
        self._ep = Endpointer(0.5, 1)
        self._buf = np.zeros(0, dtype=np.float32)
        self._apply(config, end_on_silence, utterance_end_ms)
        s = config.streaming_params
        self._previous_text = ""  # recent finals, for conditioning
        self._utterance_language: tuple[str, float | None] | None = None
        self._last_language: str | None = None  # of the latest final with text: a hint for detection
        self._processing_s = 0.0

        self._decoder = AudioDecoder(s.encoding, s.sample_rate)
        self._tail = np.zeros(0, dtype=np.float32)  # samples not yet forming a whole VAD frame
        # Audio buffer: stream samples [_buf_start, _buf_start + _buf_len).
        self._buf = np.zeros(self._buffer_size(), dtype=np.float32)
        self._buf_start = 0
        self._buf_len = 0
        self._frame_probs: list[float] = []  # VAD probability per frame of the open segment
        self._floor = 0  # first sample not yet covered by a final

        self._seg_start = 0  # stream sample where the open segment's audio starts (incl. padding)
        self._segment = 0  # index of the open (or next) segment
        self._since_partial = 0

        self._next_id = 0
        self._inflight: dict[int, _Pending] = {}
        self._partial_inflight: int | None = None
        self._spec: _Spec | None = None
        self._spec_run: int | None = None  # silence run the latest speculative final was started for
        self._promoted: dict[int, Transcribe] = {}  # confirmed speculative finals whose result is awaited
        self._last_piece: tuple[int, _Pending] | None = None  # the open utterance's latest cut final
        self._delivery: InOrder[_Done, _Done] = InOrder()
        self._covered_s = 0.0  # end of the audio the latest sent transcription covers
        self._speech_end: int | None = None  # end of the latest utterance, until utterance_end is reported
        self._ending = False
        self._going_away = False
        self.finished = False

    def _apply(self, config: StreamConfig, end_on_silence: bool, utterance_end_ms: int | None) -> None:
        """Take `config` (and the turn settings) for what follows; called between utterances only."""
        self.config = config
        v, s = config.streaming_vad_config, config.streaming_params
        self._threshold = v.threshold
        self._end_on_silence = end_on_silence
        never = 1 << 40  # client-committed turns: no silence is long enough
        self._ep = Endpointer(
            v.threshold, silence_frames(v.min_silence_duration_ms) if end_on_silence else never
        )
        self._utterance_end = None if utterance_end_ms is None else utterance_end_ms * SAMPLE_RATE // 1000
        self._pad = v.speech_pad_ms * SAMPLE_RATE // 1000
        self._max_samples = int(s.final_transcript_max_duration_s * SAMPLE_RATE)
        self._pause_after = int(s.pause_final_after_s * SAMPLE_RATE)
        self._pause_frames = silence_frames(PAUSE_FINAL_MS)
        self._partials = s.enable_partial_transcripts
        self._partial_every = int(s.partial_transcript_interval_s * SAMPLE_RATE)
        self._skip_hallucinated_partials = s.skip_partial_if_hallucination
        w = config.whisper_params
        self._use_vad = w.enable_vad
        self._normalize = w.use_dynamic_preprocessing
        self._chunk_language = w.enable_chunk_level_language_detection
        self._condition = w.condition_on_previous_finals
        self._timing = config.include_timing_info or s.include_pipeline_latency_metric
        self._speculate = s.speculative_finals
        self._options = config.decode_options()
        self._partial_options = replace(self._options, temperatures=self._options.temperatures[:1])
        if len(self._buf) and self._buffer_size() > len(self._buf):  # a longer maximum or padding: grow
            grown = np.zeros(self._buffer_size(), dtype=np.float32)
            grown[: self._buf_len] = self._buf[: self._buf_len]
            self._buf = grown

    def _buffer_size(self) -> int:
        return self._max_samples + 2 * self._pad + 4 * SAMPLE_RATE

    def update_config(
        self, config: StreamConfig, *, end_on_silence: bool | None = None, utterance_end_ms: int | None = -1
    ) -> bool:
        """New settings (prompt, language, VAD, partials...) from the next utterance on: now when no
        utterance is open, else when it ends (its final keeps the settings it started with). The audio
        format cannot change mid-stream (ConfigError). Returns whether the settings apply now."""
        old = self.config.streaming_params
        new = config.streaming_params
        for name in ("encoding", "sample_rate"):
            if getattr(new, name) != getattr(old, name):
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
        ending = self._end_on_silence if end_on_silence is None else end_on_silence
        ue_samples = self._utterance_end
        ue = (
            (None if ue_samples is None else ue_samples * 1000 // SAMPLE_RATE)
            if utterance_end_ms == -1
            else (utterance_end_ms)
        )
        if self._ep.in_speech:
            self._next = (config, ending, ue)
            return False
        self._next = None
        self._apply(config, ending, ue)
        return True

    def clear(self) -> list[Action]:
        """Drop the open utterance without transcribing it (its partial, if any, goes stale)."""
        if self._ep.in_speech:
            self._ep.close()
            self._frame_probs = []
            self._floor = self._buf_end
            self._segment += 1
            self._utterance_language = None
            self._last_piece = None
            self._apply_pending()
        self._trim(self._buf_end - self._pad)
        return []

    def _apply_pending(self) -> None:
        if self._next is not None:
            self._apply(*self._next)
            self._next = None

    # -- properties ------------------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        """Whether an utterance is open (speech started and has not ended yet)."""
        return self._ep.in_speech

    @property
    def received_s(self) -> float:
        return (self._buf_start + self._buf_len) / SAMPLE_RATE

    @property
    def lag_s(self) -> float:
        """How far transcription is behind this stream: received audio after the oldest speech still owed a
        final (an outstanding final's window, or the open segment) that no sent message covers yet. A pause
        between utterances is never lag, however long."""
        owed = [p.start_s for p in self._inflight.values() if p.kind == "final"]
        if self._ep.in_speech:
            owed.append(self._seg_start / SAMPLE_RATE)
        if not owed:
            return len(self._tail) / SAMPLE_RATE
        return self.received_s - max(self._covered_s, min(owed))

    # -- events ------------------------------------------------------------------------------------------

    @property
    def vad(self) -> SpeechProbability:
        """The speech-probability model this session's audio goes through (a driver may batch it)."""
        return self._vad

    @property
    def accepting_audio(self) -> bool:
        """False after end_audio: more audio only gets a recoverable error (`feed_audio`)."""
        return not self._ending

    @property
    def finals_in_flight(self) -> int:
        """Finals requested and not yet sent: a driver stops reading audio at its cap (backpressure)."""
        return self._delivery.outstanding

    def feed_audio(self, data: bytes, now: float) -> list[Action]:
        """Audio bytes in, actions out, with the session's own VAD (`take_frames` + `on_frames` in one)."""
        if self._ending:
            return [self._error("STREAM_ERROR", "audio after end_audio is ignored", True, now)]
        frames = self.take_frames(data)
        return self.on_frames(frames, self._vad(frames)) if len(frames) else []

    def take_frames(self, data: bytes) -> np.ndarray:
        """Decode and resample audio bytes into whole VAD frames [n, 512]; the remainder waits for more.

        The costly half of `feed_audio`, separable so a driver can run it off the event loop and batch the
        VAD of many streams before `on_frames`."""
        return self._split(self._decoder.decode(data))

    def _split(self, samples: np.ndarray) -> np.ndarray:
        if len(self._tail):
            samples = np.concatenate([self._tail, samples])
        n = len(samples) // FRAME
        self._tail = samples[n * FRAME :].copy()
        return samples[: n * FRAME].reshape(n, FRAME)

    def on_frames(self, frames: np.ndarray, probs: np.ndarray) -> list[Action]:
        """Whole frames from `take_frames` with their speech probabilities, in stream order."""
        actions: list[Action] = []
        for frame, p in zip(frames, probs, strict=True):
            actions += self._on_frame(frame, float(p))
        return actions

    def add_processing_time(self, seconds: float) -> None:
        """Time the caller measured for feed_audio (decoding + VAD): reported with include_timing_info."""
        self._processing_s += seconds

    def handle_text(self, text: str, now: float) -> list[Action]:
        """A text frame after the metadata: a control message, or a recoverable error."""
        if text.strip().lower() == "finalize":  # pipecat's bare flush signal
            return self.finalize()
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser goes
            return [
                self._error(
                    "STREAM_ERROR",
                    'text frame is not valid JSON; send a control message such as {"type": "end_audio"}',
                    True,
                    now,
                )
            ]
        if not isinstance(msg, dict):
            return [self._error("STREAM_ERROR", "control message must be a JSON object", True, now)]
        if msg.get("terminate_session") is True:  # LiveKit's end-of-stream signal
            return self.end_audio(now)
        kind = msg.get("type")
        trace_id = msg.get("trace_id")
        if not (
            trace_id is None or isinstance(trace_id, (str, int)) and len(str(trace_id)) <= TRACE_ID_CHARS
        ):
            message = f"trace_id must be a string of at most {TRACE_ID_CHARS} characters"
            return [self._error("STREAM_ERROR", message, True, now)]
        if kind == "end_audio":
            return self.end_audio(now, trace_id)
        if kind == "finalize":
            return self.finalize()
        if kind == "health_check":
            return [Send(messages.health(trace_id, now, self.stream_id, self.lag_s))]
        if kind == "update_config":
            return self._update_from_message(msg, now)
        return [
            self._error(
                "STREAM_ERROR",
                f"unknown control message type {short(kind)}; expected one of "
                "'end_audio', 'finalize', 'health_check', 'update_config'",
                True,
                now,
            )
        ]

    def _update_from_message(self, msg: dict[str, Any], now: float) -> list[Action]:
        """Baseten protocol: `{"type": "update_config", "body": {<metadata keys to change>}}`."""
        try:
            config = merge_update(self.config, msg.get("body"))
            applied = self.update_config(config)
        except ConfigError as exc:
            return [self._error("CONFIGURATION_ERROR", str(exc), True, now, field=exc.field)]
        status = "applied" if applied else "pending_utterance_end"
        return [Send(messages.update_config(status, msg.get("trace_id")))]

    def end_audio(self, now: float, trace_id: Any = None) -> list[Action]:
        if self._ending:
            return []
        return [Send(messages.end_audio("acknowledged", trace_id)), *self._end()]

    def shutdown(self) -> list[Action]:
        """The server is going away: the speech so far becomes its final, then Close(1001) once every final
        is sent (a stream already ending after end_audio finishes as usual)."""
        if self._ending:
            return []
        self._going_away = True
        return self._end()

    def _end(self) -> list[Action]:
        actions: list[Action] = []
        frames = self._split(self._decoder.flush())
        actions += self.on_frames(frames, self._vad(frames)) if len(frames) else []
        if len(self._tail):
            padded = np.zeros(FRAME, dtype=np.float32)
            padded[: len(self._tail)] = self._tail
            self._tail = np.zeros(0, dtype=np.float32)
            actions += self._on_frame(padded, float(self._vad(padded[None, :])[0]))
        self._ending = True
        if self._ep.in_speech:
            actions += self._close_segment(self._flush_end(), flush=True, urgent=True, cause="end_of_audio")
        return actions + self._maybe_finish()

    def finalize(self) -> list[Action]:
        """Turn the speech so far into a final now; the stream stays open.

        Less speech than `MIN_SPEECH_FRAMES` is not dropped (as the endpoint drops a click): the segment stays
        open, so a client that flushes often never loses the start of a word."""
        if not self._ep.in_speech or self._ep.speech_frames < MIN_SPEECH_FRAMES:
            return []
        return self._close_segment(self._flush_end(), urgent=True, cause="finalize")

    def finalize_turn(self) -> tuple[list[Action], bool]:
        """`finalize`, and whether a final for the flushed speech is on its way: requested now, a speculative
        decode confirmed (its result may come later), or sent in these actions. Protocols that answer every
        flush (Deepgram's `Finalize`, OpenAI's `commit`) answer at once, empty, only when none is."""
        before = self._delivery.outstanding
        actions = self.finalize()
        sent = any(isinstance(a, Send) and a.message.get("is_final") is True for a in actions)
        return actions, sent or self._delivery.outstanding > before

    def answer_flush_with_outstanding(self) -> bool:
        """A flush with nothing of its own to finalize, while the latest final is still on its way (its
        endpoint came just before): that final answers it (`TranscriptInfo.answers_flush`), so an empty
        answer sent now does not overtake it. False when no final is outstanding."""
        last = self._delivery.last()
        if last is None:
            return False
        pending = self._inflight.get(last)
        if pending is None:
            done = self._delivery.waiting(last)  # decoded, held behind an earlier final
            pending = done.pending if done is not None else None
        if pending is None:
            return False
        pending.answers_flush = True
        return True

    def _flush_end(self) -> int:
        """Where a flush closes the segment: at the speculative window if only silence followed it."""
        spec = self._spec
        if spec is not None and self._ep.silence_start == spec.silence_start:
            return spec.end
        return self._buf_end

    def on_result(
        self,
        request_id: int,
        result: TranscribeResult | None,
        error: str | None,
        now: float,
        timing: dict[str, float] | None = None,
    ) -> list[Action]:
        """An engine answer (`result`), a failure (`error`), or a shed partial (both None).

        `timing` (queue_s, model_s) is what the scheduler measured; sent with include_timing_info."""
        pending = self._inflight.pop(request_id, None)
        if pending is None:
            return []
        if pending.kind == "partial":
            self._partial_inflight = None
            if result is None:
                return [self._error("TRANSCRIPTION_ERROR", error, True, now)] if error else []
            return self._on_partial(pending, result, timing)
        promoted = self._promoted.pop(request_id, None)
        if pending.speculative and promoted is None:  # not confirmed yet
            spec = self._spec
            if spec is not None and spec.transcribe.request_id == request_id:
                if result is not None:
                    spec.done = _Done(pending, result, None, timing)
                else:  # shed or failed: the endpoint will ask for the final as usual
                    self._spec = None
            return []
        if promoted is not None and result is None and error is None:
            # shed before the confirmation reached the scheduler: decode it now, as a final
            pending.speculative = False
            self._inflight[request_id] = pending
            return [promoted]
        if (
            result is not None
            and pending.continues
            and self._ep.in_speech
            and self._segment == pending.segment + 1
        ):
            self._utterance_language = self._utterance_language or (result.language, result.language_prob)
        return self._deliver(self._delivery.complete(request_id, _Done(pending, result, error, timing)), now)

    def partial_wanted(self, request_id: int) -> bool:
        """Whether a queued partial is still worth running (its utterance is still going on)."""
        pending = self._inflight.get(request_id)
        return bool(pending) and self._ep.in_speech and pending.segment == self._segment and not self._ending

    def speculative_wanted(self, request_id: int) -> bool:
        """Whether a queued speculative final is still worth running (speech has not resumed)."""
        spec = self._spec
        return (spec is not None and spec.transcribe.request_id == request_id) or request_id in self._promoted

    def speculative_confirmed(self, request_id: int) -> bool:
        """Whether a queued speculative final has been confirmed: it is now a final, never shed."""
        return request_id in self._promoted

    # -- endpointing -----------------------------------------------------------------------------------

    @property
    def _buf_end(self) -> int:
        return self._buf_start + self._buf_len

    def _append(self, frame: np.ndarray) -> None:
        if self._buf_len + len(frame) > len(self._buf):
            self._trim(self._buf_end - (len(self._buf) - len(frame)))
        self._buf[self._buf_len : self._buf_len + len(frame)] = frame
        self._buf_len += len(frame)

    def _trim(self, keep_from: int) -> None:
        """Drop buffered audio before stream sample `keep_from`."""
        drop = min(max(0, keep_from - self._buf_start), self._buf_len)
        if drop:
            self._buf[: self._buf_len - drop] = self._buf[drop : self._buf_len]
            self._buf_len -= drop
            self._buf_start += drop

    def _audio(self, start: int, end: int) -> np.ndarray:
        return self._buf[start - self._buf_start : end - self._buf_start].copy()

    def _on_frame(self, frame: np.ndarray, p: float) -> list[Action]:
        frame_start = self._buf_end
        self._append(frame)
        if not self._use_vad:
            return self._on_fixed_frame(p)
        was_in_speech = self._ep.in_speech
        event = self._ep.push(p, frame_start)
        if not was_in_speech:
            if event == "start":
                self._seg_start = max(self._floor, self._buf_start, frame_start - self._pad)
                self._since_partial = self._buf_end - self._seg_start
                self._frame_probs = [p]
                if self._events:
                    return [Event("speech_started", frame_start / SAMPLE_RATE)]
            else:
                self._trim(self._buf_end - self._pad)  # keep only what pre-padding may need
                return self._utterance_end_event()
            return []
        self._frame_probs.append(p)
        if self._spec is not None and self._ep.silence_start != self._spec.silence_start:
            self._drop_spec()  # speech resumed: the speculative result is never sent
        if event == "end":
            assert self._ep.silence_start is not None
            end = min(self._buf_end, self._ep.silence_start + self._pad)
            stopped: list[Action] = [Event("speech_stopped", end / SAMPLE_RATE)] if self._events else []
            return stopped + self._close_segment(end, cause="endpoint")
        actions: list[Action] = []
        if self._buf_end - self._seg_start >= self._max_samples:
            actions += self._forced_cut()
        if self._speculate and self._ep.silence_start is not None and not self._ending:
            actions += self._maybe_speculate(self._ep.silence_start)
        if self._pause_due():
            actions += self._pause_cut()
        self._since_partial += FRAME
        if (
            self._partials
            and self._ep.in_speech
            and self._ep.speech_frames >= MIN_SPEECH_FRAMES  # not a segment of silence after a cut
            and self._partial_inflight is None
            and self._since_partial >= self._partial_every
            and not self._ending
            and self._lag_allows_partials()  # last: it is the costly one
        ):
            actions.append(self._request("partial", self._seg_start, self._buf_end))
        return actions

    def _on_fixed_frame(self, p: float) -> list[Action]:
        """enable_vad false: fixed-length segments, but a segment the VAD heard no speech in is discarded."""
        if not self._ep.in_speech:
            self._ep.open()
            self._seg_start, self._frame_probs, self._since_partial = self._buf_end - FRAME, [], 0
        self._frame_probs.append(p)
        self._ep.speech_frames += p >= self._threshold
        self._since_partial += FRAME
        if self._buf_end - self._seg_start >= self._max_samples:
            return self._close_segment(self._buf_end, cause="max_duration")
        if (
            self._partials
            and self._ep.speech_frames
            and self._partial_inflight is None
            and self._since_partial >= self._partial_every
            and self._lag_allows_partials()
        ):
            return [self._request("partial", self._seg_start, self._buf_end)]
        return []

    def _lag_allows_partials(self) -> bool:
        return self._max_partial_lag_s is None or self.lag_s <= self._max_partial_lag_s

    def _forced_cut(self) -> list[Action]:
        """Final for the first part of a too-long segment, cut at its quietest recent frame."""
        n = len(self._frame_probs)
        first_frame_start = self._buf_end - n * FRAME
        search = min(n - 1, int(CUT_SEARCH_S * SAMPLE_RATE) // FRAME)
        window = self._frame_probs[n - 1 - search : n - 1] or self._frame_probs[:1]
        quietest = n - 1 - search + int(np.argmin(window)) if search else n - 1
        cut = first_frame_start + quietest * FRAME + FRAME // 2
        cut = max(self._seg_start + SAMPLE_RATE, min(cut, self._buf_end))
        t = self._request("final", self._seg_start, cut, continues=True, cause="max_duration")
        actions: list[Action] = [t]
        self._last_piece = (t.request_id, self._inflight[t.request_id])
        self._floor = cut
        self._segment += 1
        self._seg_start = cut
        self._frame_probs = self._frame_probs[quietest:]
        # the rest is judged by its own speech: an utterance that ended just before the cut leaves silence
        self._ep.speech_frames = sum(q >= self._threshold for q in self._frame_probs)
        self._since_partial = self._buf_end - cut
        if self._ep.silence_start is not None and self._ep.silence_start < cut:
            self._ep.silence_start = cut
        self._drop_spec()  # its window started before the cut
        return actions

    def _maybe_speculate(self, silence_start: int) -> list[Action]:
        """The final's decode, started at the silence run's first frame (once its padding has arrived)."""
        end = silence_start + self._pad
        if (
            self._spec_run == silence_start  # one try per silence run (a shed one is not retried)
            or self._ep.speech_frames < MIN_SPEECH_FRAMES
            or self._buf_end < end
            or end <= self._seg_start
        ):
            return []
        self._spec_run = silence_start
        t = self._request("speculative", self._seg_start, end)
        self._spec = _Spec(t, self._inflight[t.request_id], silence_start, self._seg_start, end)
        return [t]

    def _drop_spec(self) -> None:
        if self._spec is not None:
            self._inflight.pop(self._spec.transcribe.request_id, None)  # a late result is ignored
            self._spec = None

    def _close_segment(
        self, end: int, flush: bool = False, urgent: bool = False, cause: Cause | None = None
    ) -> list[Action]:
        start = self._seg_start
        speech_frames = self._ep.speech_frames
        self._ep.close()
        self._frame_probs = []
        self._floor = end
        actions: list[Action] = []
        ready: list[_Done] = []
        # after a cut, even a short last word is speech of an utterance that passed the click test
        tail = self._last_piece is not None and speech_frames > 0
        if (speech_frames >= MIN_SPEECH_FRAMES or tail) and end > start:
            actions, ready = self._final(start, end, flush=flush, urgent=urgent, cause=cause)
            self._segment += 1
            self._speech_end = end
        else:
            self._drop_spec()
            if self._last_piece is not None:  # only silence (or a click) after a cut: its final ends the turn
                actions += self._piece_ends_utterance(cause, flush)
                self._speech_end = end
        self._last_piece = None
        self._utterance_language = None
        self._trim(max(end, self._buf_end - self._pad))
        self._apply_pending()
        return actions + (self._deliver(ready, 0.0) if ready else [])

    def _final(
        self,
        start: int,
        end: int,
        *,
        flush: bool = False,
        urgent: bool = False,
        cause: Cause | None = None,
        continues: bool = False,
    ) -> tuple[list[Action], list[_Done]]:
        """The final of [start, end): the speculative decode if it has exactly this window and these options
        (-> finals ready to leave), else a new request (-> its action)."""
        spec, self._spec = self._spec, None
        if (
            spec is not None
            and (spec.start, spec.end) == (start, end)
            and (spec.transcribe.request.options, spec.pending.known_language) == self._options_for("final")
        ):
            spec.pending.cause, spec.pending.continues = cause, continues
            self._last_piece = (spec.transcribe.request_id, spec.pending) if continues else None
            if continues and spec.done is not None and spec.done.result is not None:
                done = spec.done.result  # decoded before the cut: the utterance's language, as on_result
                self._utterance_language = self._utterance_language or (done.language, done.language_prob)
            return [], self._confirm(spec, flush, urgent)
        if spec is not None:
            self._inflight.pop(spec.transcribe.request_id, None)
        t = self._request("final", start, end, flush=flush, urgent=urgent, cause=cause, continues=continues)
        self._last_piece = (t.request_id, self._inflight[t.request_id]) if continues else None
        return [t], []

    def _pause_due(self) -> bool:
        """Whether a pause of `PAUSE_FINAL_MS` has come in a segment of `pause_final_after_s` or more."""
        s = self._ep.silence_start
        return (
            self._pause_after > 0
            and self._end_on_silence  # client-committed turns: only the client ends a final
            and s is not None
            and not self._ending
            and s - self._seg_start >= self._pause_after
            and (self._buf_end - s) // FRAME >= self._pause_frames
            and self._buf_end >= s + self._pad
            and self._ep.speech_frames >= MIN_SPEECH_FRAMES
        )

    def _pause_cut(self) -> list[Action]:
        """A long segment's final at a pause, at the window its speculative decode was started for; the
        utterance goes on in the next segment, which starts with the pause's silence so far."""
        s = self._ep.silence_start
        assert s is not None
        end = s + self._pad
        actions, ready = self._final(self._seg_start, end, cause="pause", continues=True)
        self._segment += 1
        self._floor = self._seg_start = end
        self._frame_probs = self._frame_probs[-((self._buf_end - s) // FRAME) :]
        self._ep.speech_frames = 0  # the pause's frames are all below the threshold
        self._since_partial = self._buf_end - end
        self._trim(end)
        return actions + (self._deliver(ready, 0.0) if ready else [])

    def _piece_ends_utterance(self, cause: Cause | None, flush: bool) -> list[Action]:
        """The utterance ended with nothing after its last cut. Still on its way, that piece becomes the
        utterance's last final (the end's cause; the end_audio flush mark). Already sent: an empty final
        carries the flush mark (as any flush final is marked, even empty), or, for protocols with turn
        signals, an empty final event carries the cause."""
        assert self._last_piece is not None
        rid, piece = self._last_piece
        piece.cause, piece.continues, piece.flush = cause, False, piece.flush or flush
        if self._delivery.last() == rid:
            return []
        end_s = self._floor / SAMPLE_RATE
        info = TranscriptInfo("final", self._segment, end_s, end_s, cause, False)
        if flush:
            language = self._last_language or piece.options.language or ""
            msg = _empty_flush_final(self._segment, language, None, 0.0)
            self._segment += 1
            return [Send(msg, info)]
        return [Event("final_empty", end_s, info)] if self._events else []

    def _utterance_end_event(self) -> list[Action]:
        """utterance_end once enough audio without speech followed the last utterance, its finals all sent."""
        if (
            self._utterance_end is None
            or self._speech_end is None
            or self._delivery.outstanding
            or self._buf_end - self._speech_end < self._utterance_end
        ):
            return []
        end, self._speech_end = self._speech_end, None
        return [Event("utterance_end", end / SAMPLE_RATE)] if self._events else []

    def _confirm(self, spec: _Spec, flush: bool, urgent: bool) -> list[_Done]:
        """The speculative final becomes the segment's final: finals now ready to leave, in order."""
        rid = spec.transcribe.request_id
        spec.pending.flush = flush
        spec.pending.processing_s, self._processing_s = self._processing_s, 0.0
        self._delivery.expect(rid)
        if spec.done is not None:
            return self._delivery.complete(rid, spec.done)
        self._promoted[rid] = replace(
            spec.transcribe, kind="final", urgent=urgent, continues=spec.pending.continues
        )
        return []

    def _options_for(
        self, kind: Literal["partial", "final", "speculative"]
    ) -> tuple[DecodeOptions, tuple[str, float | None] | None]:
        """The decoding options a request made now gets, and the language it reuses (if any)."""
        options = self._partial_options if kind == "partial" else self._options
        known = None
        if options.language is None and not self._chunk_language and self._utterance_language:
            known = self._utterance_language  # a later chunk of the same utterance keeps its language
            options = replace(options, language=known[0])
        elif options.language is None and self._last_language:
            options = replace(options, language_hint=self._last_language)
        if self._condition and self._previous_text:
            options = replace(options, prompt=(options.prompt + " " + self._previous_text).strip())
        return options, known

    def _request(
        self,
        kind: Literal["partial", "final", "speculative"],
        start: int,
        end: int,
        flush: bool = False,
        continues: bool = False,
        urgent: bool = False,
        cause: Cause | None = None,
    ) -> Transcribe:
        rid = self._next_id
        self._next_id += 1
        options, known = self._options_for(kind)
        pending = _Pending(
            "partial" if kind == "partial" else "final",
            self._segment,
            start / SAMPLE_RATE,
            end / SAMPLE_RATE,
            self._options,
            flush,
            continues,
            known,
            self._processing_s,
            cause,
            speculative=kind == "speculative",
        )
        if kind == "final":
            self._processing_s = 0.0
        self._inflight[rid] = pending
        audio = self._audio(start, end)
        if self._normalize:
            audio = normalize_loudness(audio)
        if kind == "final":
            self._delivery.expect(rid)
        elif kind == "partial":
            self._partial_inflight = rid
            self._since_partial = 0
        return Transcribe(
            rid,
            kind,
            TranscribeRequest(audio, options),
            self._segment,
            pending.start_s,
            pending.end_s,
            urgent,
            continues,
        )

    # -- results -----------------------------------------------------------------------------------------

    def _message(
        self, pending: _Pending, result: TranscribeResult, is_final: bool, timing: dict[str, float] | None
    ) -> dict[str, Any] | None:
        language, language_prob = result.language, result.language_prob
        if pending.known_language is not None:
            language, language_prob = pending.known_language
        o = pending.options
        segs = [
            messages.segment_dict(seg, pending.start_s, language, language_prob, flagged, o.word_timestamps)
            for seg, flagged in filter_segments(result.segments, o.prompt)
        ]
        if not segs and not o.language_detection_only:
            return None
        self._covered_s = max(self._covered_s, pending.end_s)
        if is_final and segs:
            self._last_language = language
        if is_final and self._condition:
            text = " ".join(s["text"] for s in segs)
            self._previous_text = (self._previous_text + " " + text).strip()[-PREVIOUS_TEXT_CHARS:]
        extra: dict[str, Any] = {}
        if self._timing and timing is not None:
            extra["timing_info"] = {
                **timing,
                "audio_processing_s": round(pending.processing_s, 4),
                "speculative": pending.speculative,
            }
        return messages.transcription(
            is_final=is_final,
            number=pending.segment,
            segments=segs,
            language=language,
            language_prob=language_prob,
            audio_length_s=pending.end_s - pending.start_s,
            lag_s=self.received_s - pending.end_s,
            flush=pending.flush,
            **extra,
        )

    def _on_partial(
        self, pending: _Pending, result: TranscribeResult, timing: dict[str, float] | None
    ) -> list[Action]:
        stale = not self._ep.in_speech or pending.segment != self._segment or self._ending
        if stale:
            log.debug("stale partial dropped (segment %d, open %d)", pending.segment, self._segment)
            return []
        if self._skip_hallucinated_partials and any(possible_hallucination(s) for s in result.segments):
            log.debug("partial skipped as possible hallucination: %s", result.segments)
            return []
        if self._delivery.outstanding:  # earlier finals still on their way: the partial waits behind them
            self._delivery.hold(_Done(pending, result, None, timing))
            return []
        msg = self._message(pending, result, is_final=False, timing=timing)
        if msg is None:
            return []
        return [Send(msg, self._info(pending))]

    def _info(self, pending: _Pending) -> TranscriptInfo:
        p = pending
        flushed = p.cause == "finalize" or p.answers_flush
        return TranscriptInfo(p.kind, p.segment, p.start_s, p.end_s, p.cause, flushed)

    def _deliver(self, finals: list[_Done], now: float) -> list[Action]:
        actions: list[Action] = []
        for done in finals:
            if done.result is None:
                actions.append(
                    self._error(
                        "TRANSCRIPTION_ERROR",
                        done.error or "transcription failed",
                        True,
                        now,
                        start_time=done.pending.start_s,
                        end_time=done.pending.end_s,
                    )
                )
                continue
            msg = self._message(done.pending, done.result, is_final=True, timing=done.timing)
            if msg is None and done.pending.flush:  # the flush is always marked, even when it is empty
                p, r = done.pending, done.result
                msg = _empty_flush_final(p.segment, r.language, r.language_prob, p.end_s - p.start_s)
            if msg is not None:
                actions.append(Send(msg, self._info(done.pending)))
            elif self._events:
                actions.append(Event("final_empty", done.pending.end_s, self._info(done.pending)))
        held = self._delivery.release_held()
        if held is not None and held.result is not None:
            if self._ep.in_speech and held.pending.segment == self._segment and not self._ending:
                msg = self._message(held.pending, held.result, is_final=False, timing=held.timing)
                if msg is not None:
                    actions.append(Send(msg, self._info(held.pending)))
        if not self._ep.in_speech and not self._ending:
            actions += self._utterance_end_event()
        return actions + self._maybe_finish()

    def _maybe_finish(self) -> list[Action]:
        if self._ending and not self._delivery.outstanding and not self.finished:
            self.finished = True
            if self._going_away:
                return [Close(1001, "server is shutting down")]
            return [Send(messages.end_audio("finished")), Close(1000, "end of audio")]
        return []

    def _error(self, kind: str, message: str, recoverable: bool, now: float, **extra: Any) -> Send:
        return Send(
            messages.error(kind, message, stream_id=self.stream_id, recoverable=recoverable, now=now, **extra)
        )


def _empty_flush_final(number: int, language: str, prob: float | None, audio_s: float) -> dict[str, Any]:
    """A final without text that still carries the end_audio flush mark (a flush is always answered)."""
    return messages.transcription(
        is_final=True,
        number=number,
        segments=[],
        language=language,
        language_prob=prob,
        audio_length_s=audio_s,
        lag_s=0.0,
        flush=True,
    )
