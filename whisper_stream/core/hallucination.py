"""Transcript filtering: signals that a decoded segment is not speech but Whisper inventing text, and what a
transcript keeps of a decode (`filter_segments`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from whisper_stream.engines.interface import (
    COMPRESSION_RATIO_THRESHOLD,
    LOG_PROB_THRESHOLD,
    NO_SPEECH_THRESHOLD,
    Segment,
)


def is_silence(seg: Segment) -> bool:
    """Whisper's own rule for dropping a window as non-speech."""
    return seg.no_speech_prob > NO_SPEECH_THRESHOLD and seg.avg_logprob < LOG_PROB_THRESHOLD


NOISE_NO_SPEECH = 0.2  # with every temperature failing the log-prob check, this much no-speech means noise


def is_invented(seg: Segment) -> bool:
    """Text decoded from non-speech that reached Whisper (e.g. a very low VAD threshold): never sent.

    Stricter than Whisper's rule, which keeps a window whose no-speech probability is high as long as its
    log-prob is fine (the classic "you" on silence), and keeps text when every temperature failed. Real speech
    measured here has no-speech probability below 0.05."""
    if seg.no_speech_prob > NO_SPEECH_THRESHOLD:
        return True
    return seg.avg_logprob < LOG_PROB_THRESHOLD and seg.no_speech_prob > NOISE_NO_SPEECH


def possible_hallucination(seg: Segment) -> bool:
    return (
        seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        or seg.avg_logprob < LOG_PROB_THRESHOLD
        or seg.no_speech_prob > NO_SPEECH_THRESHOLD
        or repeats_long_run(seg.text)
    )


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


# A run of this many words said twice in one window is the decoder re-reading its own output (beam search
# with a length penalty > 1 ranks such a hypothesis first), not speech. Short loops ("words, words, words")
# stay below it and are the compression-ratio check's job; a sentence repeated once compresses too poorly
# for that check (ratio ~1.6 on a 10-word sentence said twice).
REPEATED_RUN_WORDS = 8


def repeats_long_run(text: str, run: int = REPEATED_RUN_WORDS) -> bool:
    """True when some `run` consecutive words (case and punctuation ignored) occur twice in `text`."""
    words = _words(text)
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - run + 1):
        gram = tuple(words[i : i + run])
        if gram in seen:
            return True
        seen.add(gram)
    return False


# An echo of the prompt this long (or the whole prompt) is dropped even when decoded confidently; a shorter
# run of the prompt's words ("Yes.", "And so") only from a decode that is not confident speech: a client's
# prompt may well contain what its speaker then says.
ECHO_MIN_WORDS = 4


def echoes_prompt(seg: Segment, prompt: str) -> bool:
    """The model repeating its prompt instead of transcribing (typical on near-silence)."""
    said, prompted = _words(seg.text), _words(prompt)
    if not said or not prompted:
        return False
    n = len(said)
    if not any(prompted[i : i + n] == said for i in range(len(prompted) - n + 1)):
        return False
    unsure = seg.no_speech_prob > NOISE_NO_SPEECH or seg.avg_logprob < LOG_PROB_THRESHOLD
    return unsure or n >= ECHO_MIN_WORDS or n == len(prompted)  # a long run, or the whole prompt back


def collapse_repetitions(text: str, min_repeats: int = 3, max_ngram: int = 10) -> str:
    """Cut a phrase repeated `min_repeats`+ times in a row down to one occurrence (a decoding loop)."""
    words = text.split()
    keys = [w.lower().strip(".,!?;:") for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        step = 1
        for n in range(1, min(max_ngram, (len(words) - i) // min_repeats) + 1):
            repeats = 1
            while keys[i + repeats * n : i + (repeats + 1) * n] == keys[i : i + n]:
                repeats += 1
            if repeats >= min_repeats:
                step = repeats * n
                out += words[i : i + n]
                break
        else:
            out.append(words[i])
        i += step
    return " ".join(out)


def filter_segments(segments: Sequence[Segment], prompt: str) -> list[tuple[Segment, bool]]:
    """What a transcript keeps of a decode: (segment, possibly hallucinated) for each segment that is not
    empty, invented or an echo of the prompt; a repetition loop that survived the fallback is collapsed."""
    kept = []
    for seg in segments:
        if not seg.text.strip() or is_invented(seg) or echoes_prompt(seg, prompt):
            continue
        flagged = possible_hallucination(seg)
        if seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD:
            seg = replace(seg, text=collapse_repetitions(seg.text))
        kept.append((seg, flagged))
    return kept
