"""The browser page (`GET /`) and the ways a browser can pass the API key.

The page is plain files in `whisper_stream/web/` (no build step, no CDN): served as they are, from memory,
with a Content-Security-Policy that lets the page talk to this server only. Browsers cannot set headers on a
WebSocket, so besides `Authorization: Api-Key K` / `Bearer K` / `Token K` (Deepgram's) the server accepts
the key as `Sec-WebSocket-Protocol: api-key, K` (the page's way: it stays out of URLs and access logs),
Deepgram's `token, K`, OpenAI's `realtime, openai-insecure-api-key.K`, or the query parameter `?api_key=K`
(simplest, but URLs end up in logs and history).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

KEY_SUBPROTOCOL = "api-key"  # offered together with the key itself: ["api-key", KEY]
DEEPGRAM_SUBPROTOCOL = "token"  # Deepgram's browser form: ["token", KEY]
OPENAI_SUBPROTOCOL = "realtime"  # OpenAI's browser form: ["realtime", "openai-insecure-api-key." + KEY]
OPENAI_KEY_PREFIX = "openai-insecure-api-key."

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# The page may load its own files and open a WebSocket to this server; nothing else (no CDN, no other host).
CSP = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _load() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("whisper_stream").joinpath("web").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            files["/" + entry.name] = (entry.read_bytes(), _TYPES[suffix])
    files["/"] = files["/index.html"]
    return files


class WebPage:
    """The static files, read once."""

    def __init__(self, api_key_required: bool) -> None:
        self.files = _load()
        config = {"api_key_required": api_key_required, "websocket_path": "/v1/websocket"}
        self.files["/config.json"] = (json.dumps(config).encode(), "application/json")

    def response(self, request: Request) -> Response | None:
        """The file for a plain GET of one of the page's paths; None otherwise (a WebSocket upgrade to `/`
        still gets the server's 404 naming /v1/websocket)."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        found = self.files.get(urlsplit(request.path).path)
        if found is None:
            return None
        body, content_type = found
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", CSP),
                ("Connection", "close"),
            ]
        )
        return Response(200, "OK", headers, body)


def _same(given: str, api_key: str) -> bool:
    return hmac.compare_digest(given.encode(), api_key.encode())


def offered_subprotocols(request: Request) -> list[str]:
    return [p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")]


def authorized(request: Request, api_key: str | None) -> bool:
    """Authorization header (Api-Key/Bearer), the subprotocol pair `api-key, KEY`, or `?api_key=KEY`."""
    if not api_key:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("api-key", "bearer", "token") and _same(token.strip(), api_key):
        return True
    offered = offered_subprotocols(request)
    for marker in (KEY_SUBPROTOCOL, DEEPGRAM_SUBPROTOCOL):
        if marker in offered and any(_same(p, api_key) for p in offered if p != marker):
            return True
    if any(p.startswith(OPENAI_KEY_PREFIX) and _same(p[len(OPENAI_KEY_PREFIX) :], api_key) for p in offered):
        return True
    return any(_same(k, api_key) for k in parse_qs(urlsplit(request.path).query).get("api_key", []))


def select_subprotocol(connection: object, subprotocols: Sequence[str]) -> str | None:
    """Answer `api-key` when the client offered it (a browser fails the handshake otherwise); never the key.

    Deepgram's `token` and OpenAI's `realtime` are answered the same way. Other offers get no subprotocol,
    as before: clients that offer their own keep working."""
    for marker in (KEY_SUBPROTOCOL, DEEPGRAM_SUBPROTOCOL, OPENAI_SUBPROTOCOL):
        if marker in subprotocols:
            return marker
    return None
