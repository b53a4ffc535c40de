"""Real speech for tests and benchmarks: the manifest, audio loading, streams of joined utterances, WER."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16_000
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: str
    language: str
    duration_s: float
    note: str = ""


def load_manifest(path: Path | str | None = None) -> list[Utterance]:
    manifest = Path(path) if path else DEFAULT_DATA / "manifest.jsonl"
    out = []
    for line in manifest.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(
                Utterance(
                    row["id"],
                    manifest.parent / row["path"],
                    row["text"],
                    row["language"],
                    float(row["duration_s"]),
                    row.get("note", ""),
                )
            )
    return out


def load_audio(path: Path | str, sample_rate: int = SR) -> np.ndarray:
    """Any file PyAV reads (WAV, FLAC, MP3...), any rate and channel count -> mono float32 at sample_rate."""
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=sample_rate)


def to_pcm16(audio: np.ndarray) -> bytes:
    from whisper_stream.audio import encode

    return encode(audio, "pcm_s16le")


@dataclass(frozen=True)
class JoinedStream:
    """Utterances separated by pauses, with stream times of each utterance's speech.

    `speech_starts[i]` / `speech_ends[i]` are where utterance i's speech begins and ends (Silero, default
    settings, on the file alone): recordings carry leading and trailing silence, and end of speech, not end
    of file, is what latency is measured from."""

    audio: np.ndarray
    utterances: tuple[Utterance, ...]
    speech_starts: tuple[float, ...]
    speech_ends: tuple[float, ...]


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """(start, end) of the speech in a recording, in seconds; the whole file if Silero finds none."""
    from whisper_stream.vad import FRAME, SileroModel, VadOptions, speech_spans

    spans = speech_spans(SileroModel().probabilities(audio), VadOptions())
    if not spans:
        return 0.0, len(audio) / SR
    return spans[0][0] * FRAME / SR, min(len(audio), spans[-1][1] * FRAME) / SR


def join_utterances(utterances: list[Utterance], pause_s: float = 1.5, lead_s: float = 0.5) -> JoinedStream:
    parts = [np.zeros(int(lead_s * SR), np.float32)]
    starts, ends, t = [], [], lead_s
    for u in utterances:
        audio = load_audio(u.path)
        begin, end = speech_bounds(audio)
        starts.append(t + begin)
        ends.append(t + end)
        t += len(audio) / SR
        parts += [audio, np.zeros(int(pause_s * SR), np.float32)]
        t += pause_s
    return JoinedStream(np.concatenate(parts), tuple(utterances), tuple(starts), tuple(ends))


def normalizer(language: str = "en"):
    """Whisper's English normalizer for English (numbers, spelling, punctuation), its basic one otherwise."""
    import re

    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()

    def apply(text: str) -> str:
        text = re.sub(r"\[[^\]]*\]|<[^>]*>", " ", text)  # corpus markup such as [adif] or <VOCNOISE>
        return norm(text)

    return apply


def wer(references: list[str], hypotheses: list[str], language: str = "en") -> float:
    """Corpus WER after normalisation (jiwer), as a fraction."""
    import jiwer

    norm = normalizer(language)
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    return jiwer.wer([r for r, _ in pairs], [h for _, h in pairs])
