"""Incoming PCM bytes -> 16 kHz float32 samples, for frames of any length.

A frame may end in the middle of a sample (an odd byte count for s16le): the remainder is carried to the
next frame, so the byte stream is decoded exactly as if it had arrived in one piece.
"""

from __future__ import annotations

import numpy as np


class PcmDecoder:
    """Decodes one stream's little-endian 16-bit PCM. Holds at most one partial sample between calls."""

    sample_width = 2

    def __init__(self) -> None:
        self._carry = b""

    def decode(self, data: bytes) -> np.ndarray:
        if self._carry:
            data = self._carry + data
        usable = len(data) - len(data) % self.sample_width
        self._carry = data[usable:]
        return np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.float32) / 32768.0

    @property
    def pending_bytes(self) -> int:
        return len(self._carry)
