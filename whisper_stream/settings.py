"""Server settings: defaults < environment (WHISPER_STREAM_*) < command-line flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHISPER_STREAM_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    engine: Literal["ctranslate2", "triton", "tensorrt_llm"] = "ctranslate2"
    engine_dir: str | None = None  # TensorRT-LLM engines (python -m build_engine), for engine tensorrt_llm
    model: str | None = None  # local CTranslate2 directory, "base" (PyPI default) or a hub name
    compute_type: str = "int8"
    full_context: bool = False  # encode every window as Whisper's full 30 s (slower on CPU; see engines)
    device: str = "cpu"
    cpu_threads: int = 0
    max_batch_size: int = Field(8, ge=1, le=256)
    triton_url: str = "127.0.0.1:8011"
    triton_model: str = "whisper_ensemble"
    triton_max_inflight: int = Field(8, ge=1, le=256)
    api_key: str | None = None  # when set, clients must send Authorization: Api-Key/Bearer <key>
    max_streams: int = Field(64, ge=1)
    max_frame_bytes: int = Field(1 << 20, ge=1024)
    partial_max_wait_s: float = Field(10.0, gt=0)
    idle_timeout_s: float = Field(60.0, gt=0)
    log_level: str = "INFO"
