"""Who may open a stream: the API key, however a client can send it, compared in constant time.

Headers: `Authorization: Api-Key K`, `Bearer K` or `Token K` (Deepgram's), exactly one Authorization header.
Browsers cannot set headers on a WebSocket, so the key is also accepted as `Sec-WebSocket-Protocol: api-key,
K` (the page's way: it stays out of URLs and access logs), Deepgram's `token, K`, OpenAI's `realtime,
openai-insecure-api-key.K`, or the query parameter `?api_key=K` (simplest, but URLs end up in logs and
history).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.http11 import Request

KEY_SUBPROTOCOL = "api-key"  # offered together with the key itself: ["api-key", KEY]
DEEPGRAM_SUBPROTOCOL = "token"  # Deepgram's browser form: ["token", KEY]
OPENAI_SUBPROTOCOL = "realtime"  # OpenAI's browser form: ["realtime", "openai-insecure-api-key." + KEY]
OPENAI_KEY_PREFIX = "openai-insecure-api-key."


def _same(given: str, api_key: str) -> bool:
    return hmac.compare_digest(given.encode(), api_key.encode())


def offered_subprotocols(request: Request) -> list[str]:
    return [p.strip() for v in request.headers.get_all("Sec-WebSocket-Protocol") for p in v.split(",")]


def authorized(request: Request, api_key: str | None) -> bool:
    """Any of the forms above carrying the key; True when the server has no key."""
    if not api_key:
        return True
    headers = request.headers.get_all("Authorization")
    if len(headers) > 1:
        return False  # ambiguous: which one would a proxy have checked?
    scheme, _, token = (headers[0] if headers else "").partition(" ")
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
    """Answer the marker the client offered (a browser fails the handshake otherwise); never the key.
    Other offers get no subprotocol: clients that offer their own keep working."""
    for marker in (KEY_SUBPROTOCOL, DEEPGRAM_SUBPROTOCOL, OPENAI_SUBPROTOCOL):
        if marker in subprotocols:
            return marker
    return None


def client_address(address: object) -> str:
    """What the per-client stream limit counts: the peer's IP address (a server behind a proxy sees the
    proxy's; there the proxy, e.g. Baseten's, enforces its own per-client limits)."""
    host = address[0] if isinstance(address, tuple) and address else address
    return str(host or "")


_SECRETS = re.compile(
    r"(?i)(authorization:\s*\S+\s+|api_key=|openai-insecure-api-key\.|sec-websocket-protocol:\s*token,\s*)"
    r"[^\s&,'\"]+"
)


class RedactSecrets(logging.Filter):
    """Keys out of the log, whatever the level: websockets logs every request's headers and path at DEBUG,
    and a key can come in the Authorization header, `?api_key=` or a subprotocol."""

    def __init__(self, api_key: str | None) -> None:
        super().__init__()
        self._key = api_key

    def filter(self, record: logging.LogRecord) -> bool:
        text = _SECRETS.sub(r"\1***", record.getMessage())
        if self._key:
            text = text.replace(self._key, "***")
        record.msg, record.args = text, ()
        return True
