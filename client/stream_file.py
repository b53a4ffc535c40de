"""Stream audio files to a server as if they were live, print the transcripts, optionally log every message.

    python -m client.stream_file speech.wav other.mp3 --speed 2 --jsonl messages.jsonl

Any file PyAV decodes (WAV, FLAC, MP3, ...), at any rate and channel count, is converted to what the metadata
declares (`--encoding`, `--sample-rate`; default the documented pcm_s16le at 16 kHz) and sent in 32 ms frames
(512 samples at 16 kHz), paced at real time or `--speed` times faster (0 = as fast as the socket takes it).
Each file is one stream: metadata, audio, `end_audio`, then the remaining finals until `finished`. A file that
is not audio, or holds no samples, is reported in one line and skipped; the exit status is 1 when any file
failed, got an error frame or never saw `finished`.

`--jsonl` writes one line per received message: `{"file", "t", "unix_time", "message"}`, `t` being seconds
since the stream's first audio frame on the client's monotonic clock, the clock latency is measured on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import websockets

from client.display import TranscriptPrinter
from client.failures import report_failure
from client.kit.speech import load_audio
from client.protocol import (
    Received,
    StreamResult,
    add_stream_options,
    frame_samples,
    metadata,
    metadata_from_args,
    stream_pcm,
)
from whisper_stream.dsp.audio import SAMPLE_WIDTH as BYTES_PER_SAMPLE
from whisper_stream.dsp.audio import encode as encode_audio


class DecodeError(ValueError):
    """A file with nothing to stream: not audio (or not audio PyAV decodes), or no samples at all."""


class JsonlRecorder:
    """Appends every received message, with its arrival time, to a JSON-lines file (one object per line)."""

    def __init__(self, out: TextIO, file: str) -> None:
        self.out = out
        self.file = file

    def __call__(self, item: Received) -> None:
        row = {"file": self.file, "t": round(item.t, 6), "unix_time": time.time(), "message": item.message}
        self.out.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.out.flush()


async def stream_file(
    path: Path | str,
    url: str,
    *,
    meta: dict[str, Any] | None = None,
    speed: float = 1.0,
    api_key: str | None = None,
    on_message: Callable[[Received], None] | None = None,
    on_connect: Callable[[], None] | None = None,
    timeout_s: float = 300.0,
) -> StreamResult:
    """Decode `path`, convert it to the metadata's encoding and rate, stream it paced, collect the replies."""
    meta = meta or metadata()
    params = meta.get("streaming_params", {})
    encoding = params.get("encoding", "pcm_s16le")
    sample_rate = int(params.get("sample_rate", 16000))
    try:
        audio = load_audio(path, sample_rate)
    except Exception as exc:  # PyAV's errors for non-audio files: InvalidDataError, ValueError, ...
        # PyAV's FFmpegErrors read "[Errno 1094995529] Invalid data found when processing input: 'path'":
        # their strerror alone is the part a user can act on
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DecodeError(
            f"not audio this tool can decode ({' '.join(reason.split())[:160] or type(exc).__name__})"
        ) from exc
    if not len(audio):
        raise DecodeError("no audio in it (0 samples): nothing to transcribe")
    width = BYTES_PER_SAMPLE[encoding]
    return await stream_pcm(
        url,
        meta,
        encode_audio(audio, encoding),
        speed=speed,
        frame_bytes=frame_samples(sample_rate) * width,
        bytes_per_second=sample_rate * width,
        api_key=api_key,
        timeout_s=timeout_s,
        on_message=on_message,
        on_connect=on_connect,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper-stream-file", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path, help="audio files (WAV, FLAC, MP3, ...)")
    add_stream_options(
        p,
        partials_default=False,
        partials_help="ask for partial transcripts (default off, as Baseten recommends for agents)",
    )
    p.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="pace: 1 = real time (default), N = N times faster, 0 = no pacing",
    )
    p.add_argument(
        "--encoding",
        choices=sorted(BYTES_PER_SAMPLE),
        default="pcm_s16le",
        help="what the metadata declares and the audio is converted to (default pcm_s16le)",
    )
    p.add_argument(
        "--sample-rate",
        type=int,
        default=None,
        help="declared and converted-to rate (default 16000; 8000 for pcm_mulaw/pcm_alaw)",
    )
    p.add_argument("--jsonl", type=Path, default=None, help="write every received message here")
    p.add_argument("--timestamps", action="store_true", help="print stream times before each final")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


async def _amain(args: argparse.Namespace, connected: set[str]) -> int:
    rate = args.sample_rate or (8000 if args.encoding in ("pcm_mulaw", "pcm_alaw") else 16000)
    meta = metadata_from_args(args, encoding=args.encoding, sample_rate=rate)
    log = args.jsonl.open("w") if args.jsonl else None
    failures = 0
    try:
        for path in args.files:
            prefix = f"{path.name}: " if len(args.files) > 1 else ""
            printer = TranscriptPrinter(
                show_partials=args.partials, timestamps=args.timestamps, prefix=prefix
            )
            recorder = JsonlRecorder(log, str(path)) if log else None

            def on_message(item: Received, printer: Any = printer, recorder: Any = recorder) -> None:
                if recorder:
                    recorder(item)
                if not args.quiet or item.message.get("type") == "error":
                    printer(item)

            def on_connect(path: Path = path) -> None:
                connected.add(args.url)
                if not args.quiet:
                    print(f"{path}: connected to {args.url}", file=sys.stderr, flush=True)

            try:
                result = await stream_file(
                    path,
                    args.url,
                    meta=meta,
                    speed=args.speed,
                    api_key=args.api_key,
                    on_message=on_message,
                    on_connect=on_connect,
                )
            except DecodeError as exc:
                failures += 1
                print(f"{path}: {exc}", file=sys.stderr)
                continue
            if result.errors:
                failures += 1
            if not result.finished:
                failures += 1
                print(
                    f"{path}: stream ended without 'finished' (close {result.close_code} "
                    f"{result.close_reason})",
                    file=sys.stderr,
                )
    finally:
        if log:
            log.close()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prog = "whisper-stream-file"
    missing = [str(p) for p in args.files if not p.is_file()]
    if missing:
        print(f"{prog}: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    connected: set[str] = set()  # the URLs whose server accepted the connection
    try:
        return asyncio.run(_amain(args, connected))
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:  # TimeoutError included
        return report_failure(prog, args.url, exc, connected=bool(connected))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
