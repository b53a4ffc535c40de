"""Incoming audio bytes -> 16 kHz mono float32, for any frame length, encoding and rate.

Frames may split a sample (an odd byte count for s16le): the remainder is carried to the next frame, so the
byte stream decodes exactly as if it had arrived in one piece. Rates other than 16 kHz go through one
streaming soxr resampler per stream (state carried across frames: no clicks at frame boundaries); it holds
back a few milliseconds of audio until the next frame or `flush()`.

Encodings: `pcm_s16le`, `pcm_f32le`, and G.711 `pcm_mulaw` / `pcm_alaw` (8-bit companded telephone audio).
"""

from __future__ import annotations

import numpy as np

TARGET_RATE = 16_000


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.uint8)
    sign = (u & 0x80) != 0
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    value = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    return (value / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = (a & 0x80) != 0
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F).astype(np.int32)
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    value = np.where(sign, magnitude, -magnitude)
    return (value / 32768.0).astype(np.float32)


_G711 = {"pcm_mulaw": _mulaw_table(), "pcm_alaw": _alaw_table()}
SAMPLE_WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


class AudioDecoder:
    """One stream's decoder + resampler. Holds at most one partial sample and the resampler's filter state."""

    def __init__(self, encoding: str = "pcm_s16le", sample_rate: int = TARGET_RATE) -> None:
        if encoding not in SAMPLE_WIDTH:
            raise ValueError(f"unsupported encoding {encoding!r}; supported: {', '.join(SAMPLE_WIDTH)}")
        self.encoding = encoding
        self.sample_rate = sample_rate
        self._width = SAMPLE_WIDTH[encoding]
        self._carry = b""
        self._resampler = None
        if sample_rate != TARGET_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(sample_rate, TARGET_RATE, 1, dtype="float32", quality="HQ")

    def decode(self, data: bytes) -> np.ndarray:
        if self._carry:
            data = self._carry + data
        usable = len(data) - len(data) % self._width
        self._carry = data[usable:]
        samples = self._samples(memoryview(data)[:usable])
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        return samples

    def flush(self) -> np.ndarray:
        """What the resampler still holds (call once, at the end of the stream)."""
        self._carry = b""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        return self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)

    def _samples(self, data: memoryview) -> np.ndarray:
        if self.encoding == "pcm_s16le":
            return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        if self.encoding == "pcm_f32le":
            return np.nan_to_num(np.frombuffer(data, dtype="<f4"), nan=0.0, posinf=1.0, neginf=-1.0).clip(
                -1, 1
            )
        return _G711[self.encoding][np.frombuffer(data, dtype=np.uint8)]


def normalize_loudness(
    audio: np.ndarray, target_dbfs: float = -20.0, max_gain_db: float = 30.0
) -> np.ndarray:
    """Scale speech to a steady RMS level (quiet or hot microphones), never clipping, never boosting noise
    by more than `max_gain_db`."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms < 1e-6:
        return audio
    gain = min(10 ** (target_dbfs / 20) / rms, 10 ** (max_gain_db / 20))
    peak = float(np.max(np.abs(audio)))
    if peak * gain > 0.99:
        gain = 0.99 / peak
    return (audio * gain).astype(np.float32)


def encode(audio: np.ndarray, encoding: str) -> bytes:
    """float32 samples -> bytes in `encoding` (what clients send; used by our client tools and tests)."""
    x = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
    if encoding == "pcm_s16le":
        return (x * 32767.0).astype("<i2").tobytes()
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    if encoding == "pcm_mulaw":
        return _mulaw(x).tobytes()
    if encoding == "pcm_alaw":
        return _alaw(x).tobytes()
    raise ValueError(f"unsupported encoding {encoding!r}; supported: {', '.join(SAMPLE_WIDTH)}")


def _mulaw(x: np.ndarray) -> np.ndarray:
    """G.711 mu-law (the telephony codec Twilio and friends send), bit-exact with the reference g711.c."""
    pcm = np.clip((x * 32768.0).astype(np.int32), -32768, 32767) >> 2  # 14-bit
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.where(pcm < 0, -pcm, pcm), 8159) + 0x21
    segment = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    code = np.where(segment >= 8, 0x7F, (np.minimum(segment, 7) << 4) | ((mag >> (segment + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def _alaw(x: np.ndarray) -> np.ndarray:
    """G.711 A-law."""
    pcm = np.clip((x * 32768.0).astype(np.int32), -32768, 32767) >> 3  # 13-bit
    sign = np.where(pcm >= 0, 0x80, 0x00)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    mag = np.minimum(mag, 0xFFF)
    exponent = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    mantissa = np.where(exponent == 0, mag >> 1, mag >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Whole-signal resampling (soxr, high quality) for files; streams use AudioDecoder's stateful one."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(audio, from_rate, to_rate, quality="HQ").astype(np.float32)
