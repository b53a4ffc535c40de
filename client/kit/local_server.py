"""`python -m whisper_stream serve` as a child process on a free 127.0.0.1 port: the benchmark's local server
(`make bench` without a URL) and the tests' real server.

    with LocalServer("--max-streams", "16") as server:   # waits until GET /health answers 200
        ... server.url ...                               # ws://127.0.0.1:PORT/v1/websocket
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from triton_launcher import free_ports

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    return free_ports(1)[0]


class LocalServer:
    """The server with `args` (`serve` options after --host/--port), its output in `log`.

    `log` defaults to $TMPDIR/whisper-stream-PORT.log; `env` is added to this process's environment.
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.log = log or Path(tempfile.gettempdir()) / f"whisper-stream-{self.port}.log"
        # the log line "serving ws://... (engine ctranslate2, model base)" -> "engine ctranslate2, model base"
        self.model = "unknown"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("w")
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
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/websocket"

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait(self, timeout_s: float = 300.0) -> LocalServer:
        """Until GET /health answers 200; if it never does: stop, RuntimeError with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"the local server exited with code {self.proc.returncode} (log: {self.log}):\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.health, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            self.stop()
            raise RuntimeError(
                f"the local server was not ready after {timeout_s:.0f} s (log: {self.log}):\n"
                f"{self.log_tail()}"
            )
        for line in self.log_tail(chars=1 << 20).splitlines():
            if "serving" in line and "model " in line:
                self.model = line.rsplit("(", 1)[-1].rstrip(")")
        return self

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 20 s; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def __enter__(self) -> LocalServer:
        return self.wait()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
