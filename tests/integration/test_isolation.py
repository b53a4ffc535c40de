"""No client can hurt the server: a client that floods pings and never reads its pongs is dropped before the
server's memory grows (the pongs bypass the write limit of messages)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import websockets

from client.kit.local_server import LocalServer
from client.protocol import metadata


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ping_frame() -> bytes:
    """A client's masked ping with the largest control payload (125 bytes)."""
    mask, payload = os.urandom(4), os.urandom(125)
    return b"\x89" + bytes([0x80 | 125]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_ping_flood_that_never_reads_is_dropped_before_memory_grows():
    with LocalServer("--engine", "null") as server:
        ws = await websockets.connect(server.url, max_size=None)
        await ws.send(json.dumps(metadata()))
        await ws.send(bytes(3200))
        await asyncio.sleep(0.5)
        before = rss_mb(server.proc.pid)
        ws.transport.pause_reading()  # never read a pong
        burst = ping_frame() * 4000  # ~520 KB of pings
        peak, started, dropped = before, time.monotonic(), False
        while time.monotonic() - started < 12:
            if ws.transport.is_closing():
                dropped = True
                break
            if ws.transport.get_write_buffer_size() < (4 << 20):  # the server reads them as fast as it can
                ws.transport.write(burst)
            await asyncio.sleep(0.01)
            peak = max(peak, rss_mb(server.proc.pid))
        after = rss_mb(server.proc.pid)
        ws.transport.abort()
        log = server.log_tail()
    assert peak - before <= 64, (before, peak, after)  # was ~12 MB/s for as long as the client went on
    assert dropped or "does not read its replies" in log, log[-2000:]


async def test_debug_logging_never_writes_an_api_key():
    """websockets logs each request's headers and path at DEBUG: the key, however it came, is redacted."""
    key = "sekret-" + os.urandom(6).hex()
    with LocalServer("--engine", "null", "--log-level", "DEBUG", "--api-key", key) as server:
        base = f"ws://127.0.0.1:{server.port}"
        async with websockets.connect(
            server.url, additional_headers={"Authorization": f"Api-Key {key}"}
        ) as ws:
            await ws.send(json.dumps(metadata()))
        async with websockets.connect(f"{server.url}?api_key={key}") as ws:
            await ws.send(json.dumps(metadata()))
        async with websockets.connect(
            f"{base}/v1/realtime?intent=transcription",
            subprotocols=["realtime", f"openai-insecure-api-key.{key}"],  # type: ignore[list-item]
        ) as ws:
            await ws.recv()
        async with websockets.connect(
            f"{base}/v1/listen?encoding=linear16&sample_rate=16000", subprotocols=["token", key]
        ) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "KeepAlive"}))
        await asyncio.sleep(0.5)
        log = server.log_tail(chars=1 << 22)
    assert "Authorization: Api-Key ***" in log and "api_key=***" in log  # logged, redacted
    assert key not in log
