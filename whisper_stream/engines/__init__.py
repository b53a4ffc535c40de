"""The engines behind the `Engine` interface, and the factory that picks one from the server settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from whisper_stream.engines.interface import Engine

if TYPE_CHECKING:  # settings reads the default model's name from this package: no import cycle
    from whisper_stream.settings import ServerSettings


def create_engine(settings: ServerSettings) -> Engine:
    """The engine `settings.engine` names; each is imported only when chosen (their dependencies differ)."""
    if settings.engine == "tensorrt_llm":
        from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

        if not settings.engine_dir:
            raise RuntimeError("engine tensorrt_llm needs --engine-dir (built with `make engine`)")
        return TensorRTLLMEngine(settings.engine_dir, max_batch_size=settings.max_batch_size)
    if settings.engine == "null":
        from whisper_stream.engines.null import NullEngine

        return NullEngine()
    if settings.engine == "triton":
        from whisper_stream.engines.triton import TritonEngine

        triton = TritonEngine(
            url=settings.triton_url,
            model_name=settings.triton_model,
            max_batch_size=settings.max_batch_size,
            max_inflight=settings.triton_max_inflight,
        )
        triton.log_startup()  # a Triton that is not up yet does not stop the server: say so in the log
        return triton
    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    return CTranslate2Engine(
        settings.model,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads,
        max_batch_size=settings.max_batch_size,
        adaptive_context=not settings.full_context,
        workers=settings.engine_workers,
    )
