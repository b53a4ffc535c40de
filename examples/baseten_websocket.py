"""Baseten's Whisper Streaming protocol with plain `websockets`: stream an audio file, print the finals.

    python examples/baseten_websocket.py [FILE] [--url ws://127.0.0.1:8000/v1/websocket] [--speed 4]

Metadata first (one JSON text frame), then 32 ms frames of 16 kHz pcm_s16le (512 samples), then
`{"type": "end_audio"}`; the server answers `transcription` messages (partials off here, finals with
`is_final`) and, after the last final, `{"type": "end_audio", "body": {"status": "finished"}}`.
"""

from __future__ import annotations

import asyncio
import json
import sys

import websockets
from common import arguments, paced, pcm16

METADATA = {
    "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
    "streaming_params": {"encoding": "pcm_s16le", "sample_rate": 16000, "enable_partial_transcripts": False},
    "whisper_params": {"audio_language": "en"},
}
FRAME_BYTES = 512 * 2  # 32 ms of 16 kHz 16-bit mono


async def main() -> int:
    args = arguments(__doc__.split("\n")[0])
    pcm = pcm16(args.file, 16000)
    headers = {"Authorization": f"Api-Key {args.api_key}"} if args.api_key else {}
    async with websockets.connect(args.url, additional_headers=headers) as ws:
        print(f"connected to {args.url}", file=sys.stderr)
        await ws.send(json.dumps(METADATA))

        async def send_audio() -> None:
            async for frame in paced(pcm, FRAME_BYTES, 32000, args.speed):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "end_audio"}))

        sender = asyncio.create_task(send_audio())
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "transcription" and msg.get("is_final") and msg["transcript"]:
                print(msg["transcript"], flush=True)
            elif msg.get("type") == "error":
                print(f"server error: {msg['body']}", file=sys.stderr)
                return 1
            elif msg.get("type") == "end_audio" and msg["body"].get("status") == "finished":
                await sender
                return 0
    print("the server closed the stream before 'finished'", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
