"""What the three examples share and is not about any protocol: the command line, the audio, the pacing.

The server's URL defaults as the repository's clients do (`client.protocol.default_url`):
$WHISPER_STREAM_URL, else ws://127.0.0.1:$WHISPER_STREAM_PORT/v1/websocket (port 8000 when unset).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from client.kit.speech import load_audio, to_pcm16
from client.protocol import default_url

JFK = Path(__file__).resolve().parents[1] / "data" / "speech" / "jfk.wav"


def arguments(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "file", nargs="?", type=Path, default=JFK, help="any audio file (default data/speech/jfk.wav)"
    )
    p.add_argument(
        "--url",
        default=default_url(),
        help="the server (default $WHISPER_STREAM_URL, else ws://127.0.0.1:$WHISPER_STREAM_PORT/v1/websocket)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time (default), N = N times faster")
    p.add_argument("--api-key", default=os.environ.get("BASETEN_API_KEY"), help="default env BASETEN_API_KEY")
    args = p.parse_args()
    if args.speed <= 0:
        p.error("--speed must be > 0")
    return args


def pcm16(path: Path, sample_rate: int) -> bytes:
    """Any audio file as 16-bit little-endian mono PCM at `sample_rate`."""
    return to_pcm16(load_audio(path, sample_rate))


def origin(url: str, scheme: str) -> str:
    """`url`'s host and port under another scheme ('http' or 'ws'; the secure one for a wss:// URL): the
    SDKs are given their server this way and add their own paths."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    return f"{scheme}{'s' if secure else ''}://{parts.netloc}"


async def paced(pcm: bytes, chunk_bytes: int, bytes_per_second: int, speed: float) -> AsyncIterator[bytes]:
    """`pcm` in chunks, each released once it would have been captured by a live source (at `speed`)."""
    t0 = time.monotonic()
    for i in range(0, len(pcm), chunk_bytes):
        delay = t0 + min(i + chunk_bytes, len(pcm)) / bytes_per_second / speed - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield pcm[i : i + chunk_bytes]
