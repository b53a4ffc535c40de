"""Shared fixtures: real speech from ../shared/data and a real server process on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.speech import DEFAULT_DATA, load_manifest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout} s")


class ServerProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"whisper-stream-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "whisper_stream",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self._log_file = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/websocket"

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def wait(self) -> ServerProcess:
        try:
            wait_ready(self.health, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"server failed to start:\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log_file.close()


@pytest.fixture(scope="session")
def speech():
    if not (DEFAULT_DATA / "manifest.jsonl").exists():
        raise FileNotFoundError(f"real speech data missing at {DEFAULT_DATA}")
    return {u.id: u for u in load_manifest()}


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    """The real server with the default CPU model (Whisper base, CTranslate2 int8)."""
    proc = ServerProcess("--max-streams", "16").wait()
    yield proc
    proc.stop()
