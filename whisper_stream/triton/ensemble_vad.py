"""VAD preprocessing of whole windows before Whisper: batched Silero, trimming, short-circuit, time shift.

This is the logic of the Triton ensemble (vad -> whisper), kept here so the python models in
`model_repository/` only translate tensors. Trimming leading and trailing non-speech makes Whisper's input
shorter (fewer hallucinations on silence, less work for batched engines that pad to the longest window);
windows without any speech never reach the engine. Result times are shifted back by the trim offset, so
callers see times relative to the window they sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from whisper_stream.core.endpointer import VadOptions, trim_to_speech
from whisper_stream.dsp.vad import SileroModel, to_frames
from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest, TranscribeResult


@dataclass(frozen=True)
class SpeechWindow:
    audio: np.ndarray  # speech-only audio (float32, 16 kHz); empty when has_speech is False
    offset_s: float  # where `audio` starts in the window the client sent
    has_speech: bool


def vad_options_to_json(options: VadOptions) -> str:
    return json.dumps(asdict(options), separators=(",", ":"))


def vad_options_from_json(text: str) -> VadOptions:
    return VadOptions(**json.loads(text)) if text.strip() else VadOptions()


def batch_probabilities(model: SileroModel, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Speech probability per 512-sample frame of each window, all windows in lockstep.

    One ONNX call per frame serves the whole batch (Silero batches across streams), so a batch of B windows
    costs about as many calls as its longest window. Equal to `model.probabilities(w)` for each window.
    """
    return model.run_streams([model.stream() for _ in windows], [to_frames(w) for w in windows])


def trim_windows(
    model: SileroModel, windows: Sequence[np.ndarray], options: Sequence[VadOptions]
) -> list[SpeechWindow]:
    """Cut each window to its speech (with speech_pad_ms), batched across windows."""
    trimmed = []
    for window, probs, opts in zip(windows, batch_probabilities(model, windows), options, strict=True):
        audio, offset, has_speech = trim_to_speech(window, probs, opts)
        trimmed.append(SpeechWindow(np.ascontiguousarray(audio, dtype=np.float32), offset, has_speech))
    return trimmed


def no_speech_result(options: DecodeOptions) -> TranscribeResult:
    """What a window without speech transcribes to, without asking the engine."""
    return TranscribeResult(segments=(), language=options.language or "", language_prob=None)


def shift_result(result: TranscribeResult, offset_s: float) -> TranscribeResult:
    """Move segment and word times by offset_s (from the trimmed audio back to the client's window)."""
    if not offset_s:
        return result

    def shift(t: float) -> float:
        return round(t + offset_s, 3)  # ms: the offset crossed Triton as float32

    segments = tuple(
        replace(
            s,
            start=shift(s.start),
            end=shift(s.end),
            words=tuple(replace(w, start=shift(w.start), end=shift(w.end)) for w in s.words),
        )
        for s in result.segments
    )
    return replace(result, segments=segments)


def transcribe_speech(
    transcribe: Callable[[list[TranscribeRequest]], list[TranscribeResult]],
    windows: Sequence[SpeechWindow],
    options: Sequence[DecodeOptions],
) -> list[TranscribeResult]:
    """One engine call for the windows with speech; the rest short-circuit to an empty result."""
    results: list[TranscribeResult] = [no_speech_result(o) for o in options]
    speech = [i for i, w in enumerate(windows) if w.has_speech and len(w.audio)]
    if speech:
        answers = transcribe([TranscribeRequest(windows[i].audio, options[i]) for i in speech])
        if len(answers) != len(speech):
            raise RuntimeError(f"engine returned {len(answers)} results for {len(speech)} requests")
        for i, answer in zip(speech, answers, strict=True):
            results[i] = shift_result(answer, windows[i].offset_s)
    return results
