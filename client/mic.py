"""Microphone client: speaks the documented protocol exactly as the documentation's example does.

Metadata first, then 512-sample int16 frames at 16 kHz straight from the microphone (sounddevice's
`RawInputStream`, one block per frame), partials rewritten in place, finals on their own line. Ctrl-C does
what the documentation asks of a client and what users need to not lose their last sentence: it stops the
microphone, sends `end_audio`, waits for the remaining finals and `finished`, then exits; a second Ctrl-C
quits at once.

    whisper-stream-mic --url ws://127.0.0.1:8000/v1/websocket --partials
    whisper-stream-mic --url wss://model-ID.api.baseten.co/environments/production/websocket --api-key KEY

The audio source is injectable (`stream_factory`): anything called like
`sounddevice.RawInputStream(samplerate=, blocksize=, channels=, dtype=, callback=, device=)` that calls
`callback(indata, frames, time, status)` from its own thread. The tests feed a WAV file through it in real
time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import websockets

from client.display import TranscriptPrinter
from client.failures import report_failure
from client.protocol import (
    FRAME_SAMPLES,
    Received,
    StreamResult,
    add_stream_options,
    metadata_from_args,
    stream_frames,
)

SAMPLE_RATE = 16_000
StreamFactory = Callable[..., Any]


class MicUnavailable(RuntimeError):
    """No usable input device (no PortAudio, no microphone, a bad --device): a message for the user."""


def sounddevice_stream_factory() -> StreamFactory:
    """sounddevice's RawInputStream, imported late: importing it fails outright when PortAudio is missing."""
    try:
        import sounddevice
    except ImportError:
        raise MicUnavailable(
            "sounddevice is not installed: run `make client` in the repository "
            "(or .venv/bin/pip install -e '.[client]')"
        ) from None
    except OSError as exc:  # sounddevice raises OSError('PortAudio library not found') at import
        raise MicUnavailable(
            f"no audio system ({exc}); install PortAudio (Debian/Ubuntu: apt install libportaudio2, "
            "macOS: brew install portaudio)"
        ) from None
    return sounddevice.RawInputStream


class MicSource:
    """Bridges the audio thread to asyncio: each captured block becomes one frame in a queue, in order."""

    def __init__(
        self,
        factory: StreamFactory,
        *,
        device: int | str | None = None,
        sample_rate: int = SAMPLE_RATE,
        block: int = FRAME_SAMPLES,
    ) -> None:
        self.factory = factory
        self.device = device
        self.sample_rate = sample_rate
        self.block = block
        self.overflows = 0  # blocks the audio system reported as lost (the event loop was too slow)
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status:
            self.overflows += 1
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, bytes(indata))

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._stream = self.factory(
                samplerate=self.sample_rate,
                blocksize=self.block,
                channels=1,
                dtype="int16",
                callback=self._callback,
                device=self.device,
            )
            self._stream.start()
        except MicUnavailable:
            raise
        except Exception as exc:  # sounddevice.PortAudioError, ValueError for a bad device name, ...
            self._stream = None
            if self.device is None:
                raise MicUnavailable(
                    f"no usable input device: connect or allow a microphone, or pick one with --device "
                    f"(see --list-devices) ({exc})"
                ) from None
            raise MicUnavailable(f"cannot open the microphone (device {self.device!r}): {exc}") from None

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.stop()
            with contextlib.suppress(Exception):
                stream.close()

    async def frames(self, stop: asyncio.Event) -> AsyncIterator[bytes]:
        """Captured frames until `stop` is set; then the microphone closes and what it had queued follows."""
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                get = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                yield get.result()
        finally:
            stopped.cancel()
        self.close()
        await asyncio.sleep(0)  # let blocks already handed over by the audio thread land in the queue
        while not self._queue.empty():
            yield self._queue.get_nowait()


async def run_mic(
    url: str,
    meta: dict[str, Any],
    *,
    api_key: str | None = None,
    device: int | str | None = None,
    stream_factory: StreamFactory | None = None,
    stop: asyncio.Event | None = None,
    on_message: Callable[[Received], None] | None = None,
    on_open: Callable[[], None] | None = None,
    on_connect: Callable[[], None] | None = None,
    drain_timeout_s: float = 60.0,
) -> StreamResult:
    """Stream the microphone until `stop` is set, then end the stream properly and return every reply.
    `on_open()` runs once the microphone is open, `on_connect()` once the server accepted the connection."""
    stop = stop or asyncio.Event()
    source = MicSource(stream_factory or sounddevice_stream_factory(), device=device)
    source.open()  # before connecting: a missing microphone is reported without touching the server
    if on_open:
        on_open()
    try:
        return await stream_frames(
            url,
            meta,
            source.frames(stop),
            bytes_per_second=SAMPLE_RATE * 2,
            api_key=api_key,
            timeout_s=drain_timeout_s,
            on_message=on_message,
            on_connect=on_connect,
        )
    finally:
        source.close()


def _connected(url: str, then: Callable[[], None] | None) -> None:
    print(f"[connected to {url}; listening, Ctrl-C to stop]", file=sys.stderr, flush=True)
    if then:
        then()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisper-stream-mic", description=__doc__.split("\n\n")[0])
    add_stream_options(
        p,
        partials_default=True,
        url_help="; Baseten: wss://model-ID.api.baseten.co/environments/production/websocket",
    )
    p.add_argument("--device", default=None, help="input device index or name (default: system default)")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop by itself after S seconds")
    p.add_argument("--timestamps", action="store_true", help="print stream times before each final")
    return p


async def _amain(
    args: argparse.Namespace,
    out: Any = None,
    stream_factory: StreamFactory | None = None,
    on_connect: Callable[[], None] | None = None,
) -> StreamResult:
    meta = metadata_from_args(args)
    printer = TranscriptPrinter(out, show_partials=args.partials, timestamps=args.timestamps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_sigint() -> None:
        if stop.is_set():  # second Ctrl-C: give up waiting
            assert task is not None
            task.cancel()
            return
        print(
            "\n[stopping: end_audio sent, waiting for the last finals; Ctrl-C again to quit]",
            file=sys.stderr,
            flush=True,
        )
        stop.set()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers on Windows loops
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    if args.duration:
        loop.call_later(args.duration, stop.set)
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    try:
        return await run_mic(
            args.url,
            meta,
            api_key=args.api_key,
            device=device,
            stream_factory=stream_factory,
            stop=stop,
            on_message=printer,
            on_open=lambda: print(f"[microphone on, connecting to {args.url}]", file=sys.stderr, flush=True),
            on_connect=lambda: _connected(args.url, on_connect),
        )
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)


def list_devices(query: Callable[[], Any] | None = None) -> str:
    """sounddevice's device table; MicUnavailable when PortAudio is missing or sees no device at all (its
    table is then empty: a blank line would tell the user nothing)."""
    if query is None:
        sounddevice_stream_factory()  # MicUnavailable without sounddevice or PortAudio
        import sounddevice

        query = sounddevice.query_devices
    table = str(query()).strip()
    if not table:
        raise MicUnavailable(
            "no audio devices: PortAudio is installed but sees no sound card or microphone "
            "(in a container or VM, pass the host's audio device through)"
        )
    return table


def main(
    argv: list[str] | None = None,
    *,
    stream_factory: StreamFactory | None = None,
    query_devices: Callable[[], Any] | None = None,
) -> int:
    """The console command; `stream_factory` replaces sounddevice's RawInputStream and `query_devices`
    its device query (tests)."""
    args = build_parser().parse_args(argv)
    prog = "whisper-stream-mic"
    connected: list[bool] = []
    try:
        if args.list_devices:
            print(list_devices(query_devices))
            return 0
        result = asyncio.run(
            _amain(args, stream_factory=stream_factory, on_connect=lambda: connected.append(True))
        )
    except MicUnavailable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:  # TimeoutError included
        return report_failure(prog, args.url, exc, connected=bool(connected))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if result.errors and not result.finished:
        return 1
    if not result.finished:
        print(
            f"{prog}: the server closed the stream before 'finished' (code {result.close_code})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
