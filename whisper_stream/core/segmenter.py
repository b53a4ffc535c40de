"""Where one stream's finals begin and end: the audio buffer, the endpoint, forced cuts at the maximum
duration, cuts at pauses in long utterances, and the window a speculative final is decoded for.

Positions are stream samples at 16 kHz. `speech_pad_ms` is added on both sides of speech but never reaches
back into audio an earlier final already covered (`floor`), so consecutive finals never share audio. A
segment that reaches `final_transcript_max_duration_s` is cut at its quietest frame near its end, and one
that holds `pause_final_after_s` is cut at a pause of `PAUSE_FINAL_MS`: the speech goes on in the next
segment, so every sample of speech is in exactly one final.

Memory: the buffer holds at most the maximum segment, twice the padding and 4 s (about 2.2 MB for 30 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from whisper_stream.core.endpointer import Endpointer, silence_frames
from whisper_stream.dsp.vad import FRAME
from whisper_stream.engines.interface import SAMPLE_RATE

MIN_SPEECH_FRAMES = 5  # less speech than 160 ms is a click or a breath, not a word: never sent to Whisper
# A pause this long ends a segment that reached `pause_final_after_s`: Silero's own rule for splitting long
# speech (`min_silence_at_max_speech`, 98 ms).
PAUSE_FINAL_MS = 100
CUT_SEARCH_S = 3.0  # a forced cut looks for the quietest frame within the last seconds of the segment
NEVER = 1 << 40  # client-committed turns: no silence is long enough to end one

Step = Literal["idle", "start", "speech", "end"]


@dataclass(frozen=True)
class Rules:
    """The segmentation settings of one stream (from its config; they change only between utterances)."""

    threshold: float = 0.5
    min_silence_ms: int = 300
    speech_pad_ms: int = 30
    max_duration_s: float = 30.0
    pause_after_s: float = 3.0  # 0: no pause cuts
    end_on_silence: bool = True  # False: only a flush (or the maximum duration) ends an utterance
    use_vad: bool = True  # False: fixed-length segments, a segment without speech is discarded


class Segmenter:
    def __init__(self, rules: Rules) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # stream sample of _buf[0]
        self._buf_len = 0
        self.floor = 0  # first sample not yet covered by a final
        self.seg_start = 0  # where the open segment's audio starts (incl. padding)
        self.frame_probs: list[float] = []  # VAD probability per frame of the open segment
        self.apply(rules)

    def apply(self, rules: Rules) -> None:
        """New rules; called between utterances only. The buffer grows for a longer maximum or padding."""
        self.rules = rules
        self.ep = Endpointer(
            rules.threshold, silence_frames(rules.min_silence_ms) if rules.end_on_silence else NEVER
        )
        self.pad = rules.speech_pad_ms * SAMPLE_RATE // 1000
        self.max_samples = int(rules.max_duration_s * SAMPLE_RATE)
        self._pause_after = int(rules.pause_after_s * SAMPLE_RATE)
        self._pause_frames = silence_frames(PAUSE_FINAL_MS)
        size = self.max_samples + 2 * self.pad + 4 * SAMPLE_RATE
        if size > len(self._buf):
            grown = np.zeros(size, dtype=np.float32)
            grown[: self._buf_len] = self._buf[: self._buf_len]
            self._buf = grown

    # -- the buffer ----------------------------------------------------------------------------------------

    @property
    def end(self) -> int:
        """The stream sample after the last one received."""
        return self.buf_start + self._buf_len

    def audio(self, start: int, end: int) -> np.ndarray:
        return self._buf[start - self.buf_start : end - self.buf_start].copy()

    def _append(self, frame: np.ndarray) -> None:
        if self._buf_len + len(frame) > len(self._buf):
            self.trim(self.end - (len(self._buf) - len(frame)))
        self._buf[self._buf_len : self._buf_len + len(frame)] = frame
        self._buf_len += len(frame)

    def trim(self, keep_from: int) -> None:
        """Drop buffered audio before stream sample `keep_from`."""
        drop = min(max(0, keep_from - self.buf_start), self._buf_len)
        if drop:
            self._buf[: self._buf_len - drop] = self._buf[drop : self._buf_len]
            self._buf_len -= drop
            self.buf_start += drop

    # -- frames --------------------------------------------------------------------------------------------

    @property
    def in_speech(self) -> bool:
        return self.ep.in_speech

    @property
    def speech_frames(self) -> int:
        return self.ep.speech_frames

    @property
    def silence_start(self) -> int | None:
        return self.ep.silence_start

    def push(self, frame: np.ndarray, p: float) -> Step:
        """One frame and its speech probability: idle (no utterance), start, speech (going on) or end."""
        frame_start = self.end
        self._append(frame)
        if not self.rules.use_vad:
            return self._fixed(p)
        was_in_speech = self.ep.in_speech
        event = self.ep.push(p, frame_start)
        if not was_in_speech:
            if event == "start":
                self.seg_start = max(self.floor, self.buf_start, frame_start - self.pad)
                self.frame_probs = [p]
                return "start"
            self.trim(self.end - self.pad)  # keep only what pre-padding may need
            return "idle"
        self.frame_probs.append(p)
        return "end" if event == "end" else "speech"

    def _fixed(self, p: float) -> Step:
        started = not self.ep.in_speech
        if started:
            self.ep.open()
            self.seg_start, self.frame_probs = self.end - FRAME, []
        self.frame_probs.append(p)
        self.ep.speech_frames += p >= self.rules.threshold
        return "start" if started else "speech"

    def endpoint_end(self) -> int:
        """Where the endpoint just found closes the segment: its silence's start plus the padding."""
        assert self.ep.silence_start is not None
        return min(self.end, self.ep.silence_start + self.pad)

    def too_long(self) -> bool:
        return self.end - self.seg_start >= self.max_samples

    def close(self, end: int) -> tuple[int, int]:
        """The open segment ends at `end`: its window [start, end), and nothing open."""
        start = self.seg_start
        self.ep.close()
        self.frame_probs = []
        self.floor = end
        return start, end

    def drop(self) -> None:
        """The open segment is dropped untranscribed (a client's clear)."""
        if self.ep.in_speech:
            self.ep.close()
            self.frame_probs = []
            self.floor = self.end
        self.trim(self.end - self.pad)

    def after_close(self, end: int) -> None:
        self.trim(max(end, self.end - self.pad))

    # -- cuts inside an utterance --------------------------------------------------------------------------

    def forced_cut(self) -> tuple[int, int]:
        """A too-long segment's first part [start, cut), cut at its quietest recent frame; the rest of the
        speech is the open segment now, judged by its own speech."""
        n = len(self.frame_probs)
        first_frame_start = self.end - n * FRAME
        search = min(n - 1, int(CUT_SEARCH_S * SAMPLE_RATE) // FRAME)
        window = self.frame_probs[n - 1 - search : n - 1] or self.frame_probs[:1]
        quietest = n - 1 - search + int(np.argmin(window)) if search else n - 1
        cut = first_frame_start + quietest * FRAME + FRAME // 2
        cut = max(self.seg_start + SAMPLE_RATE, min(cut, self.end))
        start = self.seg_start
        self.floor = self.seg_start = cut
        self.frame_probs = self.frame_probs[quietest:]
        # an utterance that ended just before the cut leaves only silence in the rest
        self.ep.speech_frames = sum(q >= self.rules.threshold for q in self.frame_probs)
        if self.ep.silence_start is not None and self.ep.silence_start < cut:
            self.ep.silence_start = cut
        return start, cut

    def speculation_window(self) -> tuple[int, int] | None:
        """The window a final would have if the silence that just began ends the utterance (once its
        padding has arrived), or None."""
        s = self.ep.silence_start
        if s is None or self.ep.speech_frames < MIN_SPEECH_FRAMES:
            return None
        end = s + self.pad
        if self.end < end or end <= self.seg_start:
            return None
        return self.seg_start, end

    def pause_due(self) -> bool:
        """Whether a pause of `PAUSE_FINAL_MS` has come in a segment of `pause_final_after_s` or more."""
        s = self.ep.silence_start
        return (
            self._pause_after > 0
            and self.rules.end_on_silence  # client-committed turns: only the client ends a final
            and s is not None
            and s - self.seg_start >= self._pause_after
            and (self.end - s) // FRAME >= self._pause_frames
            and self.end >= s + self.pad
            and self.ep.speech_frames >= MIN_SPEECH_FRAMES
        )

    def pause_cut(self) -> tuple[int, int]:
        """A long segment's first part, cut at the pause (the speculative window); the next segment starts
        with the pause's silence so far. The caller trims the buffer once it has the first part's audio."""
        s = self.ep.silence_start
        assert s is not None
        start, end = self.seg_start, s + self.pad
        self.floor = self.seg_start = end
        self.frame_probs = self.frame_probs[-((self.end - s) // FRAME) :]
        self.ep.speech_frames = 0  # the pause's frames are all below the threshold
        return start, end
