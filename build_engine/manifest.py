"""`manifest.json` next to the engines: what was built, from what, with which tools, on which GPU.

Engines only load under the TensorRT version that built them, so the manifest is what tells a server (or a
person) whether a directory of engines fits the image at hand.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from build_engine.commands import BuildOptions

MANIFEST = "manifest.json"
REQUIRED = (
    "model_name",
    "checkpoint_sha256",
    "options",
    "commands",
    "tensorrt_llm_version",
    "tensorrt_version",
    "gpu_name",
    "build_started",
    "build_finished",
    "build_seconds",
    "engines",
)


def collect_environment() -> dict[str, str | None]:
    """TensorRT-LLM / TensorRT versions and the GPU name; None for what this machine does not have."""
    env: dict[str, str | None] = {"tensorrt_llm_version": None, "tensorrt_version": None, "gpu_name": None}
    try:
        import tensorrt_llm

        env["tensorrt_llm_version"] = str(tensorrt_llm.__version__)
    except ImportError:
        pass
    try:
        import tensorrt

        env["tensorrt_version"] = str(tensorrt.__version__)
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        env["gpu_name"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def make_manifest(
    opts: BuildOptions,
    checkpoint_sha256: str | None,
    commands: dict[str, list[str]],
    engine_dir: Path,
    started: float,
    finished: float,
    environment: dict[str, str | None],
) -> dict[str, Any]:
    engines = (
        sorted(str(p.relative_to(engine_dir)) for p in engine_dir.rglob("*.engine"))
        if engine_dir.is_dir()
        else []
    )
    return {
        "model_name": opts.model_name,
        "checkpoint_sha256": checkpoint_sha256,
        "options": opts.to_dict(),
        "commands": commands,
        **environment,
        "python": platform.python_version(),
        "build_started": _iso(started),
        "build_finished": _iso(finished),
        "build_seconds": round(finished - started, 1),
        "engines": engines,
    }


def missing_fields(manifest: dict[str, Any]) -> list[str]:
    """Required fields that are absent or empty: a manifest with any of these does not describe a build."""
    return [k for k in REQUIRED if manifest.get(k) in (None, "", [], {})]


def write_manifest(engine_dir: Path, manifest: dict[str, Any]) -> Path:
    missing = missing_fields(manifest)
    if missing:
        raise ValueError(f"incomplete manifest, missing {missing}")
    path = engine_dir / MANIFEST
    engine_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(engine_dir: Path) -> dict[str, Any]:
    return json.loads((engine_dir / MANIFEST).read_text())
