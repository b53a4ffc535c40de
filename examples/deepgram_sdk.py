"""Deepgram's live API (`/v1/listen`) through the official `deepgram-sdk`: stream a file, print the finals.

    python examples/deepgram_sdk.py [FILE] [--url ws://127.0.0.1:8000] [--speed 4]

The SDK is unmodified: only its environment points at this server (host and port of --url; the SDK adds
/v1/listen). linear16 at 16 kHz goes out in 32 ms chunks; `Results` with `is_final` are the finals;
`CloseStream` at the end makes the server send the last finals and `Metadata`, then close.
"""

from __future__ import annotations

import asyncio
import sys

from common import arguments, origin, paced, pcm16
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

CHUNK_BYTES = 1024  # 32 ms of 16 kHz linear16


async def main() -> int:
    args = arguments(__doc__.split("\n")[0])
    pcm = pcm16(args.file, 16000)
    env = DeepgramClientEnvironment(
        base=origin(args.url, "http"), production=origin(args.url, "ws"), agent="", agent_rest=""
    )
    deepgram = AsyncDeepgramClient(api_key=args.api_key or "unused", environment=env)
    options = {
        "model": "nova-3",
        "encoding": "linear16",
        "sample_rate": 16000,
        "language": "en",
        "punctuate": True,
    }
    async with deepgram.listen.v1.connect(**options) as sock:
        print(f"connected to {origin(args.url, 'ws')}/v1/listen", file=sys.stderr)

        async def send_audio() -> None:
            async for chunk in paced(pcm, CHUNK_BYTES, 32000, args.speed):
                await sock.send_media(chunk)
            await sock.send_close_stream()

        sender = asyncio.create_task(send_audio())
        async for msg in sock:  # ends when the server closes, after Metadata
            kind = getattr(msg, "type", "")
            if kind == "Results" and msg.is_final and msg.channel.alternatives[0].transcript:
                print(msg.channel.alternatives[0].transcript, flush=True)
            elif kind == "Metadata":
                await sender
                return 0
    print("the server closed the stream before Metadata", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
