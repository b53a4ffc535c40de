"""Transcribe real speech from the data set through an engine; print transcripts, WER and RTF.

Works with any engine of the `Engine` interface (whisper_stream.engines.interface), so the same check runs
against the TensorRT-LLM engines after a build and against the CPU engine here. The data set, audio loading
and error rates are `client.kit.speech`'s (the repository's data/ unless --data or WHISPER_STREAM_DATA says
otherwise): WER with Whisper's normalisers, CER for languages written without spaces; references that are
another recogniser's output are transcribed but left out of the score.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.kit.speech import CER_LANGUAGES, Utterance, load_audio, load_manifest, wer
from whisper_stream.engines.interface import SAMPLE_RATE, DecodeOptions, Engine, TranscribeRequest


def load_items(
    data_dir: Path | None = None,
    languages: Sequence[str] = (),
    ids: Sequence[str] = (),
    max_duration_s: float = 30.0,
    limit: int | None = None,
) -> list[Utterance]:
    """Manifest entries that fit one 30 s window, optionally filtered by language or id."""
    items = [
        u
        for u in load_manifest(data_dir)
        if u.duration_s <= max_duration_s
        and (not languages or u.language in languages)
        and (not ids or u.id in ids)
    ]
    return items[:limit] if limit else items


async def run(
    engine: Engine,
    items: Sequence[Utterance],
    batch_size: int | None = None,
    detect_language: bool = False,
    printer: Any = print,
) -> dict[str, Any]:
    """Transcribe `items` in batches; returns per-item results, error rates per language and the RTF."""
    batch_size = batch_size or engine.max_batch_size
    audio = [load_audio(it.path) for it in items]
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
    rates = {lang: wer(r, h, lang) for lang, (r, h) in sorted(by_lang.items())}
    summary = {
        "engine": engine.name,
        "model": engine.model_name,
        "files": len(items),
        "audio_seconds": round(audio_s, 3),
        "processing_seconds": round(elapsed, 3),
        "rtf": round(elapsed / audio_s, 4) if audio_s else None,
        "error_rates": {k: round(v, 4) for k, v in rates.items()},
        "error_rate_kind": {k: ("CER" if k in CER_LANGUAGES else "WER") for k in rates},
        "normalizer": "whisper-normalizer EnglishTextNormalizer (en) / BasicTextNormalizer, markup removed",
        "results": rows,
    }
    for lang, rate in rates.items():
        printer(f"{summary['error_rate_kind'][lang]} [{lang}] {rate:.2%}")
    printer(f"RTF {summary['rtf']} ({elapsed:.2f} s for {audio_s:.1f} s of audio, batch {batch_size})")
    return summary


def run_sync(engine: Engine, items: Sequence[Utterance], **kwargs: Any) -> dict[str, Any]:
    return asyncio.run(run(engine, items, **kwargs))
