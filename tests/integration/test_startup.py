"""Start-up failures: one line on stderr and a non-zero exit, never a traceback; a busy port fails at once."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from client.kit.local_server import ROOT, free_port


def _serve(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "whisper_stream", "serve", "--host", "127.0.0.1", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


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
