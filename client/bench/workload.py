"""What the benchmark streams: utterances of the data set, joined into streams that hold the same speech at
every concurrency, and where a pipecat-like client would send `finalize` (its own Silero VAD)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from client.kit.speech import SR, JoinedStream, Utterance, join_utterances, load_manifest

FINALIZE = json.dumps({"type": "finalize"})


def select_utterances(
    data: Path | None,
    language: str,
    max_duration_s: float,
    exclude: list[str],
    ids: list[str] | None = None,
) -> list[Utterance]:
    """The manifest's utterances in `language` (or exactly `ids`, in that order) that fit the limits."""
    try:
        every = load_manifest(data)
    except FileNotFoundError as exc:
        raise SystemExit(f"whisper-stream-bench: {exc}") from None
    if ids:
        by_id = {u.id: u for u in every}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise SystemExit(f"not in the manifest: {', '.join(missing)}")
        return [by_id[i] for i in ids]
    utts = [
        u
        for u in every
        if (language == "auto" or u.language == language)
        and u.duration_s <= max_duration_s
        and u.id not in exclude
    ]
    if not utts:
        raise SystemExit(f"no utterance in the manifest for language {language!r} under {max_duration_s} s")
    return utts


def build_streams(utts: list[Utterance], n: int, per_stream: int, pause_s: float) -> list[JoinedStream]:
    """Every stream holds the same K utterances (the first K selected), stream i rotated by i: the same speech
    at every concurrency, but streams do not speak the same words at the same moment. Recordings are trimmed
    (`energy_bounds`), so each speech end is exact."""
    chosen = [utts[j % len(utts)] for j in range(per_stream)]
    return [
        join_utterances([chosen[(i + j) % per_stream] for j in range(per_stream)], pause_s=pause_s, trim=True)
        for i in range(n)
    ]


def client_flushes(audio: np.ndarray, stop_ms: int, threshold: float) -> tuple[dict[int, str], list[float]]:
    """pipecat's client side: Silero (the server's model) on the audio as it is sent, 512-sample frames;
    when `stop_ms` of silence ends speech (the same rule as the server's, `Endpointer`), `finalize` is sent
    right after that frame. -> ({frame index: finalize}, the speech ends the client VAD found, stream s)."""
    from whisper_stream.core.endpointer import Endpointer, silence_frames
    from whisper_stream.dsp.vad import FRAME, SileroModel

    ep = Endpointer(threshold, silence_frames(stop_ms))
    after: dict[int, str] = {}
    ends: list[float] = []
    for i, p in enumerate(SileroModel().probabilities(audio)):
        if ep.push(float(p), i * FRAME) == "end":
            assert ep.silence_start is not None
            after[i] = FINALIZE
            ends.append(ep.silence_start / SR)
            ep.close()
    return after, ends
