"""The benchmark's measurements, as pure functions of what one stream sent and received (no I/O, no clock).

All times are on the client's monotonic clock, in seconds since the stream's first frame (`Received.t`,
`StreamResult.audio_sent_s`); stream times (`start_time`/`end_time`, `speech_ends`) are seconds of audio.

Definitions (docs/benchmarks.md repeats them):
- end of speech: the stream time where an utterance's speech ends (`join_utterances(...).speech_ends`; the
  benchmark trims each recording by a fixed energy rule and follows it with digital silence, so it is the
  trimmed recording's last sample: exact, and found without the server's VAD).
- end-of-speech -> final latency: arrival of the first final whose last segment ends at or after the
  utterance's end minus `tolerance_s` (and which starts before that end, so a later utterance's final never
  counts), minus the wall time at which the speech ended: frames are sent as a live source sends them, once
  their last sample is captured, so that is the send time of the frame holding it less the audio after it.
- time to first partial: arrival of the first partial of the utterance (any of its pieces, when the server
  split it into several finals) minus the wall time at which its first sample was captured, as above.
- percentiles: nearest rank (the smallest value with at least q % of the values at or below it): at n = 4
  a p95 is the slowest utterance.
- partial cadence: the wall-clock intervals between consecutive partials of one utterance.
- unstable partial words: words shown in partials that the final does not keep, found by aligning each
  normalised partial with the normalised final (difflib); every showing of a word counts once.
- server lag: `server_lag_s` as the server reports it where it does; the client's own estimate, for any
  server, is the audio sent when a transcription arrives minus the stream time its last segment ends.
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from client.protocol import Received, is_transcription

TOLERANCE_S = 0.5  # Whisper's segment ends are 20 ms-quantised and often stop a little before the audio does


@dataclass(frozen=True)
class Transcription:
    """One transcription frame, reduced to what the metrics need."""

    t: float
    is_final: bool
    num: int | None
    segments: tuple[tuple[float, float, str], ...]  # (start_time, end_time, text)
    server_lag_s: float | None

    @property
    def start_s(self) -> float | None:
        return self.segments[0][0] if self.segments else None

    @property
    def end_s(self) -> float | None:
        return self.segments[-1][1] if self.segments else None

    @property
    def text(self) -> str:
        return " ".join(s[2].strip() for s in self.segments if s[2].strip())


def transcriptions(received: Sequence[Received]) -> list[Transcription]:
    out = []
    for r in received:
        m = r.message
        if not is_transcription(m):
            continue
        segs = tuple(
            (float(s["start_time"]), float(s["end_time"]), str(s.get("text", "")))
            for s in m.get("segments") or []
        )
        lag = m.get("server_lag_s")
        out.append(
            Transcription(
                r.t,
                is_transcription(m, final=True),
                m.get("transcription_num"),
                segs,
                None if lag is None else float(lag),
            )
        )
    return out


def speech_time_at(audio_sent: Sequence[tuple[float, float]], stream_s: float) -> float | None:
    """Wall time at which stream time `stream_s` was captured (None if its frame was never sent): the send
    time of the frame holding it, less the audio after it in that frame (frames leave when complete)."""
    audio = [a for _, a in audio_sent]
    i = bisect.bisect_left(audio, stream_s - 1e-9)
    return audio_sent[i][0] - (audio_sent[i][1] - stream_s) if i < len(audio_sent) else None


def audio_sent_at(audio_sent: Sequence[tuple[float, float]], t: float) -> float:
    """Seconds of audio the client had sent by wall time `t`."""
    times = [w for w, _ in audio_sent]
    i = bisect.bisect_right(times, t)
    return audio_sent[i - 1][1] if i else 0.0


def match_final(
    finals: Sequence[Transcription], start_s: float, end_s: float, tolerance_s: float = TOLERANCE_S
) -> Transcription | None:
    """The first final (in arrival order) that covers the utterance's end; see the module's definitions."""
    for f in finals:
        if not f.is_final or not f.segments:
            continue
        if f.segments[-1][1] >= end_s - tolerance_s and f.segments[0][0] < end_s:
            return f
    return None


def _overlaps(f: Transcription, start: float, end: float) -> bool:
    return bool(f.segments) and f.segments[0][0] < end and f.segments[-1][1] > start


def assign_segments(
    finals: Sequence[Transcription], starts: Sequence[float], ends: Sequence[float]
) -> list[str]:
    """Each final segment's text goes to the utterance whose time slot holds the segment's midpoint.

    Slots split the pauses in the middle, so a segment Whisper timed a little early or late still lands on
    its utterance. Returns one hypothesis per utterance (empty where nothing was transcribed).
    """
    bounds = [(ends[i] + starts[i + 1]) / 2 for i in range(len(starts) - 1)]
    texts: list[list[str]] = [[] for _ in starts]
    for f in finals:
        if not f.is_final:
            continue
        for s, e, text in f.segments:
            if text.strip():
                texts[bisect.bisect_right(bounds, (s + e) / 2)].append(text.strip())
    return [" ".join(t) for t in texts]


def unstable_words(partials: Sequence[str], final: str, normalize: Callable[[str], str]) -> tuple[int, int]:
    """(words shown in partials that the final changed or dropped, words shown in partials)."""
    final_words = normalize(final).split()
    unstable = shown = 0
    for p in partials:
        words = normalize(p).split()
        matcher = difflib.SequenceMatcher(None, words, final_words, autojunk=False)
        kept = sum(b.size for b in matcher.get_matching_blocks())
        shown += len(words)
        unstable += len(words) - kept
    return unstable, shown


@dataclass
class UtteranceMetrics:
    stream: int
    index: int
    id: str
    start_s: float
    end_s: float
    reference: str
    hypothesis: str = ""
    final_num: int | None = None
    final_arrival_s: float | None = None
    latency_s: float | None = None
    first_partial_s: float | None = None
    partials: int = 0
    partial_intervals_s: list[float] = field(default_factory=list)
    unstable_words: int = 0
    partial_words: int = 0
    scored: bool = True  # counted in WER (False: the reference is another recogniser's output)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def utterance_metrics(
    received: Sequence[Received],
    audio_sent: Sequence[tuple[float, float]],
    utterances: Sequence[tuple[str, str]],  # (id, reference)
    starts: Sequence[float],
    ends: Sequence[float],
    *,
    normalize: Callable[[str], str],
    stream: int = 0,
    tolerance_s: float = TOLERANCE_S,
) -> list[UtteranceMetrics]:
    """Every per-utterance number of one stream (see the module's definitions)."""
    frames = transcriptions(received)
    finals = [f for f in frames if f.is_final]
    hypotheses = assign_segments(finals, starts, ends)
    out = []
    for i, ((uid, ref), start, end) in enumerate(zip(utterances, starts, ends, strict=True)):
        u = UtteranceMetrics(stream, i, uid, start, end, ref, hypotheses[i])
        final = match_final(finals, start, end, tolerance_s)
        if final is not None:
            u.final_num, u.final_arrival_s = final.num, final.t
            speech_end = speech_time_at(audio_sent, end)
            if speech_end is not None:
                u.latency_s = final.t - speech_end
            partials = [p for p in frames if not p.is_final and p.num == final.num and p.t <= final.t]
            u.partials = len(partials)
            # its first piece's partials too, when the server cut the utterance into several finals
            first_num = min([f.num for f in finals if _overlaps(f, start, end)] + [final.num])
            shown = [
                p for p in frames if not p.is_final and first_num <= p.num <= final.num and p.t <= final.t
            ]
            onset = speech_time_at(audio_sent, start)
            if shown and onset is not None:
                u.first_partial_s = shown[0].t - onset
            u.partial_intervals_s = [b.t - a.t for a, b in zip(partials, partials[1:], strict=False)]
            texts = [p.text for p in partials]
            u.unstable_words, u.partial_words = unstable_words(texts, final.text, normalize)
        out.append(u)
    return out


def lag_series(
    received: Sequence[Received], audio_sent: Sequence[tuple[float, float]]
) -> list[dict[str, Any]]:
    """Per transcription frame: arrival time, audio sent by then, the server's and the client's lag."""
    out = []
    for f in transcriptions(received):
        sent = audio_sent_at(audio_sent, f.t)
        out.append(
            {
                "t": round(f.t, 4),
                "audio_sent_s": round(sent, 4),
                "server_lag_s": f.server_lag_s,
                "client_lag_s": None if f.end_s is None else round(max(0.0, sent - f.end_s), 4),
                "is_final": f.is_final,
            }
        )
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest rank (see the module's definitions): always one of the measured values, never interpolated."""
    vals = [v for v in values if v is not None]
    return float(np.percentile(vals, q, method="inverted_cdf")) if vals else None


def summarize(utterances: Sequence[UtteranceMetrics], wer: float | None) -> dict[str, Any]:
    """Aggregates over utterances: latency and first-partial percentiles, cadence, instability, WER."""
    lat = [u.latency_s for u in utterances if u.latency_s is not None]
    first = [u.first_partial_s for u in utterances if u.first_partial_s is not None]
    intervals = [x for u in utterances for x in u.partial_intervals_s]
    shown = sum(u.partial_words for u in utterances)
    return {
        "utterances": len(utterances),
        "finals_matched": len(lat),
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_mean_s": float(np.mean(lat)) if lat else None,
        "latency_max_s": max(lat) if lat else None,
        "first_partial_p50_s": percentile(first, 50),
        "first_partial_p95_s": percentile(first, 95),
        "partials": sum(u.partials for u in utterances),
        "partial_interval_p50_s": percentile(intervals, 50),
        "unstable_partial_word_ratio": sum(u.unstable_words for u in utterances) / shown if shown else None,
        "wer": wer,
    }
