"""Real speech for tests, benchmarks and engine checks: the data set, audio loading, joined streams, WER.

The one toolkit for `client/`, `tests/` and `build_engine/`: every manifest, audio file and error rate goes
through here. The data set is the repository's `data/` (shipped, so a plain clone runs its tests and
benchmark) unless `--data DIR` or `WHISPER_STREAM_DATA=DIR` names a larger one in the same format.
"""

from __future__ import annotations

import json
import os
import re
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SR = 16_000
BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data"
DATA_ENV = "WHISPER_STREAM_DATA"
CER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue"})  # written without spaces: scored by characters
_MARKUP = re.compile(r"\[[^\]]*\]|<[^>]*>")  # corpus markup such as [adif] or <VOCNOISE>


def data_dir(path: Path | str | None = None) -> Path:
    """`path`, else $WHISPER_STREAM_DATA, else the repository's data/; it must hold manifest.jsonl."""
    chosen = Path(path or os.environ.get(DATA_ENV) or BUNDLED_DATA)
    if not (chosen / "manifest.jsonl").is_file():
        raise FileNotFoundError(
            f"no speech data at {chosen} (manifest.jsonl missing): pass --data DIR or set {DATA_ENV} to a "
            f"folder in the format of {BUNDLED_DATA}"
        )
    return chosen


@dataclass(frozen=True)
class Utterance:
    id: str
    path: Path
    text: str
    language: str
    duration_s: float
    note: str = ""

    @property
    def scored(self) -> bool:
        """False where the reference is another recogniser's expected output, not a human transcript."""
        note = self.note.lower()
        return not ("expected" in note or "weak" in note)


def load_manifest(data: Path | str | None = None) -> list[Utterance]:
    """The utterances of a data folder (see `data_dir`), or of a manifest.jsonl given directly."""
    given = Path(data) if data else None
    manifest = given if given and given.suffix == ".jsonl" else data_dir(given) / "manifest.jsonl"
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
    """Any file PyAV reads (WAV, FLAC, MP3...), any rate and channel count -> mono float32 at sample_rate.

    16-bit mono WAV at the wanted rate (the shipped data) is read with the standard library, so engine checks
    in NVIDIA's container need no PyAV."""
    try:
        with wave.open(str(path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (sample_rate, 1, 2):
                return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    except (wave.Error, EOFError):
        pass
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=sample_rate)


def to_pcm16(audio: np.ndarray) -> bytes:
    from whisper_stream.dsp.audio import encode

    return encode(audio, "pcm_s16le")


@dataclass(frozen=True)
class JoinedStream:
    """Utterances separated by pauses, with stream times of each utterance's speech.

    `speech_starts[i]` / `speech_ends[i]` are where utterance i's speech begins and ends: with `trim`, the
    first and last sample of the trimmed recording (`energy_bounds`), followed by digital silence, so the
    end is exact and found without any VAD; without, Silero's bounds on the file alone (recordings carry
    leading and trailing silence, and end of speech, not end of file, is what latency is measured from)."""

    audio: np.ndarray
    utterances: tuple[Utterance, ...]
    speech_starts: tuple[float, ...]
    speech_ends: tuple[float, ...]


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """(start, end) of the speech in a recording, in seconds; the whole file if Silero finds none."""
    from whisper_stream.core.endpointer import VadOptions, speech_spans
    from whisper_stream.dsp.vad import FRAME, SileroModel

    spans = speech_spans(SileroModel().probabilities(audio), VadOptions())
    if not spans:
        return 0.0, len(audio) / SR
    return spans[0][0] * FRAME / SR, min(len(audio), spans[-1][1] * FRAME) / SR


TRIM_FLOOR_DB = 12.0  # a 10 ms frame is sound when its energy is this far above the recording's noise floor
TRIM_PEAK_DB = 40.0  # ... and no further than this below its loudest frame
TRIM_KEEP_S = 0.05  # kept after the last sound frame (and before the first): one frame of decay


def energy_bounds(audio: np.ndarray) -> tuple[int, int]:
    """[start, end) samples of a recording's sound by a fixed energy rule, no VAD (the benchmark's truth).

    10 ms frames; a frame is sound when its energy is >= max(floor + 12 dB, peak - 40 dB), floor being the
    10th percentile frame; the bounds are the first and last sound frames, widened by 50 ms on each side.
    Trimming a recording to them and following it with digital silence makes its speech end known exactly
    (nothing can be heard after it) and independent of any VAD: at most 50 ms of sub-threshold tail comes
    before it, so a latency measured from it is flattered by at most 50 ms against the energy end (and
    typically starts 0.05-0.15 s before the end Silero reports, which includes Silero's hangover)."""
    hop = SR // 100
    n = len(audio) // hop
    if n == 0:
        return 0, len(audio)
    frames = audio[: n * hop].astype(np.float64).reshape(n, hop)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
    sound = np.nonzero(db >= max(np.percentile(db, 10) + TRIM_FLOOR_DB, db.max() - TRIM_PEAK_DB))[0]
    start = max(0, int(sound[0]) * hop - int(TRIM_KEEP_S * SR))
    return start, min(len(audio), (int(sound[-1]) + 1) * hop + int(TRIM_KEEP_S * SR))


def join_utterances(
    utterances: list[Utterance], pause_s: float = 1.5, lead_s: float = 0.5, trim: bool = False
) -> JoinedStream:
    """Recordings joined with `pause_s` of digital silence (after `lead_s`); `trim`: see `JoinedStream`."""
    parts = [np.zeros(int(lead_s * SR), np.float32)]
    starts, ends, t = [], [], lead_s
    for u in utterances:
        audio = load_audio(u.path)
        if trim:
            a, b = energy_bounds(audio)
            audio = audio[a:b]
            begin, end = 0.0, len(audio) / SR
        else:
            begin, end = speech_bounds(audio)
        starts.append(t + begin)
        ends.append(t + end)
        t += len(audio) / SR
        parts += [audio, np.zeros(int(pause_s * SR), np.float32)]
        t += pause_s
    return JoinedStream(np.concatenate(parts), tuple(utterances), tuple(starts), tuple(ends))


def normalizer(language: str = "en"):
    """Whisper's English normalizer for English (numbers, spelling, punctuation), its basic one otherwise."""
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()

    def apply(text: str) -> str:
        return " ".join(norm(_MARKUP.sub(" ", text)).split())

    return apply


def wer(references: Sequence[str], hypotheses: Sequence[str], language: str = "en") -> float:
    """Corpus error rate after normalisation (jiwer), as a fraction: WER, or CER for `CER_LANGUAGES`.

    Pairs whose normalised reference is empty are left out; nan when none is left."""
    import jiwer

    norm = normalizer(language)
    refs = [norm(r) for r in references]
    hyps = [norm(h) for h in hypotheses]
    if language in CER_LANGUAGES:
        refs = [" ".join(t.replace(" ", "")) for t in refs]
        hyps = [" ".join(t.replace(" ", "")) for t in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))
