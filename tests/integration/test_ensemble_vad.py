"""Whole-window VAD preprocessing (the logic behind the Triton ensemble), without a server."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stream.core.endpointer import VadOptions
from whisper_stream.dsp.vad import SileroModel
from whisper_stream.engines.interface import DecodeOptions, Segment, TranscribeRequest, TranscribeResult, Word
from whisper_stream.triton.ensemble_vad import (
    SpeechWindow,
    batch_probabilities,
    shift_result,
    transcribe_speech,
    trim_windows,
    vad_options_from_json,
    vad_options_to_json,
)
from whisper_stream.triton.whisper_model import choose_engine, config_parameters, transcribe_blocking


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Voiced-looking audio (harmonics with a syllable envelope) that Silero scores as speech or not: the
    tests below only compare the batched path with the one-window path, never a fixed answer."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.5 * t)
    voice = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / 16000) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    return (0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_batched_probabilities_equal_one_window_at_a_time(silero: SileroModel) -> None:
    windows = [_speechlike(1.3, 0), np.zeros(700, np.float32), _speechlike(0.4, 1), np.zeros(0, np.float32)]
    batched = batch_probabilities(silero, windows)
    for window, probs in zip(windows, batched, strict=True):
        np.testing.assert_allclose(probs, silero.probabilities(window), atol=1e-5)


def test_silence_has_no_speech_and_empty_audio(silero: SileroModel) -> None:
    [window] = trim_windows(silero, [np.zeros(16000, np.float32)], [VadOptions()])
    assert not window.has_speech and len(window.audio) == 0


def test_vad_options_round_trip() -> None:
    opts = VadOptions(threshold=0.3, min_silence_duration_ms=500, speech_pad_ms=120)
    assert vad_options_from_json(vad_options_to_json(opts)) == opts
    assert vad_options_from_json("") == VadOptions()


def _result(start: float, end: float) -> TranscribeResult:
    words = (Word("hi", start, end, 0.9),)
    return TranscribeResult((Segment(start, end, " hi", -0.1, words=words),), "en", None)


def test_shift_moves_segments_and_words() -> None:
    shifted = shift_result(_result(0.0, 1.0), 1.25)
    assert (shifted.segments[0].start, shifted.segments[0].end) == (1.25, 2.25)
    assert (shifted.segments[0].words[0].start, shifted.segments[0].words[0].end) == (1.25, 2.25)


def test_windows_without_speech_never_reach_the_engine() -> None:
    calls: list[int] = []

    def engine(requests: list[TranscribeRequest]) -> list[TranscribeResult]:
        calls.append(len(requests))
        return [_result(0.0, len(r.audio) / 16000) for r in requests]

    windows = [
        SpeechWindow(np.zeros(0, np.float32), 0.0, False),
        SpeechWindow(np.ones(8000, np.float32), 2.0, True),
    ]
    results = transcribe_speech(engine, windows, [DecodeOptions(language=None), DecodeOptions()])
    assert calls == [1]
    assert results[0].segments == () and results[0].language == "" and results[0].language_prob is None
    assert (results[1].segments[0].start, results[1].segments[0].end) == (2.0, 2.5)


def test_engine_choice_follows_parameters_and_instance_kind(tmp_path) -> None:
    assert choose_engine({"engine": "auto"}, "CPU") == "ctranslate2"
    assert choose_engine({"engine": "auto", "engine_dir": str(tmp_path)}, "GPU") == "tensorrt_llm"
    assert choose_engine({"engine": "auto", "engine_dir": str(tmp_path / "missing")}, "GPU") == "ctranslate2"
    assert choose_engine({"engine": "ctranslate2", "engine_dir": str(tmp_path)}, "GPU") == "ctranslate2"
    with pytest.raises(ValueError, match="engine"):
        choose_engine({"engine": "onnx"}, "CPU")
    config = {"parameters": {"engine": {"string_value": "auto"}, "model": {"string_value": ""}}}
    assert config_parameters(config) == {"engine": "auto", "model": ""}


def test_blocking_calls_respect_the_engine_batch_size() -> None:
    class Engine:
        max_batch_size = 2
        sizes: list[int] = []

        def transcribe_sync(self, requests: list[TranscribeRequest]) -> list[TranscribeResult]:
            self.sizes.append(len(requests))
            return [_result(0.0, 1.0) for _ in requests]

    engine = Engine()
    requests = [TranscribeRequest(np.zeros(10, np.float32)) for _ in range(5)]
    assert len(transcribe_blocking(engine, requests)) == 5
    assert engine.sizes == [2, 2, 1]


def test_threshold_zero_keeps_the_whole_window() -> None:
    """What the server's Triton engine sends by default: the session already endpointed the window."""
    from whisper_stream.core.endpointer import trim_to_speech
    from whisper_stream.dsp.vad import SileroModel
    from whisper_stream.engines.triton import DEFAULT_VAD

    window = np.zeros(16000 * 2, dtype=np.float32)  # even silence: the session decided it is speech
    audio, offset, has_speech = trim_to_speech(window, SileroModel().probabilities(window), DEFAULT_VAD)
    assert has_speech and offset == 0.0 and len(audio) == len(window)
