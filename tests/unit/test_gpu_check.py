"""`make gpu-check`'s own logic: what it reports must be able to say "no" (issue #26).

The engine part's checks run on a real TensorRTLLMEngine through the faithful stand-in with a scripted,
confident backend; the timing and memory bookkeeping on recording fakes (no GPU here)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from build_engine import gpu_check
from whisper_stream.engines.interface import RequestError, Segment, TranscribeRequest, TranscribeResult

torch = pytest.importorskip("torch", reason="the TensorRT-LLM engine's code path needs torch")

from testing import trtllm_runner as stand_in  # noqa: E402
from tests.unit.test_tensorrt_llm_runner import ScriptedBackend, engine_dir  # noqa: E402, F401
from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine  # noqa: E402


def _result(text: str) -> TranscribeResult:
    segments = (Segment(0.0, 1.0, text, -0.1),) if text else ()
    return TranscribeResult(segments=segments, language="en", language_prob=None)


def test_all_answered_says_no_to_a_lost_failed_or_empty_answer():
    assert gpu_check.all_answered([_result(" a"), _result(" b")], 2)
    assert not gpu_check.all_answered([_result(" a")], 2)  # one lost
    assert not gpu_check.all_answered([_result(" a"), RequestError("boom")], 2)
    assert not gpu_check.all_answered([_result(" a"), _result("")], 2)  # forced tokens, yet no text


class ConfidentBackend(ScriptedBackend):
    """The runner tests' scripted model, always at its confident log-probs: no fallback re-decode, as with
    gpu_check's sharpened random model."""

    def generate(
        self, features: np.ndarray, prompts: list[list[int]], **kw: Any
    ) -> list[list[stand_in.Beam]]:
        return super().generate(features, prompts, **{**kw, "temperature": 1.0})


@pytest.fixture
def engine(engine_dir, monkeypatch):  # noqa: F811 (the runner tests' engine directory, backend "scripted")
    monkeypatch.setitem(stand_in.BACKENDS, "scripted", ConfidentBackend)
    return TensorRTLLMEngine(engine_dir, runner="faithful")


def _speech(b: int) -> list[TranscribeRequest]:
    return [
        TranscribeRequest(np.random.default_rng(i).normal(0, 0.1, 16000).astype(np.float32)) for i in range(b)
    ]


def test_the_options_grouping_is_checked_on_the_engines_real_calls(engine):
    engine._runner.calls.clear()
    engine.transcribe_sync(
        [TranscribeRequest(np.zeros(16000, np.float32), o) for o in gpu_check.MIXED_OPTIONS]
    )
    assert gpu_check.grouping_problem(engine._runner.calls, gpu_check.MIXED_OPTIONS) is None
    # the same calls, had the engine decoded every request in one call, or split a group
    first = engine._runner.calls[0]
    merged = [first, {"batch": 4, "max_new_tokens": 400}]
    assert "decode calls" in gpu_check.grouping_problem(merged, gpu_check.MIXED_OPTIONS)
    split = [first] + [{"batch": 1, "max_new_tokens": 400}] * 4
    assert "decode calls" in gpu_check.grouping_problem(split, gpu_check.MIXED_OPTIONS)
    assert "first call" in gpu_check.grouping_problem(engine._runner.calls[1:], gpu_check.MIXED_OPTIONS)


class RecordingEngine:
    """Delegates to the real engine and records each call's batch size, in order."""

    def __init__(self, engine: TensorRTLLMEngine) -> None:
        self.engine, self._runner, self.sizes = engine, engine._runner, []

    def transcribe_sync(self, requests: list[TranscribeRequest]) -> list[TranscribeResult]:
        self.sizes.append(len(requests))
        return self.engine.transcribe_sync(requests)


def test_the_engine_timings_come_after_an_untimed_warm_up_call(engine):
    rec = RecordingEngine(engine)
    out = gpu_check.time_batches(rec, [1, 4], _speech, "cpu")
    assert rec.sizes == [4, 1, 4]  # the warm-up at the largest batch, then each timed batch once
    assert out["warmup_seconds"] > 0 and list(out["batches"]) == ["1", "4"]
    assert out["batches"]["4"]["generate_calls"] == [4, 4]  # the timed call's own: first step, decode
    assert all(v["all_answered"] for v in out["batches"].values())


class FakeCuda:
    """torch.cuda's peak-memory statistic: the largest allocation since the last reset."""

    def __init__(self) -> None:
        self.peak, self.events = 0, []

    def allocate(self, gib: int) -> dict[str, Any]:
        self.events.append(f"part allocates {gib}")
        self.peak = max(self.peak, gib << 30)
        return {}

    def reset_peak_memory_stats(self) -> None:
        self.events.append("reset")
        self.peak = 0

    def max_memory_allocated(self) -> int:
        self.events.append("read")
        return self.peak

    def empty_cache(self) -> None:
        pass


def test_each_part_reports_its_own_peak_memory():
    cuda = FakeCuda()
    big = gpu_check.run_part(lambda: cuda.allocate(40), cuda)
    small = gpu_check.run_part(lambda: cuda.allocate(2), cuda)
    assert (big["peak_allocated_gib"], small["peak_allocated_gib"]) == (40, 2)
    assert cuda.events == ["reset", "part allocates 40", "read", "reset", "part allocates 2", "read"]


def test_a_failed_part_or_check_fails_the_run_and_keeps_its_numbers():
    failed = gpu_check.run_part(lambda: 1 / 0, None)
    assert failed["error"].startswith("ZeroDivisionError") and "part_seconds" in failed
    assert gpu_check.failures(failed) and gpu_check.failures({"failed": ["grouping: x"]}) == ["grouping: x"]
    assert gpu_check.failures({"batches": {}}) == []
