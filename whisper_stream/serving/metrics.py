"""Prometheus metrics of the server process, served at GET /metrics.

Everything a capacity plan needs: streams held, engine batch sizes and call times, how long requests wait for
the engine, partials shed under load, messages and errors sent, and end-of-speech -> final as the server sees
it (from the moment the session asks for the final to the moment it is sent).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry()
_LATENCY = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

STREAMS = Gauge("whisper_stream_streams_active", "Open streams", registry=REGISTRY)
STREAMS_TOTAL = Counter("whisper_stream_streams_total", "Streams accepted", registry=REGISTRY)
MESSAGES = Counter("whisper_stream_messages_total", "Messages sent", ["kind"], registry=REGISTRY)
ERRORS = Counter("whisper_stream_errors_total", "Error frames sent", ["error_type"], registry=REGISTRY)
ENGINE_CALLS = Counter("whisper_stream_engine_calls_total", "Engine calls", ["outcome"], registry=REGISTRY)
BATCH_SIZE = Histogram("whisper_stream_engine_batch_size", "Requests per engine call",
                       buckets=(1, 2, 4, 8, 16, 32, 64), registry=REGISTRY)  # fmt: skip
ENGINE_SECONDS = Histogram("whisper_stream_engine_call_seconds", "Engine call duration", buckets=_LATENCY,
                           registry=REGISTRY)  # fmt: skip
QUEUE_SECONDS = Histogram("whisper_stream_queue_seconds", "Wait for the engine", ["kind"], buckets=_LATENCY,
                          registry=REGISTRY)  # fmt: skip
PARTIALS_SHED = Counter("whisper_stream_partials_shed_total", "Partials dropped unrun", registry=REGISTRY)
_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LOOP_LAG = Histogram("whisper_stream_event_loop_lag_seconds", "How late the event loop runs a 10 ms timer",
                     buckets=_LAG_BUCKETS, registry=REGISTRY)  # fmt: skip
FINAL_SECONDS = Histogram("whisper_stream_final_seconds",
                          "Final's decode requested (endpoint, flush, or speculative) -> final sent",
                          buckets=_LATENCY, registry=REGISTRY)  # fmt: skip


LOOP_PROBE_S = 0.01


async def watch_event_loop() -> None:
    """Samples event-loop lag: every message of every stream waits behind whatever holds the loop."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(LOOP_PROBE_S)
        LOOP_LAG.observe(max(0.0, time.monotonic() - started - LOOP_PROBE_S))


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
