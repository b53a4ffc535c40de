"""The standalone WebSocket server: a thin `websockets` adapter around `driver.serve_stream`.

Paths: `/v1/websocket` (the Truss path), and Baseten's public forms `/environments/{env}/websocket` and
`/deployment/{id}/websocket`, so a URL copied from Baseten works locally. `/v1/listen` speaks Deepgram's
live API and `/v1/realtime?intent=transcription` OpenAI's Realtime transcription (`protocols/`).
`GET /health` answers 200 when the engine is ready and 503 otherwise; `GET /metrics` is Prometheus' text
format. Any websockets client version works: the legacy client's `extra_headers=` and the current
`additional_headers=` only differ on the client side.
"""

from __future__ import annotations

import asyncio
import errno
import http
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from whisper_stream import protocols
from whisper_stream.dsp.vad import SileroModel
from whisper_stream.engines import create_engine
from whisper_stream.engines.interface import Engine
from whisper_stream.serving import auth, metrics, web_page
from whisper_stream.serving.driver import serve_stream
from whisper_stream.serving.runtime import Limits, Runtime
from whisper_stream.serving.scheduler import Scheduler
from whisper_stream.serving.transport import TransportClosed
from whisper_stream.settings import ServerSettings

log = logging.getLogger(__name__)

WEBSOCKET_PATH = re.compile(r"^/(v1/websocket|environments/[^/]+/websocket|deployment/[^/]+/websocket)/?$")


OUTPUT_CHECK_S = 0.1  # how often every connection's unsent output is checked (`watch_output`)


class WebsocketTransport:
    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws

    async def recv(self) -> str | bytes:
        try:
            return await self._ws.recv()
        except ConnectionClosed as exc:
            raise TransportClosed from exc

    async def send(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise TransportClosed from exc

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


def build_runtime(settings: ServerSettings, engine: Engine | None = None) -> Runtime:
    engine = engine or create_engine(settings)
    scheduler = Scheduler(engine, partial_max_wait_s=settings.partial_max_wait_s)
    limits = Limits(
        max_frame_bytes=settings.max_frame_bytes,
        max_streams=settings.max_streams,
        max_streams_per_client=settings.max_streams_per_client,
        admit_max_delay_s=settings.admit_max_delay_s,
        max_lag_s=settings.max_lag_s,
        idle_timeout_s=settings.idle_timeout_s,
        drain_timeout_s=settings.drain_timeout_s,
    )
    return Runtime(scheduler, SileroModel(), limits)


def request_router(
    runtime: Runtime, api_key: str | None, protect_metrics: bool = False
) -> Callable[..., Awaitable[Response | None]]:
    engine = runtime.scheduler.engine
    page = web_page.WebPage(api_key_required=bool(api_key), model=engine.model_name, engine=engine.name)

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if (static := page.response(request)) is not None:
            return static
        if path == "/metrics":
            if protect_metrics and not auth.authorized(request, api_key):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
            body, content_type = metrics.exposition()
            response = connection.respond(http.HTTPStatus.OK, body.decode())
            response.headers["Content-Type"] = content_type
            return response
        if path in ("/health", "/healthz", "/v1/health"):
            if runtime.draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            if not runtime.scheduler.healthy:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "scheduler restarting\n")
            ready = await runtime.scheduler.engine.ready()
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return connection.respond(status, "ready\n" if ready else "engine not ready\n")
        other = path.rstrip("/") in protocols.PATHS
        if not WEBSOCKET_PATH.match(path) and not other:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "use /v1/websocket\n")
        if not auth.authorized(request, api_key):
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong API key\n")
        if other and (refused := protocols.handshake(request.path, runtime)) is not None:
            status, body, headers = refused
            response = connection.respond(http.HTTPStatus(status), body)
            response.headers["Content-Type"] = "application/json"
            for name, value in headers.items():
                response.headers[name] = value
            return response
        return None

    return process_request


class StartupError(RuntimeError):
    """Why the server cannot start, in one line (the CLI prints it without a traceback)."""


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so a busy port fails in a moment, before any model loads."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use (choose another with --port)"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def watch_output(connections: set[ServerConnection], limit: int) -> None:
    """Drop a connection whose unsent output passes `limit`. websockets answers every ping with a pong
    written past `send`'s write limit: a client that floods pings and never reads would grow this process's
    memory without bound (~12 MB/s). One task for all connections, every `OUTPUT_CHECK_S`."""
    while True:
        await asyncio.sleep(OUTPUT_CHECK_S)
        for ws in list(connections):
            transport = ws.transport
            if not transport.is_closing() and transport.get_write_buffer_size() > limit:
                log.warning("a client does not read its replies (%d bytes unsent): dropped", limit)
                transport.abort()


async def start_server(
    settings: ServerSettings, runtime: Runtime, sock: socket.socket | None = None
) -> Server:
    runtime.scheduler.start()
    runtime.loop_watch = asyncio.create_task(metrics.watch_event_loop(), name="loop-lag")

    connections: set[ServerConnection] = set()
    limits = runtime.limits
    runtime.output_watch = asyncio.create_task(
        watch_output(connections, limits.max_unsent_bytes), name="output-watch"
    )

    async def handler(ws: ServerConnection) -> None:
        protocol = protocols.open_protocol(ws.request.path if ws.request else "/", runtime)
        connections.add(ws)
        try:
            await serve_stream(
                WebsocketTransport(ws), runtime, protocol, auth.client_address(ws.remote_address)
            )
        finally:
            connections.discard(ws)

    return await serve(
        handler,
        sock=sock or listen(settings.host, settings.port),
        process_request=request_router(runtime, settings.api_key, settings.protect_metrics),
        select_subprotocol=auth.select_subprotocol,
        # Bounded buffers (see stream.py for the per-stream total): frames up to twice the audio limit
        # still reach the stream, which answers with an error frame; beyond that websockets closes (1009).
        max_size=max(2 * limits.max_frame_bytes, limits.max_text_bytes, limits.max_audio_event_bytes),
        max_queue=2,
        write_limit=64 << 10,
        compression=None,  # permessage-deflate would let 1 KB on the wire carry 1 MiB of audio to decode
        ping_interval=20,
        ping_timeout=60,
        close_timeout=limits.close_timeout_s,
    )


async def run(settings: ServerSettings) -> None:
    sock = listen(settings.host, settings.port)
    try:
        runtime = build_runtime(settings)
    except Exception as exc:  # the model, engine or VAD cannot load: say why in one line
        sock.close()
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise StartupError(f"cannot start engine {settings.engine}: {reason}") from exc
    server = await start_server(settings, runtime, sock)
    port = next(iter(server.sockets)).getsockname()[1]
    engine = runtime.scheduler.engine
    print(
        f"whisper-stream: serving ws://{settings.host}:{port}/v1/websocket "
        f"(engine {engine.name}, model {engine.model_name})",
        flush=True,
    )
    print(f"whisper-stream: browser page at http://{settings.host}:{port}/", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
    log.info(
        "shutting down: draining %d streams (at most %g s)", runtime.active, runtime.limits.drain_timeout_s
    )
    await runtime.drain()  # new streams get 1013 and /health 503 meanwhile; each stream's last final
    server.close(close_connections=False)
    try:  # every stream and opening connection is closed by now; a handler still busy does not hold us
        await asyncio.wait_for(server.wait_closed(), runtime.limits.close_timeout_s + 1.0)
    except TimeoutError:
        log.warning("connections still open after the drain: closing anyway")
    for watch in (runtime.loop_watch, runtime.output_watch):
        if watch is not None:
            watch.cancel()
    await runtime.scheduler.stop()
    runtime.frontend.close()
    await engine.close()
