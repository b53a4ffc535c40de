"""Command line: `whisper-stream serve [--host H] [--port P] [--model DIR] [--engine ctranslate2|triton]`.

Every flag also reads WHISPER_STREAM_<NAME> from the environment (flags win).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from whisper_stream.settings import ServerSettings


def build_settings(argv: list[str] | None = None) -> ServerSettings:
    """Defaults < WHISPER_STREAM_* environment < flags."""
    env = ServerSettings()
    parser = argparse.ArgumentParser(prog="whisper-stream", description="Streaming Whisper server")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the WebSocket endpoint")
    s.add_argument("--host", default=env.host)
    s.add_argument("--port", type=int, default=env.port)
    s.add_argument("--engine", choices=["ctranslate2", "triton", "tensorrt_llm"], default=env.engine)
    s.add_argument("--engine-dir", default=env.engine_dir, help="TensorRT-LLM engines (engine tensorrt_llm)")
    s.add_argument("--model", default=env.model, help="CTranslate2 model directory, 'base' or a hub name")
    s.add_argument("--compute-type", default=env.compute_type)
    s.add_argument(
        "--full-context",
        action="store_true",
        default=env.full_context,
        help="CPU engine: encode every window as Whisper's full 30 s instead of its own length",
    )
    s.add_argument("--device", default=env.device)
    s.add_argument("--cpu-threads", type=int, default=env.cpu_threads)
    s.add_argument("--max-batch-size", type=int, default=env.max_batch_size)
    s.add_argument("--triton-url", default=env.triton_url)
    s.add_argument("--triton-model", default=env.triton_model)
    s.add_argument("--api-key", default=env.api_key)
    s.add_argument("--max-streams", type=int, default=env.max_streams)
    s.add_argument("--max-frame-bytes", type=int, default=env.max_frame_bytes)
    s.add_argument("--idle-timeout-s", type=float, default=env.idle_timeout_s)
    s.add_argument("--log-level", default=env.log_level)
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k != "command"}
    return ServerSettings.model_validate({**env.model_dump(), **values})


def main(argv: list[str] | None = None) -> int:
    settings = build_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from whisper_stream.server import run

    try:
        asyncio.run(run(settings))
    except RuntimeError as exc:  # e.g. model missing: a message, not a traceback
        print(f"whisper-stream: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
