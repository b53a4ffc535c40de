"""What all streams of a process share: the scheduler, the audio front end, the limits, admission and the
graceful drain.

Every limit is in `Limits`, with its cost. Memory per stream (defaults, 16 kHz):
  session audio buffer   (final_transcript_max_duration_s + 2 x speech_pad + 4 s) x 64 kB/s  ~ 2.2 MB
  queued messages        <= max_frame_bytes (1 MiB, each message counted with 128 bytes of overhead)
                         + the message being processed (1 MiB)
  socket buffers         websockets: max_size x (max_queue + 1) = 2 MiB in, write_limit 64 KiB out;
                         unsent pongs and messages <= max_unsent_bytes (1 MiB) + what 0.1 s of pings adds
  requests in flight     (max_finals_in_flight + 1 partial) x window audio (<= 30 s x 64 kB/s = 1.9 MB)
i.e. about 2.5 MB for a real-time stream with 5 s utterances, and at most ~16 MB for a client that sends
maximal frames with 30 s utterances as fast as it can.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import Any

from whisper_stream.config import ConfigError, StreamConfig
from whisper_stream.core.session import Session
from whisper_stream.dsp.vad import SileroModel
from whisper_stream.serving.frontend import FrontEnd
from whisper_stream.serving.scheduler import Scheduler
from whisper_stream.serving.transport import CLOSE_GOING_AWAY, Transport


@dataclass(frozen=True)
class Limits:
    """Every bound on a stream and on admission, in one place (memory costs: see the module docstring)."""

    max_frame_bytes: int = 1 << 20  # 1 MiB binary frame: ~32 s of 16 kHz s16le; larger -> 1009
    max_text_bytes: int = 64 << 10  # metadata and control messages (the prompt is <= 2000 characters)
    metadata_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0  # nothing from the client this long -> 1008 (not counted after end_audio)
    audio_idle_timeout_s: float = 600.0  # keep-alives alone hold a slot at most this long -> 1008
    max_streams: int = 64  # hard cap per process (memory), whatever the engine's speed
    max_streams_per_client: int = 16  # per API key, or per client address without one
    admit_max_delay_s: float = 3.0  # refuse new streams (1013) while finals wait longer for the engine
    # unprocessed audio per stream; partials stop at half, beyond -> 1013. An unpaced upload stays far below:
    # the inbox (<= max_frame_bytes, ~32 s) plus max_finals_in_flight utterances is all a stream can hold.
    max_lag_s: float = 120.0
    # audio is not read while this many finals are unanswered (one more can come from the <= 0.5 s of audio
    # already in the front end: `GATHER_MAX_BYTES`)
    max_finals_in_flight: int = 4
    send_timeout_s: float = 30.0  # a client that does not read for this long is closed (1008)
    drain_timeout_s: float = 25.0  # on SIGTERM, time for the streams' last finals before 1001
    close_timeout_s: float = 2.0  # a peer that does not answer our close frame is dropped after this
    # unsent output per connection: replies to a client's pings bypass the 64 KiB write limit of messages, so
    # a client that pings and never reads is dropped above this (checked every `OUTPUT_CHECK_S`)
    max_unsent_bytes: int = 1 << 20

    @property
    def max_audio_event_bytes(self) -> int:
        """A text frame that only carries audio (OpenAI's `input_audio_buffer.append`): base64 of a maximal
        audio frame plus its JSON, ~1.4 MiB; held in the inbox like a binary frame of that size."""
        return self.max_frame_bytes * 4 // 3 + (4 << 10)


class Runtime:
    """What all streams of a process share: the scheduler, the VAD front end, the limits, the streams."""

    def __init__(self, scheduler: Scheduler, vad: SileroModel, limits: Limits | None = None) -> None:
        self.scheduler = scheduler
        self.vad = vad
        self.frontend = FrontEnd(vad)
        self.limits = limits or Limits()
        self.draining = False
        self.loop_watch: asyncio.Task[None] | None = None  # the server's event-loop lag probe
        self.output_watch: asyncio.Task[None] | None = None  # drops connections that do not read
        self.streams: set[Any] = set()  # the stream drivers (`driver.StreamLoop`)
        self.opening: set[Transport] = set()  # admitted, still waiting for their metadata
        self.per_client: collections.Counter[str] = collections.Counter()  # sessions held per client
        self.held = 0  # sessions admitted and not ended (a multichannel stream holds one per channel)

    @property
    def active(self) -> int:
        """Sessions past admission, a stream's channels each, those still waiting for their metadata too:
        the unit of capacity (memory and engine time go per session, not per connection)."""
        return self.held

    def session(self, config: StreamConfig, **kwargs: Any) -> Session:
        """A new session on this runtime's limits (every protocol makes its sessions here)."""
        return Session(
            config, max_partial_lag_s=self.limits.max_lag_s / 2, check_config=self.check_config, **kwargs
        )

    def check_config(self, config: StreamConfig) -> None:
        try:
            self.scheduler.engine.check_options(config.decode_options())
        except ValueError as exc:
            raise ConfigError(str(exc), unsupported=True) from None

    def refusal(self, client: str, sessions: int = 1) -> str | None:
        """Why a new stream of `sessions` sessions (channels) cannot be admitted now, or None."""
        limits = self.limits
        each = " (each channel counts as a stream)" if sessions > 1 else ""
        if self.draining:
            return "the server is shutting down; reconnect to another replica"
        if self.active + sessions > limits.max_streams:
            return f"the server is at its limit of {limits.max_streams} streams{each}; retry later"
        if client and self.per_client[client] + sessions > limits.max_streams_per_client:
            return f"this client already has {limits.max_streams_per_client} streams open{each}"
        delay = self.scheduler.delay_s()
        if delay > limits.admit_max_delay_s:
            return f"the server is at capacity (finals wait {delay:.1f} s for the engine); retry later"
        return None

    async def drain(self) -> None:
        """Graceful shutdown: refuse new streams, turn each stream's pending speech into its final, deliver
        it and close with 1001, within `drain_timeout_s`; what is left then is closed anyway."""
        self.draining = True
        reason = "server is shutting down"
        # no audio yet, nothing to deliver: closed now (their handlers then end)
        await asyncio.gather(*(t.close(CLOSE_GOING_AWAY, reason) for t in list(self.opening)))
        for stream in list(self.streams):
            stream.shutdown()
        deadline = time.monotonic() + self.limits.drain_timeout_s
        while self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        # all at once: each close waits up to close_timeout_s for a peer that may be gone
        await asyncio.gather(*(stream.abort(CLOSE_GOING_AWAY, reason) for stream in list(self.streams)))
