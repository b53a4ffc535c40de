"""Whisper's log-mel spectrogram in numpy (no torch at runtime), for engines that feed features themselves.

It reproduces `whisper.audio.log_mel_spectrogram` step by step, because a TensorRT encoder built from OpenAI's
weights expects exactly those features:

- 16 kHz audio, n_fft 400, hop 160, periodic Hann window;
- `torch.stft(center=True)` framing: the signal is reflect-padded by n_fft // 2 on both sides;
- power spectrum |STFT|^2, dropping the last frame (as whisper does: N samples -> N // 160 frames);
- OpenAI's mel filterbank (`mel_filters.npz`, keys `mel_80` and `mel_128`), not a recomputed one: librosa's
  Slaney filters differ from the shipped file in the last digits, and the shipped file is the definition;
- log10 with a 1e-10 floor, dynamic range limited to 8 (max(x, max - 8)), then (x + 4) / 4;
- a window shorter than 30 s: its own frames, then 0.0 frames up to 3000, as whisper's `transcribe()` pads.

Where the filterbank comes from: an explicit `filters_path` (a `.npz` file or a directory holding it), else
the `WHISPER_ASSETS_DIR` environment variable, else the installed `openai-whisper` package's `assets/` folder
(found with importlib without importing `whisper`, which would import torch). The file is 64 kB; shipping the
`openai-whisper` sdist in the engine image is the simplest way to have it.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in one 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
FILTERS_FILE = "mel_filters.npz"


def whisper_assets_dir() -> Path | None:
    """The installed openai-whisper package's assets folder, located without importing the package."""
    env = os.environ.get("WHISPER_ASSETS_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return assets if assets.is_dir() else None


@lru_cache(maxsize=8)
def mel_filters(n_mels: int, filters_path: str | None = None) -> np.ndarray:
    """OpenAI's mel filterbank, shape (n_mels, n_fft // 2 + 1), float32."""
    if n_mels not in (80, 128):
        raise ValueError(f"Whisper uses 80 or 128 mel bins, not {n_mels}")
    if filters_path is not None:
        path = Path(filters_path)
        if path.is_dir():
            path = path / FILTERS_FILE
    else:
        assets = whisper_assets_dir()
        if assets is None:
            raise FileNotFoundError(
                f"{FILTERS_FILE} not found: pip install openai-whisper, set WHISPER_ASSETS_DIR, "
                "or pass filters_path"
            )
        path = assets / FILTERS_FILE
    with np.load(path) as f:
        return np.asarray(f[f"mel_{n_mels}"], dtype=np.float32)


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    n = np.arange(N_FFT, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)  # periodic, as torch.hann_window(400)


def _power_spectrum(audio: np.ndarray) -> np.ndarray:
    """|STFT|^2 with torch.stft(center=True, pad_mode='reflect') framing, last frame dropped: (201, T)."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
    pad = N_FFT // 2
    if len(x) <= pad:
        raise ValueError(f"audio too short for reflect padding: {len(x)} samples")
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (len(x) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, N_FFT), strides=(x.strides[0] * HOP_LENGTH, x.strides[0]), writeable=False
    )
    spec = np.fft.rfft(frames * _hann_window(), axis=-1)
    power = spec.real**2 + spec.imag**2
    return power[:-1].T


def log_mel_spectrogram(
    audio: np.ndarray, n_mels: int = 80, padding: int = 0, filters_path: str | None = None
) -> np.ndarray:
    """Whisper's log-mel features of 16 kHz float audio: (n_mels, (len(audio) + padding) // 160), float32.

    `padding` appends that many zero samples first, as whisper's own `padding` argument does.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if padding > 0:
        audio = np.pad(audio, (0, padding))
    mel = mel_filters(n_mels, filters_path).astype(np.float64) @ _power_spectrum(audio)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def pad_or_trim(mel: np.ndarray, n_frames: int = N_FRAMES) -> np.ndarray:
    """Zero-pad or cut the time axis (last) to n_frames, as whisper.pad_or_trim does."""
    t = mel.shape[-1]
    if t > n_frames:
        return mel[..., :n_frames]
    if t < n_frames:
        widths = [(0, 0)] * (mel.ndim - 1) + [(0, n_frames - t)]
        return np.pad(mel, widths)
    return mel


def even_frames(mel: np.ndarray) -> np.ndarray:
    """Pad one zero frame when the frame count is odd: the encoder's stride-2 conv needs an even count."""
    return pad_or_trim(mel, mel.shape[-1] + 1) if mel.shape[-1] % 2 else mel


def content_frames(n_samples: int) -> int:
    """Frames of a window that hold its audio: `len(audio) // 160`, whisper's `content_frames`."""
    return n_samples // HOP_LENGTH


def window_features(
    audio: np.ndarray, n_mels: int = 128, n_frames: int | None = N_FRAMES, filters_path: str | None = None
) -> np.ndarray:
    """Encoder input for one window of at most 30 s: (n_mels, frames) float32 with an even frame count.

    With n_frames (default 3000) the window is built as whisper's `transcribe()` builds it (and
    faster-whisper's): the log-mel of the audio followed by zero samples, cut to the audio's own
    `content_frames`, then zero frames (0.0 in log-mel space, not the log-mel of silence) up to n_frames.
    Padding with the log-mel of silence instead (zero *samples* up to 30 s, as `whisper.pad_or_trim(audio)`
    then `log_mel_spectrogram` would) changed the CPU engine's beam-search transcripts against
    faster-whisper's in 10 and 14 of the 27 windows of `make bench-beam` at beam 4 and 5 (issue #16).
    With n_frames=None the features cover only the audio (the TensorRT-LLM example's "longest"/"nopad"
    strategies), rounded up to an even count.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if n_frames is None:
        return even_frames(log_mel_spectrogram(audio, n_mels, filters_path=filters_path))
    samples = n_frames * HOP_LENGTH
    audio = audio[:samples]
    # zeros past the window too: its last frame's STFT reaches N_FFT // 2 beyond it, into whisper's padding
    pad = samples - len(audio) + N_FFT // 2
    mel = log_mel_spectrogram(audio, n_mels, padding=pad, filters_path=filters_path)
    mel[:, content_frames(len(audio)) :] = 0.0
    return even_frames(pad_or_trim(mel, n_frames))


def batch_window_features_torch(
    audios: list[np.ndarray],
    n_mels: int = 128,
    n_frames: int = N_FRAMES,
    device: str = "cuda",
    filters_path: str | None = None,
):  # -> torch.Tensor (torch is imported here only: the GPU engine's path)
    """`window_features` for a whole batch in one `torch.stft` on `device`: (batch, n_mels, n_frames) float32.

    Every window is zero-padded (or cut) to n_frames * 160 samples first, so one STFT covers the batch; the
    dynamic-range clamp (max - 8) is per window, and frames after a window's `content_frames` are 0.0, as in
    the numpy reference. float32 like openai-whisper's own torch implementation (the numpy reference computes
    in float64; they agree to ~1e-4 on real speech).
    """
    import torch

    if n_frames % 2:
        raise ValueError(f"n_frames must be even (the encoder's stride-2 conv), not {n_frames}")
    samples = n_frames * HOP_LENGTH
    # zeros past the window too: its last frame's STFT reaches N_FFT // 2 beyond it, into whisper's padding
    batch = np.zeros((len(audios), samples + N_FFT // 2), dtype=np.float32)
    for i, a in enumerate(audios):
        a = np.asarray(a, dtype=np.float32)[:samples]
        batch[i, : len(a)] = a
    x = torch.from_numpy(batch).to(device)
    window = torch.hann_window(N_FFT, device=device)
    stft = torch.stft(
        x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True
    )
    power = stft[..., :n_frames].abs() ** 2  # (batch, 201, n_frames)
    filters = torch.from_numpy(mel_filters(n_mels, filters_path)).to(device)
    mel = filters @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    content = torch.tensor([content_frames(min(len(a), samples)) for a in audios], device=device)
    padding = torch.arange(n_frames, device=device)[None, :] >= content[:, None]  # (batch, n_frames)
    return ((log_spec + 4.0) / 4.0).masked_fill(padding[:, None, :], 0.0)
