"""An engine result -> the neutral `Transcript`: what it keeps of the decode
(`hallucination.filter_segments`), in stream time, in the utterance's language."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from whisper_stream.core.events import Cause, Segment, Transcript, Word
from whisper_stream.core.hallucination import filter_segments
from whisper_stream.engines.interface import DecodeOptions, TranscribeResult

if TYPE_CHECKING:
    from whisper_stream.core.inflight import Request


def transcript_of(
    result: TranscribeResult | None,
    *,
    kind: Literal["partial", "final"],
    number: int,
    utterance: int,
    start_s: float,
    end_s: float,
    options: DecodeOptions | None = None,
    known_language: tuple[str, float | None] | None = None,
    language: str = "",
    lag_s: float = 0.0,
    cause: Cause | None = None,
    continues: bool = False,
    answers_flush: bool = False,
    end_of_audio: bool = False,
    timing: dict[str, Any] | None = None,
) -> Transcript:
    """`result` None: an empty transcript (a turn's end with nothing left to decode) in `language`."""
    segments: tuple[Segment, ...] = ()
    prob: float | None = None
    if result is not None:
        language, prob = known_language or (result.language, result.language_prob)
        words = options is not None and options.word_timestamps
        prompt = options.prompt if options is not None else ""
        segments = tuple(
            Segment(
                start_s + seg.start,
                start_s + seg.end,
                seg.text.strip(),
                seg.avg_logprob,
                flagged,
                tuple(Word(w.word.strip(), start_s + w.start, start_s + w.end, w.prob) for w in seg.words)
                if words
                else None,
            )
            for seg, flagged in filter_segments(result.segments, prompt)
        )
    return Transcript(
        kind,
        number,
        utterance,
        start_s,
        end_s,
        segments,
        language,
        prob,
        lag_s,
        cause,
        continues,
        answers_flush,
        end_of_audio,
        options is not None and options.language_detection_only,
        timing,
    )


def transcript_of_request(r: Request, received_s: float, timing: bool) -> Transcript:
    """A decoded request's transcript; `timing`: with the queue, model and audio-processing seconds."""
    assert r.result is not None
    times = None
    if timing and r.timing is not None:
        times = {**r.timing, "audio_processing_s": round(r.processing_s, 4), "speculative": r.speculative}
    t = r.transcribe
    return transcript_of(
        r.result, kind=r.kind, number=t.number, utterance=r.utterance, start_s=t.start_s, end_s=t.end_s,
        options=r.options, known_language=r.known_language, lag_s=received_s - t.end_s, cause=r.cause,
        continues=r.continues, answers_flush=r.answers_flush or r.cause == "finalize",
        end_of_audio=r.end_of_audio, timing=times,
    )  # fmt: skip
