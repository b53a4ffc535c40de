"""Command line: `whisper-stream serve [--host H] [--port P] [--model DIR] [--engine ...] ...`.

The flags are generated from `ServerSettings` (one source of truth): each shows its help, its default and
its WHISPER_STREAM_* environment variable. Start-up failures (a bad setting, a busy port, a missing model)
are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import types
import typing
from typing import Any, Literal

from pydantic import ValidationError

from whisper_stream.settings import ENV_PREFIX, ServerSettings

PROG = "whisper-stream"


def _flag_type(annotation: Any) -> tuple[Any, tuple[str, ...] | None]:
    """(argparse type, choices) for a settings annotation such as `int`, `str | None`, `Literal[...]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _flag_type(args[0])
    if typing.get_origin(annotation) is Literal:
        return str, tuple(args)
    return annotation, None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `ServerSettings` field; unset flags are absent from the namespace (env/defaults win)."""
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (default: {field.default}; env {ENV_PREFIX}{name.upper()})"
        kind, choices = _flag_type(field.annotation)
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(flag, type=kind, choices=choices, default=argparse.SUPPRESS, help=help_text)


def _one_line(exc: ValidationError) -> str:
    errors = [
        f"--{str(e['loc'][0]).replace('_', '-')} ({ENV_PREFIX}{str(e['loc'][0]).upper()}): {e['msg']}"
        for e in exc.errors()
    ]
    return "invalid settings: " + "; ".join(errors)


def build_settings(argv: list[str] | None = None) -> ServerSettings:
    """Defaults < WHISPER_STREAM_* environment < flags. Invalid values exit 2 with one line."""
    parser = argparse.ArgumentParser(prog=PROG, description="Real-time streaming Whisper server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve the WebSocket endpoint",
        description="Serve ws://HOST:PORT/v1/websocket (Baseten's Whisper Streaming protocol), "
        "GET /health and GET /metrics.",
    )
    add_settings_flags(serve)
    args = vars(parser.parse_args(argv))
    args.pop("command")
    try:
        return ServerSettings(**args)
    except ValidationError as exc:
        parser.exit(2, f"{PROG}: {_one_line(exc)}\n")


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from whisper_stream.serving.auth import RedactSecrets
    from whisper_stream.serving.server import StartupError, run

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets(settings.api_key))

    try:
        asyncio.run(run(settings))
    except StartupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
