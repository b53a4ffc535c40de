"""What model_repository/whisper (the Triton python model) delegates to, free of Triton's own modules.

The python models are adapters (tensors in, tensors out); choosing and driving the engine is here so it is
testable without a server and shared with any other host. The whisper model's config parameters pick the
engine: `engine` = auto | ctranslate2 | tensorrt_llm. `auto` takes TensorRT-LLM on a GPU instance when
engines are there (parameter `engine_dir`, else $WHISPER_STREAM_ENGINE_DIR), and CTranslate2 otherwise,
so one repository serves CPU tests and GPU production.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from whisper_stream.engines.interface import TranscribeRequest, TranscribeResult


def config_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """`parameters { key: .. value { string_value: .. } }` of a Triton model config (as JSON) -> dict."""
    return {k: str(v.get("string_value", "")) for k, v in (model_config.get("parameters") or {}).items()}


def choose_engine(parameters: Mapping[str, str], instance_kind: str) -> str:
    engine = (parameters.get("engine") or "auto").strip().lower()
    if engine not in ("auto", "ctranslate2", "tensorrt_llm"):
        raise ValueError(f"whisper model parameter engine={engine!r}: use auto, ctranslate2 or tensorrt_llm")
    if engine != "auto":
        return engine
    engine_dir = engine_directory(parameters)
    if instance_kind.upper() == "GPU" and engine_dir and Path(engine_dir).is_dir():
        return "tensorrt_llm"
    return "ctranslate2"


def engine_directory(parameters: Mapping[str, str]) -> str:
    return parameters.get("engine_dir") or os.environ.get("WHISPER_STREAM_ENGINE_DIR", "")


def create_engine(
    parameters: Mapping[str, str], instance_kind: str, max_batch_size: int, device_id: int = 0
) -> Any:
    """The engine one Triton model instance runs; max_batch_size follows the model config's.

    `device_id` is Triton's `model_instance_device_id`: KIND_AUTO on a multi-GPU host makes one instance per
    GPU, and each must put its engine on its own GPU (not all on cuda:0)."""
    engine = choose_engine(parameters, instance_kind)
    if engine == "tensorrt_llm":
        from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine  # GPU image only

        engine_dir = engine_directory(parameters)
        if not engine_dir:
            raise ValueError("engine=tensorrt_llm needs parameter engine_dir or $WHISPER_STREAM_ENGINE_DIR")
        return TensorRTLLMEngine(engine_dir, max_batch_size=max_batch_size, device_id=device_id)

    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    return CTranslate2Engine(
        model=parameters.get("model") or None,
        device="cuda" if instance_kind.upper() == "GPU" else "cpu",
        compute_type=parameters.get("compute_type") or "int8",
        cpu_threads=int(parameters.get("cpu_threads") or 0),
        max_batch_size=max_batch_size,
        device_index=device_id if instance_kind.upper() == "GPU" else 0,
        workers=1,  # each Triton model instance makes one call at a time; instance_group adds more
    )


def option_errors(engine: Any, options: Sequence[Any]) -> list[str | None]:
    """Per request, why the engine cannot honour its options (None when it can).

    The whisper model answers those requests with an error and runs the rest of the batch: one request with an
    unknown language code must not fail every request Triton batched with it."""
    check = getattr(engine, "check_options", None)
    errors: list[str | None] = []
    for o in options:
        try:
            if check is not None:
                check(o)
            errors.append(None)
        except ValueError as exc:
            errors.append(str(exc))
    return errors


def transcribe_blocking(engine: Any, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
    """Run one batch from a synchronous host (Triton's execute): the blocking API if the engine has one."""
    size = max(1, int(getattr(engine, "max_batch_size", 0) or len(requests) or 1))
    sync = getattr(engine, "transcribe_sync", None)
    results: list[TranscribeResult] = []
    for start in range(0, len(requests), size):  # Triton's batch may exceed what the engine was built for
        chunk = list(requests[start : start + size])
        results += sync(chunk) if sync is not None else asyncio.run(engine.transcribe(chunk))
    return results


def close_engine(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        result = close()
        if asyncio.iscoroutine(result):
            asyncio.run(result)
