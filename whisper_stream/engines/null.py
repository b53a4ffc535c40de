"""An engine that transcribes nothing, at once: for measuring the server's own cost (front end, scheduling,
protocol) without the model (`make bench-frontend`). Never a default; choose it with `--engine null`."""

from __future__ import annotations

from collections.abc import Sequence

from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest, TranscribeResult


class NullEngine:
    name = "null"
    model_name = "none"
    max_inflight = 1

    def __init__(self, max_batch_size: int = 64) -> None:
        self.max_batch_size = max_batch_size

    def check_options(self, options: DecodeOptions) -> None:
        return None

    async def transcribe(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        return [
            TranscribeResult(segments=(), language=r.options.language or "en", language_prob=None)
            for r in requests
        ]

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None
