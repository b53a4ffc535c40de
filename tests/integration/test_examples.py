"""examples/: each script, run as a user runs it, against the real server: it streams a file and prints its
finals, which must be the recording's words (WER against the data set's reference)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from client.kit.local_server import ROOT
from client.kit.speech import wer

EXAMPLES = ["baseten_websocket.py", "deepgram_sdk.py", "openai_sdk.py"]
MAX_WER = 0.15  # base int8 on these recordings: 0-5 % (one word in jfk's 22 is already 4.5 %)


def run_example(script: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("WHISPER_STREAM_URL", "WHISPER_STREAM_PORT")}
    environ["PYTHONPATH"] = str(ROOT)  # this checkout's client/, whatever the environment installed
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--speed", "4", *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_streams_jfk_to_the_servers_port_and_prints_the_finals(server, speech, script):
    """The defaults: data/speech/jfk.wav, the URL from WHISPER_STREAM_PORT (as `make serve PORT=` exports)."""
    run = run_example(script, WHISPER_STREAM_PORT=str(server.port))
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"connected to ws://127.0.0.1:{server.port}/" in run.stderr, run.stderr
    assert len(run.stdout.splitlines()) >= 2, run.stdout  # the finals, one per line as they came
    assert wer([speech["jfk"].text], [run.stdout]) < MAX_WER, run.stdout


@pytest.mark.parametrize("script", EXAMPLES)
def test_example_takes_a_url_and_a_file(server, speech, script):
    wizard = speech["ls_61-70968-0000"]
    run = run_example(script, str(wizard.path), "--url", server.url, WHISPER_STREAM_PORT="9")
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert wer([wizard.text], [run.stdout]) < MAX_WER, run.stdout
