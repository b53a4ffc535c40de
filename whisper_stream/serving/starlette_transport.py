"""A `transport.Transport` over a Starlette/FastAPI WebSocket: how the Truss model (and any ASGI host) serves.

The mirror of `server.WebsocketTransport`. Truss hands the model a `fastapi.WebSocket` that is already
accepted, so nothing here accepts. It reads raw ASGI messages rather than `receive_text`/`receive_bytes`
because a stream mixes text (metadata, control) and binary (audio) frames. Starlette has signalled a gone
peer in several ways across versions (`WebSocketDisconnect`, `RuntimeError` for use after close, `OSError`
from the server), so all of them become `TransportClosed`, which is what `serve_stream` understands.
"""

from __future__ import annotations

import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from whisper_stream.serving.transport import TransportClosed


class StarletteTransport:
    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws

    async def recv(self) -> str | bytes:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise TransportClosed from exc
        if message["type"] == "websocket.disconnect":
            raise TransportClosed
        text = message.get("text")
        if text is not None:
            return text
        return message.get("bytes") or b""

    async def send(self, text: str) -> None:
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise TransportClosed from exc

    async def close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.DISCONNECTED:
            return  # already closed by us: the host's own close after return must not fail either
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self._ws.close(code, reason)
