"""Shared fixtures: real speech from the repository's data/ and a real server on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client.kit.local_server import LocalServer
from client.kit.speech import load_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def speech():
    return {u.id: u for u in load_manifest()}


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    """The real server with the default CPU model (Whisper base, CTranslate2 int8)."""
    proc = LocalServer("--max-streams", "16").wait(timeout_s=180)
    yield proc
    proc.stop()
