"""`make bench-pause`: what pause finals (`pause_final_after_s`) cost in accuracy and buy in time.

The English recordings of the data set (those with human references) are joined with 1.5 s pauses and
streamed through a local server, unpaced, once per setting (0 = off). Per setting: how many finals, their WER,
and for each recording the final that covers its end (the one a voice agent waits for): its length, and how
long the CPU engine takes to decode that window alone (median of `--repeats`; the time that comes after the
speech ends, whatever the server's load). Prints a table and writes `<out>/pause.json`. One machine, one run:
read the times as ratios within the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from client.bench.metrics import match_final, transcriptions
from client.kit.local_server import LocalServer
from client.kit.speech import SR, join_utterances, load_manifest, to_pcm16, wer
from client.protocol import Received, metadata, stream_pcm
from whisper_stream.config import parse_metadata
from whisper_stream.engines.interface import TranscribeRequest

SETTINGS = (0.0, 6.0, 4.0, 3.0, 2.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.bench.pause", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="speech data folder (default: data/)")
    p.add_argument("--settings", type=float, nargs="+", default=list(SETTINGS), help="values of the option")
    p.add_argument("--repeats", type=int, default=3, help="decodes per covering final (median)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)

    utts = [u for u in load_manifest(args.data) if u.language == "en" and u.scored]
    stream = join_utterances(utts, pause_s=1.5, trim=True)
    pcm = to_pcm16(stream.audio) + bytes(32000)
    reference = " ".join(u.text for u in utts)
    report: dict[str, Any] = {
        "utterances": len(utts),
        "audio_s": round(len(stream.audio) / SR, 1),
        "repeats": args.repeats,
    }

    covering: dict[float, list[tuple[float, float] | None]] = {}
    rows = []
    with LocalServer() as server:
        for after in args.settings:
            meta = metadata()  # the benchmark's settings: 300 ms silence, 30 ms padding, finals only
            meta["streaming_params"]["pause_final_after_s"] = after
            res = asyncio.run(stream_pcm(server.url, meta, pcm, speed=0, timeout_s=900))
            finals = [t for t in transcriptions([Received(0.0, m) for m in res.finals]) if t.segments]
            windows = []
            for start, end in zip(stream.speech_starts, stream.speech_ends, strict=True):
                f = match_final(finals, start, end)
                windows.append(None if f is None else (f.segments[0][0], f.segments[-1][1]))
            covering[after] = windows
            rows.append(
                {"pause_final_after_s": after, "finals": len(res.finals), "wer": wer([reference], [res.text])}
            )
            print(
                f"pause_final_after_s {after:g}: {len(res.finals)} finals, WER {rows[-1]['wer']:.1%}",
                flush=True,
            )

    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine(workers=1)
    options = parse_metadata({}).decode_options()
    engine.transcribe_sync([TranscribeRequest(stream.audio[: 5 * SR], options)])  # warm-up
    for row in rows:
        lengths, times = [], []
        for window in covering[row["pause_final_after_s"]]:
            if window is None:
                continue
            audio = stream.audio[int(window[0] * SR) : int(window[1] * SR)]
            runs = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                engine.transcribe_sync([TranscribeRequest(audio, options)])
                runs.append(time.perf_counter() - started)
            lengths.append(len(audio) / SR)
            times.append(statistics.median(runs))
        row.update(
            covered=f"{len(times)}/{len(utts)}",
            covering_final_s={"median": statistics.median(lengths), "max": max(lengths)},
            decode_ms={
                "median": 1000 * statistics.median(times),
                "p90": 1000 * float(np.percentile(times, 90)),
                "max": 1000 * max(times),
            },
        )
    report["rows"] = rows
    print()
    head = ("pause_final_after_s", "finals", "WER", "covered", "covering final s", "its decode ms")
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for r in rows:
        c, d = r["covering_final_s"], r["decode_ms"]
        label = "0 (off)" if r["pause_final_after_s"] == 0 else f"{r['pause_final_after_s']:g}"
        print(
            f"| {label} | {r['finals']} | {r['wer']:.1%} | {r['covered']} "
            f"| {c['median']:.1f} / {c['max']:.1f} (median / max) "
            f"| {d['median']:.0f} / {d['p90']:.0f} / {d['max']:.0f} (median / p90 / max) |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pause.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'pause.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
