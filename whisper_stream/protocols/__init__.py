"""The wire protocols, equal adapters of the neutral core (Baseten's, Deepgram's, OpenAI's): each module only
translates names and shapes onto the same sessions, scheduler and engines. `handshake` checks a request
before the upgrade (so a bad parameter is an HTTP error in the protocol's own shape); `open_protocol` builds
the adapter for a stream.
"""

from __future__ import annotations

import json
import uuid
from urllib.parse import parse_qs, urlsplit

from whisper_stream.protocols import baseten, deepgram, openai_realtime
from whisper_stream.serving.driver import StreamProtocol
from whisper_stream.serving.runtime import Runtime

PATHS = (deepgram.PATH, openai_realtime.PATH)


def header_safe(text: str, limit: int = 200) -> str:
    """An HTTP header value from any text: printable ASCII only (others escaped), one line, bounded."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in escaped)[:limit]


def handshake(path: str, runtime: Runtime) -> tuple[int, str, dict[str, str]] | None:
    """None when the request may upgrade; else (HTTP status, JSON body, headers) in the protocol's shape."""
    url = urlsplit(path)
    if url.path.rstrip("/") == deepgram.PATH:
        try:
            deepgram.check(url.query, runtime)
        except deepgram.ParamError as exc:
            request_id = str(uuid.uuid4())
            body = json.dumps(deepgram.error_body(str(exc), request_id))
            return 400, body, {"dg-error": header_safe(str(exc)), "dg-request-id": request_id}
        return None
    if url.path.rstrip("/") == openai_realtime.PATH:
        intent = parse_qs(url.query).get("intent", [""])[0]
        if intent != "transcription":
            message = (
                f"intent={intent!r}: this server serves transcription sessions only; connect to "
                "/v1/realtime?intent=transcription"
            )
            error = {
                "type": "invalid_request_error",
                "code": "invalid_intent",
                "message": message,
                "param": "intent",
            }
            return 400, json.dumps({"error": error}), {}
        return None
    return None


def open_protocol(path: str, runtime: Runtime) -> StreamProtocol:
    """The adapter for an upgraded request (Baseten's on every other path)."""
    url = urlsplit(path)
    if url.path.rstrip("/") == deepgram.PATH:
        return deepgram.DeepgramProtocol(deepgram.check(url.query, runtime), runtime)
    if url.path.rstrip("/") == openai_realtime.PATH:
        return openai_realtime.OpenAIRealtimeProtocol(runtime)
    return baseten.BasetenProtocol(runtime)
