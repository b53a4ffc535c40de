"""Transcribe real speech from the shared data set through an engine; print transcripts, WER and RTF.

Works with any engine of the `whisper_stream.engine.Engine` interface, so the same check runs against the
TensorRT-LLM engines after a build and against the CPU engine here. WER uses Whisper's English normaliser
(the `whisper-normalizer` package, a copy of openai-whisper's) for English and its basic normaliser plus
character error rate for Chinese, Japanese and Korean. References that are another recogniser's output
(manifest `note` says so: jfk, sr_*) are transcribed but left out of the score.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from whisper_stream.engine import SAMPLE_RATE, DecodeOptions, Engine, TranscribeRequest

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CER_LANGUAGES = {"zh", "ja", "ko", "yue"}
_MARKUP = re.compile(r"\[[^\]]*\]|<[^>]*>")


@dataclass(frozen=True)
class Item:
    id: str
    path: Path
    text: str
    language: str
    duration_s: float
    scored: bool


def load_items(
    data_dir: Path = DEFAULT_DATA,
    languages: Sequence[str] = (),
    ids: Sequence[str] = (),
    max_duration_s: float = 30.0,
    limit: int | None = None,
) -> list[Item]:
    """Manifest entries that fit one 30 s window, optionally filtered by language or id."""
    items = []
    with open(data_dir / "manifest.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            if d["duration_s"] > max_duration_s or (languages and d["language"] not in languages):
                continue
            if ids and d["id"] not in ids:
                continue
            note = d.get("note", "").lower()
            scored = not ("expected" in note or "weak" in note)
            items.append(
                Item(d["id"], data_dir / d["path"], d["text"], d["language"], d["duration_s"], scored)
            )
    return items[:limit] if limit else items


def read_wav(path: Path) -> np.ndarray:
    """16 kHz mono 16-bit PCM WAV -> float32 in [-1, 1]."""
    with wave.open(str(path)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16 kHz mono s16 WAV")
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768.0


def normalize(text: str, language: str) -> str:
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    text = _MARKUP.sub(" ", text)
    norm = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    return " ".join(norm(text).split())


def error_rate(refs: Sequence[str], hyps: Sequence[str], language: str) -> float:
    """Corpus WER (CER for languages written without spaces) after normalisation."""
    import jiwer

    r = [normalize(t, language) for t in refs]
    h = [normalize(t, language) for t in hyps]
    if language in CER_LANGUAGES:
        r = [" ".join(t.replace(" ", "")) for t in r]
        h = [" ".join(t.replace(" ", "")) for t in h]
    pairs = [(a, b) for a, b in zip(r, h, strict=True) if a]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([a for a, _ in pairs], [b for _, b in pairs]))


async def run(
    engine: Engine,
    items: Sequence[Item],
    batch_size: int | None = None,
    detect_language: bool = False,
    printer: Any = print,
) -> dict[str, Any]:
    """Transcribe `items` in batches; returns per-item results, error rates per language and the RTF."""
    batch_size = batch_size or engine.max_batch_size
    audio = [read_wav(it.path) for it in items]
    results = []
    started = time.perf_counter()
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        reqs = [
            TranscribeRequest(
                a,
                DecodeOptions(language=None if detect_language else it.language),
            )
            for it, a in zip(chunk, audio[i : i + batch_size], strict=True)
        ]
        results += await engine.transcribe(reqs)
    elapsed = time.perf_counter() - started
    audio_s = sum(len(a) for a in audio) / SAMPLE_RATE
    rows = []
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    for it, res in zip(items, results, strict=True):
        rows.append({"id": it.id, "language": it.language, "detected": res.language, "text": res.text})
        printer(f"{it.id} [{it.language}->{res.language}] {res.text}")
        if it.scored:
            refs, hyps = by_lang.setdefault(it.language, ([], []))
            refs.append(it.text)
            hyps.append(res.text)
    rates = {lang: error_rate(r, h, lang) for lang, (r, h) in sorted(by_lang.items())}
    summary = {
        "engine": engine.name,
        "model": engine.model_name,
        "files": len(items),
        "audio_seconds": round(audio_s, 3),
        "processing_seconds": round(elapsed, 3),
        "rtf": round(elapsed / audio_s, 4) if audio_s else None,
        "error_rates": {k: round(v, 4) for k, v in rates.items()},
        "error_rate_kind": {k: ("CER" if k in CER_LANGUAGES else "WER") for k in rates},
        "normalizer": "whisper-normalizer EnglishTextNormalizer (en) / BasicTextNormalizer",
        "results": rows,
    }
    for lang, rate in rates.items():
        printer(f"{summary['error_rate_kind'][lang]} [{lang}] {rate:.2%}")
    printer(f"RTF {summary['rtf']} ({elapsed:.2f} s for {audio_s:.1f} s of audio, batch {batch_size})")
    return summary


def run_sync(engine: Engine, items: Sequence[Item], **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run(engine, items, **kwargs))
