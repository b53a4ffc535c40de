"""whisper_stream.dsp.mel against openai-whisper's own log_mel_spectrogram (torch) on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from client.kit.speech import BUNDLED_DATA, load_audio
from whisper_stream.dsp import mel

whisper = pytest.importorskip("whisper", reason="openai-whisper (reference implementation) not installed")
torch = pytest.importorskip("torch", reason="torch (for the openai-whisper reference) not installed")

FILES = [
    BUNDLED_DATA / "speech/ls_1221-135766-0002.wav",
    BUNDLED_DATA / "speech/mfa_sv_u0016002.wav",
    BUNDLED_DATA / "speech/mfa_acoustic_corpus.wav",
]


def _reference(audio: np.ndarray, n_mels: int, padding: int = 0) -> np.ndarray:
    return whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding=padding).numpy()


def _transcribe_window(audio: np.ndarray, n_mels: int) -> np.ndarray:
    """The first window of openai-whisper's `transcribe()` (whisper/transcribe.py): the log-mel of the audio
    with 30 s of zero samples appended, cut to `content_frames`, then `pad_or_trim` (zero frames) to 3000."""
    spectrogram = _reference(audio, n_mels, padding=mel.N_SAMPLES)
    content_frames = spectrogram.shape[-1] - mel.N_FRAMES
    return whisper.pad_or_trim(spectrogram[:, : min(content_frames, mel.N_FRAMES)], mel.N_FRAMES)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("name", FILES)
def test_window_features_match_whisper_transcribe_s_window(name: Path, n_mels: int) -> None:
    audio = load_audio(name)
    assert len(audio) < mel.N_SAMPLES
    ref = _transcribe_window(audio, n_mels)
    ours = mel.window_features(audio, n_mels)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (n_mels, 3000)
    assert np.abs(ours - ref).max() < 1e-3
    # after the audio: 0.0, not the log-mel of zero samples (the floor, max - 8), which changes beam results
    np.testing.assert_array_equal(ours[:, len(audio) // mel.HOP_LENGTH :], 0.0)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_unpadded_features_match_and_odd_counts_become_even(n_mels: int) -> None:
    audio = load_audio(FILES[0])[: 16000 * 3 + 160 * 7 + 5]  # 307 frames: odd
    ref = _reference(audio, n_mels)
    ours = mel.log_mel_spectrogram(audio, n_mels)
    assert ours.shape == ref.shape == (n_mels, 307)
    assert np.abs(ours - ref).max() < 1e-3
    even = mel.window_features(audio, n_mels, n_frames=None)
    assert even.shape == (n_mels, 308)
    np.testing.assert_array_equal(even[:, :307], ours)
    np.testing.assert_array_equal(even[:, 307], 0.0)


def test_long_audio_is_trimmed_to_one_window_and_filters_load_from_a_path() -> None:
    audio = np.concatenate([load_audio(f) for f in FILES[::-1]])  # 36 s
    assert len(audio) > mel.N_SAMPLES
    feats = mel.window_features(audio, 128)
    assert feats.shape == (128, 3000)
    # a window is its own 30 s of audio, then zeros (whisper's transcribe() window of those samples): its last
    # frame's STFT reaches into the zeros, not into the audio that comes after, nor a reflection of its end
    ref = _transcribe_window(audio[: mel.N_SAMPLES], 128)
    assert np.abs(feats - ref).max() < 1e-3
    torch_feats = mel.batch_window_features_torch([audio], 128, mel.N_FRAMES, device="cpu").numpy()[0]
    assert np.abs(torch_feats - ref).max() < 2e-3
    assets = mel.whisper_assets_dir()
    assert assets is not None
    np.testing.assert_array_equal(mel.mel_filters(80, str(assets)), mel.mel_filters(80))
    with pytest.raises(ValueError):
        mel.mel_filters(64)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batched_torch_features_match_the_numpy_reference(n_mels: int) -> None:
    """The GPU engine's one-STFT batch path (run here on the CPU) equals window_features per window."""
    audios = [load_audio(f) for f in FILES]
    audios[1] = audios[1][: 16000 * 2]  # windows of different lengths in one batch
    batch = mel.batch_window_features_torch(audios, n_mels, mel.N_FRAMES, device="cpu").numpy()
    assert batch.shape == (len(audios), n_mels, mel.N_FRAMES)
    for got, audio in zip(batch, audios, strict=True):
        want = mel.window_features(audio, n_mels, mel.N_FRAMES)
        assert np.abs(got - want).max() < 2e-3
