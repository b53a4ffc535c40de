"""Start-up failures: one line on stderr and a non-zero exit, never a traceback; a busy port fails at once."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.kit.local_server import ROOT, free_port
from whisper_stream.engines import model_source
from whisper_stream.engines.model_integrity import PACKAGE_SHA256

SERVE = [sys.executable, "-m", "whisper_stream", "serve", "--host", "127.0.0.1"]


def _serve(
    *args: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(
    "model, needle",
    [
        ("/nonexistent/model", "does not exist"),
        (str(Path(__file__).parent), "not a CTranslate2 Whisper model directory"),
        ("Systran/faster-whisper-no-such-model", "could not be downloaded"),
    ],
)
def test_a_bad_model_is_one_line(model, needle):
    done = _serve("--port", str(free_port()), "--model", model)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith("whisper-stream: cannot start engine ctranslate2:") and needle in line, line


def test_a_model_directory_without_its_tokenizer_is_one_line_at_once(tmp_path):
    """Was 26 s of hub retries and 23 lines (and, online, another model's tokenizer used silently)."""
    model = tmp_path / "model"
    model.mkdir()
    for f in Path(model_source.assemble_default_model()).iterdir():  # the real model, but its tokenizer
        if f.name != "tokenizer.json":
            (model / f.name).symlink_to(f)
    started = time.monotonic()
    done = _serve("--port", str(free_port()), "--model", str(model), env={"HF_HUB_OFFLINE": "0"})
    assert done.returncode == 1 and "has no tokenizer.json" in _one_line(done.stderr)
    assert time.monotonic() - started < 20  # no hub retries (a hang guard, not a speed goal)


def test_a_busy_port_fails_before_the_model_loads():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # a model that would take long to fail: the port check must come first (timeout bounds the wait)
        done = _serve("--port", str(port), "--model", "Systran/faster-whisper-no-such-model", timeout_s=20)
    assert done.returncode == 1
    assert _one_line(done.stderr) == f"whisper-stream: port {port} on 127.0.0.1 is already in use " + (
        "(choose another with --port)"
    )


def test_make_serve_passes_only_the_variables_that_are_set():
    plain = subprocess.run(["make", "-n", "serve"], cwd=ROOT, capture_output=True, text=True, check=True)
    line = next(x for x in plain.stdout.splitlines() if "whisper-stream serve" in x)
    assert "--host" not in line and "--port" not in line and "--engine" not in line, line
    set_ = subprocess.run(
        ["make", "-n", "serve", "PORT=9000", "MODEL=/m"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    line = next(x for x in set_.stdout.splitlines() if "whisper-stream serve" in x)
    assert "--port 9000" in line and "--model /m" in line and "--host" not in line, line


def test_serve_help_shows_the_real_default_model():
    done = subprocess.run([*SERVE[:-2], "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    model_help = " ".join(done.stdout.rsplit("--model MODEL", 1)[1].split("--engine-dir", 1)[0].split())
    assert "(default: base;" in model_help, model_help


def test_a_changed_default_model_package_is_refused_in_one_line(tmp_path):
    """The installed packages, shadowed by copies on PYTHONPATH with one byte of model.bin's first half
    changed: the server refuses to start, in one line, and joins nothing."""
    for name in model_source._PARTS:
        src = model_source._package_dir(name)
        assert src is not None, "the [model] extra is not installed"
        shutil.copytree(src, tmp_path / "site" / name / "data")
        (tmp_path / "site" / name / "__init__.py").write_text("")
    part = tmp_path / "site" / model_source._PARTS[0] / "data" / "model.bin.part1"
    with open(part, "r+b") as f:
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 1]))
    env = {"PYTHONPATH": str(tmp_path / "site"), "WHISPER_STREAM_CACHE": str(tmp_path / "cache")}
    done = _serve("--port", str(free_port()), env=env)
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith("whisper-stream: cannot start engine ctranslate2: default model package file"), (
        line
    )
    assert str(part) in line and PACKAGE_SHA256["model.bin.part1"] in line and "reinstall" in line, line
    assert not (tmp_path / "cache" / "models" / "whisper-base").exists()


def test_a_server_without_its_triton_says_so_at_start(tmp_path):
    """`--engine triton` with nothing on the gRPC port starts (Triton may come later), but logs one line
    that says where it looked and what to run, before it reports serving."""
    url = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*SERVE, "--port", str(free_port()), "--engine", "triton", "--triton-url", url],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while (
                "serving ws://" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline
            ):
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(30)
    text = log.read_text()
    assert "serving ws://" in text, text
    [line] = [x for x in text.splitlines() if "WARNING whisper_stream.engines.triton" in x]
    assert f"Triton at {url} does not answer" in line and "make triton" in line, line


def test_make_gpu_check_installs_into_the_venv_unless_python_has_torch(tmp_path):
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "-n", "gpu-check", f"VENV={venv}", "GPU_CHECK_PYTHON="],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    torch_line = next(x for x in plan.splitlines() if "torch==" in x)
    # CPU torch, pinned, and only where none imports (a GPU machine's CUDA torch is never replaced)
    assert torch_line.startswith(
        f'{venv}/bin/python -c "import torch" 2>/dev/null || {venv}/bin/pip install'
    ), plan
    assert "torch==2.13.0" in torch_line and "gpu-check]" in plan, plan
    assert f"{venv}/bin/python -m build_engine.gpu_check" in plan, plan
    own = subprocess.run(
        ["make", "-n", "gpu-check", f"VENV={venv}", "GPU_CHECK_PYTHON=python3"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pip install" not in own and "python3 -m build_engine.gpu_check" in own, own
