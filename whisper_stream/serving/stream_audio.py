"""One stream's audio on its way to the core: bytes in the stream's encoding and rate -> 16 kHz frames of
512 samples -> their speech probabilities. The core never sees bytes; the front end runs this off the event
loop, many streams at once.

Memory: less than one frame of samples, the decoder's partial sample and resampler state, the VAD's state.
"""

from __future__ import annotations

import numpy as np

from whisper_stream.dsp.audio import AudioDecoder
from whisper_stream.dsp.vad import FRAME, SpeechProbability


class StreamAudio:
    def __init__(self, encoding: str, sample_rate: int, vad: SpeechProbability) -> None:
        self.vad = vad
        self._decoder = AudioDecoder(encoding, sample_rate)
        self._tail = np.zeros(0, dtype=np.float32)  # samples not yet forming a whole frame

    def take_frames(self, data: bytes) -> np.ndarray:
        """Decode and resample `data` into whole frames [n, 512]; the remainder waits for more."""
        return self._split(self._decoder.decode(data))

    def flush(self) -> np.ndarray:
        """At the end of the stream: what the resampler holds, and the last part frame padded with zeros."""
        frames = self._split(self._decoder.flush())
        if not len(self._tail):
            return frames
        padded = np.zeros((1, FRAME), dtype=np.float32)
        padded[0, : len(self._tail)] = self._tail
        self._tail = np.zeros(0, dtype=np.float32)
        return np.concatenate([frames, padded]) if len(frames) else padded

    def _split(self, samples: np.ndarray) -> np.ndarray:
        if len(self._tail):
            samples = np.concatenate([self._tail, samples])
        n = len(samples) // FRAME
        self._tail = samples[n * FRAME :].copy()
        return samples[: n * FRAME].reshape(n, FRAME)
