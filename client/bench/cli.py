"""Latency and accuracy benchmark over the protocol: any compatible server, a ramp of concurrent streams.

    python -m client.bench                                   # starts a local server, 1, 2 and 4 streams
    python -m client.bench --url ws://127.0.0.1:8000/v1/websocket --concurrency 1,4,16
    python -m client.bench --url ws://A/v1/websocket --label cpu --url ws://B/v1/websocket --label triton

Each stream is the same `--utterances-per-stream` recordings of real speech (the repository's data/, or
`--data DIR` / $WHISPER_STREAM_DATA), stream i starting i recordings further into the list, so every
concurrency measures the same utterances. Each recording is trimmed once by a fixed energy rule
(`client.kit.speech.energy_bounds`, no VAD) and followed by `--pause-s` of digital silence: every utterance's
end of speech is known exactly, not guessed by the server's detector. Frames of 32 ms are paced in real time
(`--speed`), each sent once its last sample would have been captured, as from a microphone. TTFS (time to
final) = arrival of the final covering an utterance - the moment its last sample was captured, in two modes
run side by side (`--modes`):
- server: the server's own endpointing decides (Baseten's default);
- flush: a client-side Silero VAD (the server's model, `--flush-stop-ms` 200 ms of silence ends speech, as
  pipecat's SileroVADAnalyzer with stop_secs 0.2) flushes when it fires, as pipecat does: Baseten's
  `{"type": "finalize"}`, Deepgram's `Finalize`, OpenAI's `input_audio_buffer.commit`.
`--protocol baseten,deepgram,openai` runs the same streams over each protocol, side by side.
For each repetition (`--repeats`), concurrency N, mode and server (`--url`, repeatable, compared in one run:
the first is the baseline of the ratio table), N such streams run at once (stream i starts
`i * --stagger-s` later). Measured per utterance (definitions in client/bench/metrics.py): TTFS, time to first
partial, partial cadence, unstable partial words, WER of the finals (Whisper's English normalizer for English,
its basic normalizer otherwise; with a local server also the same model offline on the same trimmed
recordings), and the server's lag over time. Per run:
- RTFx = total audio seconds of the N streams / wall seconds from the first frame to the last `finished`
  (throughput: about N x speed while the server keeps up);
- RTF = a stream's wall time from first frame to `finished` / its paced audio duration, the worst stream of
  the run (1.0: the last final came as the audio ended; 1.3: the server needed 30 % longer than real time).

Writes a table to stdout (per server, mode and N: n utterances and matched finals per repetition, p50 and
p95 as median [min-max] over the repetitions, pooled percentiles), `bench.json` (every number, the settings,
the servers, the machine and its load average) and PNG plots into `--out`. With no `--url` it starts
`python -m whisper_stream serve` itself on a free 127.0.0.1 port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import urlparse

from client.bench import metrics as bm
from client.bench import wire
from client.bench.report import format_table
from client.bench.runner import Target, run_bench
from client.kit.local_server import LocalServer
from client.kit.speech import DATA_ENV
from client.protocol import add_stream_options

MODES = ("server", "flush")


# -- command line --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whisper-stream-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--url",
        action="append",
        default=[],
        help="server WebSocket URL; repeat to compare servers (first = baseline). "
        "Default: start a local server",
    )
    p.add_argument("--label", action="append", default=[], help="a name per --url, in the same order")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="'Authorization: Api-Key KEY'; once for all servers or once per --url ('' = none); "
        "default env BASETEN_API_KEY",
    )
    p.add_argument("--model", action="append", default=[], help="model name per --url, for the report")
    p.add_argument(
        "--server-args",
        default="",
        help='extra arguments for the local server, e.g. "--model /models/small --cpu-threads 2"',
    )
    p.add_argument(
        "--concurrency",
        type=_int_list,
        default="1,2,4",  # a string, parsed by _int_list like the flag's value, so the help shows it as typed
        help="the ramp, comma-separated (default %(default)s)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"speech data folder with manifest.jsonl (default ${DATA_ENV}, else the repository's data/)",
    )
    p.add_argument(
        "--utterances-per-stream",
        type=int,
        default=4,
        help="K: every stream holds the same K utterances (default %(default)s)",
    )
    p.add_argument(
        "--modes",
        type=_str_list,
        default=list(MODES),
        help="server (server endpointing), flush (client VAD + finalize); default both",
    )
    p.add_argument(
        "--flush-stop-ms",
        type=int,
        default=200,
        help="client VAD silence before finalize (stop_secs; default %(default)s)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="repetitions of the whole ramp (default %(default)s)"
    )
    p.add_argument(
        "--speculative",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="set streaming_params.speculative_finals (default: not sent, the server's default: on)",
    )
    p.add_argument(
        "--pause-final-after-s",
        type=float,
        default=None,
        help="set streaming_params.pause_final_after_s (default: not sent, the server's default: 3; 0: off)",
    )
    p.add_argument(
        "--offline-wer",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="WER of the same model offline on the same audio (default: on with a local server)",
    )
    p.add_argument(
        "--pause-s", type=float, default=1.5, help="silence between utterances (default %(default)s)"
    )
    p.add_argument(
        "--max-utterance-s", type=float, default=30.0, help="skip longer recordings (default %(default)s)"
    )
    p.add_argument(
        "--exclude", type=_str_list, default=[], help="utterance ids to leave out, comma-separated"
    )
    p.add_argument("--ids", type=_str_list, default=None, help="use exactly these utterance ids, in order")
    p.add_argument(
        "--exclude-wer",
        type=_str_list,
        default=[],
        help="ids streamed but not scored (references that are other recognisers' output never are)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="pace: 1 = real time (default)")
    p.add_argument(
        "--protocol",
        type=_str_list,
        default=["baseten"],
        help="wire protocol(s), comma-separated: baseten (default), deepgram (/v1/listen), openai "
        "(/v1/realtime?intent=transcription); several run side by side against each server (the first is "
        "the ratio table's baseline); a hosted Deepgram or OpenAI endpoint compares the same way",
    )
    p.add_argument(
        "--openai-rate",
        type=int,
        default=24000,
        help="sample rate of the OpenAI protocol's audio (default %(default)s, OpenAI's own; 16000 sends the "
        "other protocols' very bytes, nothing resampled)",
    )
    p.add_argument(
        "--stagger-s",
        type=float,
        default=0.25,
        help="start stream i this many seconds x i later (default %(default)s)",
    )
    p.add_argument("--rest-s", type=float, default=1.0, help="pause between runs (default %(default)s)")
    add_stream_options(
        p,
        partials_default=True,
        connection=False,  # --url and --api-key repeat here, one per server
        language_help="utterances of this language, declared as audio_language",
    )
    p.add_argument(
        "--tolerance-s",
        type=float,
        default=bm.TOLERANCE_S,
        help="a final covers an utterance when its last segment ends >= speech end - this",
    )
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=180.0,
        help="wait this long for 'finished' (default %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="directory for bench.json and PNGs"
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.replace(" ", "").split(",") if x]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def make_targets(args: argparse.Namespace, local: LocalServer | None) -> list[Target]:
    """One target per server and protocol: each server's protocols side by side."""
    targets = _server_targets(args, local)
    if args.protocol == ["baseten"]:
        return targets
    return [
        Target(f"{t.label} {p}" if len(targets) > 1 else p, t.url, t.api_key, t.model, t.local, p)
        for t in targets
        for p in args.protocol
    ]


def _server_targets(args: argparse.Namespace, local: LocalServer | None) -> list[Target]:
    urls = args.url or ([local.url] if local else [])
    if args.label and len(args.label) != len(urls):
        raise SystemExit("give one --label per --url")
    keys = args.api_key or [os.environ.get("BASETEN_API_KEY") or ""]
    if len(keys) not in (1, len(urls)):
        raise SystemExit("give --api-key once, or once per --url")
    keys = keys * len(urls) if len(keys) == 1 else keys
    models = args.model or ([local.model] if local else ["unknown"])
    models = models * len(urls) if len(models) == 1 else models
    labels = args.label or [("local" if local else urlparse(u).netloc or u) for u in urls]
    if len(set(labels)) != len(labels):
        labels = [f"{lab}#{i}" for i, lab in enumerate(labels)]
    return [
        Target(lab, u, k or None, m, local=bool(local) and u == local.url)
        for lab, u, k, m in zip(labels, urls, keys, models, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [m for m in args.modes if m not in MODES]
    if bad or not args.modes or args.repeats < 1:
        raise SystemExit(f"--modes takes {', '.join(MODES)}; --repeats >= 1")
    unknown = [p for p in args.protocol if p not in wire.PROTOCOLS]
    if unknown or not args.protocol:
        raise SystemExit(f"--protocol takes {', '.join(wire.PROTOCOLS)} (comma-separated), not {unknown}")
    if args.offline_wer is None:
        args.offline_wer = not args.url
    args.out.mkdir(parents=True, exist_ok=True)
    local = None
    if not args.url:
        print("bench: starting a local server (no --url given) ...", file=sys.stderr, flush=True)
        local = LocalServer(
            "--max-streams",
            str(4 * max(args.concurrency)),
            *shlex.split(args.server_args),
            log=args.out / "server.log",
        )
        try:
            local.wait()
        except RuntimeError as exc:
            raise SystemExit(f"bench: {exc}") from None
    try:
        report = asyncio.run(run_bench(make_targets(args, local), args))
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        if local:
            local.stop()
    json_path = args.out / "bench.json"
    json_path.write_text(json.dumps(report, indent=1))
    for run in report["runs"]:
        for stream in run["streams"]:
            if stream["error"]:
                print(
                    f"bench: {run['label']} {run['mode']} N={run['concurrency']} #{run['repetition'] + 1} "
                    f"stream {stream['stream']}: {stream['error']}",
                    file=sys.stderr,
                )
    print(format_table(report))
    print(f"\nwrote {json_path}", end="")
    if not args.no_plots:
        from client.bench.plots import write_plots

        paths = write_plots(report, args.out)
        print(", " + ", ".join(str(p) for p in paths), end="")
    print()
    return 1 if any(r["summary"]["stream_errors"] for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
