"""What the Truss model (`truss/model/model.py`) does at load time and per connection, kept in the package.

Why here and not in `truss/`: the Truss bundles this package through `external_package_dirs`, so the model
file stays a thin adapter and everything it runs is tested like the rest of the package.

Selected by environment variables (`truss/config.yaml`; `truss/config.cpu.yaml` for the CPU variant):

- `WHISPER_STREAM_ENGINE=triton` (GPU): build the TensorRT-LLM engines into `WHISPER_STREAM_ENGINE_DIR` if
  none are there (first boot of a replica without a weights cache: `python -m build_engine convert`, then
  `build`), start `tritonserver` with `model_repository/` on loopback ports, wait until every model is
  READY, then serve every stream through `TritonEngine`. The image's own `tritonserver` is used when it
  has one (NVIDIA's Triton + TensorRT-LLM base image); otherwise the CPU build bundled in `nvidia-pytriton`.
- `WHISPER_STREAM_ENGINE=ctranslate2` (CPU variant): the in-process CTranslate2 engine, no Triton.

Every other `WHISPER_STREAM_*` server setting (`MAX_STREAMS`, `MAX_BATCH_SIZE`, `MODEL`, ...) applies as in
the standalone server (`ServerSettings`).

Truss copies `external_package_dirs` to `/packages` and puts that directory on the model server's sys.path
only, never on PYTHONPATH: subprocesses (the Triton python-backend stubs, the engine build) would not find
the package. `export_package_path` fixes that for every child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_launcher import DEFAULT_REPOSITORY, Ports, TritonServer, has_gpu
from whisper_stream.protocols.baseten import BasetenProtocol
from whisper_stream.serving.driver import serve_stream
from whisper_stream.serving.runtime import Runtime
from whisper_stream.serving.server import build_runtime
from whisper_stream.serving.transport import Transport
from whisper_stream.settings import ServerSettings

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # /packages inside a Truss image
IMAGE_TRITON = Path("/opt/tritonserver/bin/tritonserver")  # where NVIDIA's images install it
# Measured by nobody yet on an H100 (see docs/baseten.md): download ~3 GB + convert + two trtllm-build runs.
FIRST_BOOT_BUILD_ESTIMATE = "about 10-15 minutes"


def export_package_path() -> None:
    """Put the directory holding `whisper_stream` (and `build_engine`) on PYTHONPATH for child processes."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(PACKAGE_PARENT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT), *parts])


@dataclass(frozen=True)
class EngineBuild:
    """Where the TensorRT-LLM engines live and how to build them when they are missing."""

    engine_dir: Path
    work_dir: Path  # checkpoint download and converted weights
    precision: str = "fp16"
    max_batch_size: int = 16

    @classmethod
    def from_env(cls) -> EngineBuild:
        env = os.environ
        return cls(
            engine_dir=Path(env.get("WHISPER_STREAM_ENGINE_DIR", "/app/engines/whisper_large_v3_fp16_b16")),
            work_dir=Path(env.get("WHISPER_STREAM_ENGINE_WORK_DIR", "/app/engines")),
            precision=env.get("WHISPER_STREAM_ENGINE_PRECISION", "fp16"),
            max_batch_size=int(env.get("WHISPER_STREAM_ENGINE_MAX_BATCH_SIZE", "16")),
        )

    def present(self) -> bool:
        return (self.engine_dir / "encoder").is_dir() and (self.engine_dir / "decoder").is_dir()

    def commands(self) -> list[list[str]]:
        common = [
            "--precision", self.precision, "--max-batch-size", str(self.max_batch_size),
            "--work-dir", str(self.work_dir), "--output", str(self.engine_dir), "--no-progress",
        ]  # fmt: skip
        # `all` would also run `verify`, which needs the test speech the image does not carry.
        return [[sys.executable, "-m", "build_engine", step, *common] for step in ("convert", "build")]

    def run(self) -> None:
        started = time.monotonic()
        log.warning(
            "no TensorRT-LLM engines in %s: building them (%s)", self.engine_dir, FIRST_BOOT_BUILD_ESTIMATE
        )
        for argv in self.commands():
            subprocess.run(argv, check=True, cwd=PACKAGE_PARENT)
        log.warning("engines built in %.0f s", time.monotonic() - started)


def image_triton_binary() -> Path | None:
    if IMAGE_TRITON.is_file():
        return IMAGE_TRITON
    found = shutil.which("tritonserver")
    return Path(found) if found else None


def start_triton(repository: Path = DEFAULT_REPOSITORY, timeout_s: float = 1800.0) -> TritonServer:
    """Start Triton on loopback with `repository` and block until it reports ready."""
    binary = image_triton_binary()
    ports = Ports.from_env()
    server = TritonServer(repository=repository, ports=ports, binary=binary)
    server.start()
    try:
        server.wait_ready(timeout_s)
    except BaseException:
        server.cleanup()
        raise
    log.info("Triton ready at %s (log %s)", server.grpc_url, server.log_path)
    return server


@dataclass
class TrussRuntime:
    """One per replica: the shared `Runtime` (engine, scheduler, VAD) and the Triton it may own."""

    runtime: Runtime
    triton: TritonServer | None = None
    _started: bool = field(default=False, init=False)

    @classmethod
    def load(cls, settings: ServerSettings | None = None) -> TrussRuntime:
        export_package_path()
        settings = settings or ServerSettings()
        triton = None
        if settings.engine == "triton":
            engines = EngineBuild.from_env()
            if has_gpu() and not engines.present():
                engines.run()
            repository = Path(os.environ.get("WHISPER_STREAM_MODEL_REPOSITORY", DEFAULT_REPOSITORY))
            triton = start_triton(repository)
            settings = settings.model_copy(update={"triton_url": triton.grpc_url})
        try:
            runtime = build_runtime(settings)
        except BaseException:
            if triton is not None:
                triton.cleanup()
            raise
        engine = runtime.scheduler.engine
        log.info("whisper-stream truss ready: engine %s, model %s", engine.name, engine.model_name)
        return cls(runtime, triton)

    async def serve(self, transport: Transport) -> None:
        """One stream. The scheduler is started here, in the server's event loop (load() runs elsewhere)."""
        if not self._started:
            self.runtime.scheduler.start()
            self._started = True
        await serve_stream(transport, self.runtime, BasetenProtocol(self.runtime))

    def close(self) -> None:
        engine: Any = self.runtime.scheduler.engine
        with contextlib.suppress(Exception):
            asyncio.run(engine.close())
        if self.triton is not None:
            self.triton.cleanup()
