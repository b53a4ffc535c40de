"""Silero VAD (ONNX) as a batched probability model with per-stream state (the rule that reads its
probabilities is `endpointer.py`).

The ONNX file comes from the `silero-vad` wheel (installed without its torch dependency, see the Makefile) or
from WHISPER_STREAM_VAD_MODEL. At 16 kHz the model takes 512 new samples plus the previous 64 as context and
carries a [2, B, 128] recurrent state, so one call can serve B streams.

Cost (2-core CPU, one thread): ~0.1 ms per 32 ms frame for one stream alone; batched, 58 us a frame as
shipped and 18-19 us with its convolutions unfolded into GEMMs (`vad_graph.py`, the default;
WHISPER_STREAM_VAD_UNFOLD=0 keeps the original graph). Memory per stream: 1 KiB of state plus 64 samples of
context.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

FRAME = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64
SAMPLE_RATE = 16_000
# The unfolded graph is used when its probabilities and state are this close to the original's (it measures
# ~1e-6 on the probe: float sums in another order).
UNFOLD_TOLERANCE = 1e-4


def default_model_path() -> Path:
    override = os.environ.get("WHISPER_STREAM_VAD_MODEL")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("silero_vad")  # found, not imported: importing it needs torch
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "Silero VAD model not found: install it with `pip install --no-deps silero-vad==6.2.3` "
            "(make install does this) or set WHISPER_STREAM_VAD_MODEL to silero_vad.onnx"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


class SpeechProbability(Protocol):
    """Stateful per-stream speech probability for consecutive 512-sample frames (fakeable in tests)."""

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...  # [n, 512] float32 -> [n] float


class SileroModel:
    """The ONNX session, shared by all streams of a process (onnxruntime sessions are thread-safe)."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, threads: int = 1, unfold: bool | None = None
    ) -> None:
        import onnxruntime as ort

        path = str(path or default_model_path())
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.graph = "original"  # or "unfolded": its convolutions as single GEMMs (vad_graph.py)
        if unfold if unfold is not None else os.environ.get("WHISPER_STREAM_VAD_UNFOLD", "1") != "0":
            self._unfold(path, opts)

    def _unfold(self, path: str, opts: object) -> None:
        """Use the unfolded graph when it gives the original's numbers on a probe; else keep the original."""
        import onnxruntime as ort

        from whisper_stream.dsp import vad_graph

        probe = _probe(self._sr)
        try:
            unfolded = ort.InferenceSession(
                vad_graph.conv_as_matmul(path, probe), sess_options=opts, providers=["CPUExecutionProvider"]
            )
            got, want = unfolded.run(None, probe), self._session.run(None, probe)
        except Exception as exc:  # no `onnx` package, or a graph the rewrite does not know
            log.warning("Silero VAD: original graph (%s: %s)", type(exc).__name__, exc)
            return
        same = len(got) == len(want) and all(
            g.shape == w.shape and bool(np.all(np.abs(g - w) <= UNFOLD_TOLERANCE))
            for g, w in zip(got, want, strict=True)
        )  # (NaN compares False: a rewrite that gives NaN, or other shapes, is refused)
        if not same:
            log.warning("Silero VAD: original graph (the unfolded one differs from it on the probe)")
            return
        diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
        self._session, self.graph = unfolded, "unfolded"
        log.info("Silero VAD: convolutions unfolded into GEMMs (max difference %.1g)", diff)

    def run(self, inputs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step for B streams: inputs [B, 576], state [2, B, 128] -> (probs [B], new state)."""
        out, new_state = self._session.run(None, {"input": inputs, "state": state, "sr": self._sr})
        return out[:, 0], new_state

    def stream(self) -> SileroStream:
        return SileroStream(self)

    def run_streams(self, streams: Sequence[SileroStream], frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frames [n_i, 512] of several streams in lockstep: one ONNX call per step serves every stream that
        still has a frame, and each stream's state and context advance exactly as if it ran alone."""
        counts = [len(f) for f in frames]
        probs = [np.empty(n, dtype=np.float32) for n in counts]
        for step in range(max(counts, default=0)):
            rows = [i for i, n in enumerate(counts) if n > step]
            inputs = np.stack([np.concatenate([streams[i]._context, frames[i][step]]) for i in rows])
            state = np.concatenate([streams[i]._state for i in rows], axis=1)
            out, state = self.run(inputs, state)
            for k, i in enumerate(rows):
                probs[i][step] = out[k]
                streams[i]._state = state[:, k : k + 1]
                streams[i]._context = frames[i][step][-CONTEXT:]
        return probs

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability per 512-sample frame of a whole window (zero-padded to a full frame)."""
        return self.stream()(to_frames(audio))


def _probe(sr: np.ndarray) -> dict[str, np.ndarray]:
    """Three streams of noise at speech-like and quiet levels, with a state from earlier audio: what
    `SileroModel.run` feeds, in the shape it feeds."""
    rng = np.random.default_rng(0)
    levels = np.array([[0.3], [0.03], [0.001]], dtype=np.float32)
    return {
        "input": (rng.standard_normal((3, CONTEXT + FRAME)) * levels).astype(np.float32),
        "state": (rng.standard_normal((2, 3, 128)) * 0.5).astype(np.float32),
        "sr": sr,
    }


def to_frames(audio: np.ndarray) -> np.ndarray:
    """A window as [n, 512] frames, its last frame zero-padded."""
    n = -(-len(audio) // FRAME)
    frames = np.zeros(n * FRAME, dtype=np.float32)
    frames[: len(audio)] = audio
    return frames.reshape(n, FRAME)


class SileroStream:
    """Recurrent state and context of one stream."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self._model.run_streams([self], [frames])[0]
