"""OpenAI Realtime transcription through the official `openai` SDK: stream an audio file, print the finals.

    python examples/openai_sdk.py [FILE] [--url ws://127.0.0.1:8000] [--speed 4]

The SDK is unmodified: only its base URL points at this server (host and port of --url; the SDK adds
/v1/realtime, and `intent=transcription`). 24 kHz pcm16 goes out base64-encoded in 100 ms
`input_audio_buffer.append` events; the server's VAD ends each turn (`input_audio_buffer.committed`) and
`conversation.item.input_audio_transcription.completed` carries its final. At the end of the file a
`commit` ends the last turn.
"""

from __future__ import annotations

import asyncio
import base64
import sys

from common import arguments, origin, paced, pcm16
from openai import AsyncOpenAI

RATE = 24000
CHUNK_BYTES = RATE // 10 * 2  # 100 ms of 24 kHz pcm16
SESSION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
        }
    },
}


async def main() -> int:
    args = arguments(__doc__.split("\n")[0])
    pcm = pcm16(args.file, RATE)
    openai = AsyncOpenAI(api_key=args.api_key or "unused", base_url=f"{origin(args.url, 'http')}/v1")
    async with openai.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        print(f"connected to {origin(args.url, 'ws')}/v1/realtime", file=sys.stderr)
        await conn.session.update(session=SESSION)

        async def send_audio() -> None:
            async for chunk in paced(pcm, CHUNK_BYTES, RATE * 2, args.speed):
                await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            await conn.input_audio_buffer.commit()
            # Events are answered in order: once this update is answered, every turn has been committed.
            await conn.session.update(session=SESSION)

        sender = asyncio.create_task(send_audio())
        committed: set[str] = set()
        completed: set[str] = set()
        updates = 0
        async for event in conn:
            if event.type == "input_audio_buffer.committed":
                committed.add(event.item_id)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                completed.add(event.item_id)
                if event.transcript:
                    print(event.transcript, flush=True)
            elif event.type == "session.updated":
                updates += 1
            elif event.type == "error":
                print(f"server error: {event.error.message}", file=sys.stderr)
                return 1
            if updates == 2 and committed <= completed:  # the closing update answered, every turn final
                await sender
                return 0
    print("the server closed the connection before the last transcript", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
