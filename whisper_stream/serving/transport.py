"""What every adapter wraps its connection in (`Transport`: recv / send / close), the close codes, and the
one-line helpers each protocol's handshake and the stream driver share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

# Close codes (RFC 6455): 1001 going away, 1003 data we cannot accept, 1007 inconsistent payload, 1008 policy,
# 1009 too big, 1011 internal error, 1013 try again later.
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason is at most 123 bytes of UTF-8


class TransportClosed(Exception):
    """The peer went away."""


class Transport(Protocol):
    async def recv(self) -> str | bytes: ...  # raises TransportClosed

    async def send(self, text: str) -> None: ...  # raises TransportClosed

    async def close(self, code: int, reason: str) -> None: ...


@dataclass(frozen=True)
class Close:
    """Close the connection with `code` (a protocol's last word, or the driver's)."""

    code: int
    reason: str


def dumps(msg: dict[str, Any]) -> str:
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the client (e.g. in trace_id): escape, do not drop
        text = json.dumps(msg, separators=(",", ":"))
    return text


def close_reason(message: str) -> str:
    """`message` cut to a close frame's 123 bytes of UTF-8, never inside a character."""
    return message.encode("utf-8", "replace")[:MAX_REASON_BYTES].decode("utf-8", "ignore")


async def fail_transport(transport: Transport, message: dict[str, Any], code: int, reason: str) -> bool:
    """Send one error message and close with `code` (False, for a handshake that refuses)."""
    try:
        await transport.send(dumps(message))
    except TransportClosed:
        return False
    await transport.close(code, close_reason(reason))
    return False
