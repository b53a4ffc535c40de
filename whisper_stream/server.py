"""The standalone WebSocket server: a thin `websockets` adapter around `stream.serve_stream`.

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

from whisper_stream import metrics, protocols, web_page
from whisper_stream.engines import create_engine
from whisper_stream.engines.interface import Engine
from whisper_stream.scheduler import Scheduler
from whisper_stream.settings import ServerSettings
from whisper_stream.stream import Limits, Runtime, TransportClosed, serve_stream
from whisper_stream.vad import SileroModel

log = logging.getLogger(__name__)

WEBSOCKET_PATH = re.compile(r"^/(v1/websocket|environments/[^/]+/websocket|deployment/[^/]+/websocket)/?$")
HARD_MAX_FRAME = 16 << 20  # beyond this websockets itself closes with 1009 before we see the frame


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
        idle_timeout_s=settings.idle_timeout_s,
    )
    return Runtime(scheduler, SileroModel(), limits)


def _authorized(request: Request, api_key: str | None) -> bool:
    """The Authorization header, or what a browser can send instead (see `web_page.authorized`)."""
    return web_page.authorized(request, api_key)


def request_router(runtime: Runtime, api_key: str | None) -> Callable[..., Awaitable[Response | None]]:
    page = web_page.WebPage(api_key_required=bool(api_key))

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if (static := page.response(request)) is not None:
            return static
        if path == "/metrics":
            body, content_type = metrics.exposition()
            response = connection.respond(http.HTTPStatus.OK, body.decode())
            response.headers["Content-Type"] = content_type
            return response
        if path in ("/health", "/healthz", "/v1/health"):
            ready = await runtime.scheduler.engine.ready()
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return connection.respond(status, "ready\n" if ready else "engine not ready\n")
        other = path.rstrip("/") in protocols.PATHS
        if not WEBSOCKET_PATH.match(path) and not other:
            return connection.respond(http.HTTPStatus.NOT_FOUND, "use /v1/websocket\n")
        if not _authorized(request, api_key):
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


async def start_server(
    settings: ServerSettings, runtime: Runtime, sock: socket.socket | None = None
) -> Server:
    runtime.scheduler.start()

    async def handler(ws: ServerConnection) -> None:
        protocol = protocols.open_protocol(ws.request.path, runtime) if ws.request else None
        await serve_stream(WebsocketTransport(ws), runtime, protocol)

    return await serve(
        handler,
        sock=sock or listen(settings.host, settings.port),
        process_request=request_router(runtime, settings.api_key),
        select_subprotocol=web_page.select_subprotocol,
        max_size=HARD_MAX_FRAME,
        max_queue=64,
        ping_interval=20,
        ping_timeout=60,
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
    server.close()
    await server.wait_closed()
    await runtime.scheduler.stop()
    await engine.close()
