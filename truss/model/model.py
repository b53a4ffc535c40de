"""Truss entry point: Baseten's WebSocket -> the same `whisper_stream` driver as the standalone server.

Thin on purpose: `load()` and the per-connection loop live in `whisper_stream.serving.truss_runtime`
(bundled through `external_package_dirs`). The engine (Triton on GPU, in-process CTranslate2 for the CPU
variant) follows the config's `environment_variables`.
"""

import sys
from pathlib import Path
from typing import Any

import fastapi

# Truss copies external_package_dirs to /packages; a checkout has the package two levels up.
for _root in (Path("/packages"), Path(__file__).resolve().parents[2]):
    if (_root / "whisper_stream").is_dir():
        if str(_root) not in sys.path:
            sys.path.insert(0, str(_root))
        break

from whisper_stream.serving.starlette_transport import StarletteTransport  # noqa: E402
from whisper_stream.serving.truss_runtime import TrussRuntime  # noqa: E402


class Model:
    def __init__(self, **kwargs: Any) -> None:
        self._runtime: TrussRuntime | None = None

    def load(self) -> None:
        self._runtime = TrussRuntime.load()

    async def websocket(self, websocket: fastapi.WebSocket) -> None:
        """One stream per connection; Truss has already accepted it and closes it (1000) on return."""
        assert self._runtime is not None, "load() has not run"
        await self._runtime.serve(StarletteTransport(websocket))
