"""The browser page (`GET /`): plain files in `whisper_stream/serving/web/` (no build step, no CDN), served
as they are, from memory, with a Content-Security-Policy that lets the page talk to this server only. How a
browser passes the API key: `auth.py`.
"""

from __future__ import annotations

import json
from importlib import resources
from urllib.parse import urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

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
    for entry in resources.files("whisper_stream.serving").joinpath("web").iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            files["/" + entry.name] = (entry.read_bytes(), _TYPES[suffix])
    files["/"] = files["/index.html"]
    return files


class WebPage:
    """The static files, read once."""

    def __init__(self, api_key_required: bool, model: str, engine: str) -> None:
        self.files = _load()
        config = {
            "api_key_required": api_key_required,
            "websocket_path": "/v1/websocket",
            "model": model,  # named on the page: which Whisper is transcribing, and on what
            "engine": engine,
        }
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
