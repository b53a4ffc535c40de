"""Fakes for unit tests of the session logic: a VAD that hears loudness, synthetic audio, and a session
behind the Baseten protocol as the driver runs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from whisper_stream.core.events import Cancel, Notice, Promote, Transcribe
from whisper_stream.core.session import Session
from whisper_stream.engines.interface import Segment, TranscribeRequest, TranscribeResult
from whisper_stream.protocols.baseten import BasetenProtocol
from whisper_stream.serving.driver import EndAudio, Send
from whisper_stream.serving.stream_audio import StreamAudio
from whisper_stream.serving.transport import Close

SR = 16_000


class LoudnessVad:
    """p = 0.9 for frames with RMS above 0.05, else 0.02; records how many frames it saw."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.frames += len(frames)
        rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
        return np.where(rms > 0.05, 0.9, 0.02).astype(np.float32)


def tone(seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), dtype=np.float32)


def pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def fake_result(request: TranscribeRequest, text: str | None = None, **seg: float) -> TranscribeResult:
    """A result whose text records the window length, so tests can see what audio was sent."""
    duration = len(request.audio) / SR
    body = text if text is not None else f"audio {duration:.2f}"
    fields = {"avg_logprob": -0.1, "no_speech_prob": 0.01, "compression_ratio": 1.0, **seg}
    return TranscribeResult(
        segments=(Segment(start=0.0, end=duration, text=" " + body, **fields),),  # type: ignore[arg-type]
        language="en",
        language_prob=None,
    )


class BasetenStream:
    """A core `Session` fed bytes through its `StreamAudio` and a fake VAD, its results rendered by the
    Baseten protocol, as the stream driver does: the session tests check what a Baseten client receives.

    Returned lists hold the core's requests (`Transcribe`, `Promote`, `Cancel`) and results (`Transcript`,
    `TurnEvent`...), each result followed by what Baseten renders of it (`Send`, `Close`). `promoted` and
    `cancelled` collect the request ids the session pushed to the scheduler; a cancelled one is answered as
    the scheduler answers a queued request it drops (result and error None)."""

    def __init__(self, config: Any, vad: Any = None, **kwargs: Any) -> None:
        self.session = Session(config, **kwargs)
        params = config.streaming_params
        self.vad = vad or LoudnessVad()
        self.audio = StreamAudio(params.encoding, params.sample_rate, self.vad)
        self.protocol = BasetenProtocol(runtime=None)  # type: ignore[arg-type]
        self.protocol.session = self.session
        self.promoted: set[int] = set()
        self.cancelled: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def feed_audio(self, data: bytes, now: float = 0.0) -> list:
        if not self.session.accepting_audio:
            return self.render([Notice("STREAM_ERROR", "audio after end_audio is ignored")])
        frames = self.audio.take_frames(data)
        return self.render(self.session.on_frames(frames, self.vad(frames))) if len(frames) else []

    def handle_text(self, text: str, now: float = 0.0) -> list:
        out: list = []
        for _, action in self.protocol.on_frame(text, now):
            if isinstance(action, EndAudio):
                out += self.render(self._flush() + self.session.end_audio())
            else:
                out += self.render([action])
        return out

    def end_audio(self, now: float = 0.0) -> list:
        return self.handle_text('{"type": "end_audio"}', now)

    def shutdown(self) -> list:
        return self.render(self._flush() + self.session.shutdown() if self.session.accepting_audio else [])

    def finalize(self) -> list:
        return self.render(self.session.finalize())

    def clear(self) -> list:
        return self.render(self.session.clear())

    def on_result(
        self, request_id: int, result: Any, error: str | None, now: float = 0.0, timing: Any = None
    ):
        return self.render(self.session.on_result(request_id, result, error, timing))

    def _flush(self) -> list:
        frames = self.audio.flush()
        return self.session.on_frames(frames, self.vad(frames)) if len(frames) else []

    def render(self, actions: list) -> list:
        out: list = []
        for a in actions:
            out.append(a)
            if isinstance(a, Promote):
                self.promoted.add(a.request_id)
            elif isinstance(a, Cancel):  # as the scheduler answers a queued request it drops
                self.cancelled.add(a.request_id)
                out += self.render(self.session.on_result(a.request_id, None, None))
            elif not isinstance(a, Transcribe | Send | Close):
                out += [w if isinstance(w, Close) else Send(w) for w in self.protocol.render(self.session, a)]
        return out
