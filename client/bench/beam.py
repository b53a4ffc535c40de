"""`make bench-beam`: what beam width buys and costs, against greedy and against faster-whisper's own decoder.

The English recordings of the data set (those with human references) are joined with 1.5 s pauses and
streamed through a local server greedily; the windows of its finals are then decoded again by the CPU engine
at every beam width (time per window, WER), and by faster-whisper's `transcribe()` with the same beam,
length and repetition penalties and temperatures on the same windows (its 30 s context, no timestamps).
Last, the joined stream goes through the server at every beam width (the WER a client sees). Prints a table
and writes `<out>/beam.json`. One pass per width on a shared machine: read the times as ratios within the
run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from client.kit.local_server import LocalServer
from client.kit.speech import SR, join_utterances, load_manifest, to_pcm16, wer
from client.protocol import metadata, stream_pcm
from whisper_stream.config import parse_metadata
from whisper_stream.engines.interface import TranscribeRequest

WIDTHS = (1, 2, 3, 4, 5)


def beam_options(width: int) -> Any:
    """The decoding options a client asking for `beam_width` gets (every other parameter at its default)."""
    meta = {"whisper_params": {"whisper_sampling_params": {"beam_width": width}}}
    return parse_metadata(meta).decode_options()


def faster_whisper_text(model: Any, audio: np.ndarray, options: Any, language: str = "en") -> str:
    """faster-whisper's own `transcribe()` of one window with the same beam, penalties and temperatures (its
    30 s context, no timestamps, no VAD, no previous text): the reference the CPU engine is held to."""
    segments, _ = model.transcribe(
        audio,
        language=language,
        beam_size=options.beam_width,
        length_penalty=options.length_penalty,
        repetition_penalty=options.repetition_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        temperature=list(options.temperatures),
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m client.bench.beam", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="speech data folder (default: data/)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)

    utts = [u for u in load_manifest(args.data) if u.language == "en" and u.scored]
    stream = join_utterances(utts, pause_s=1.5)
    pcm = to_pcm16(stream.audio) + bytes(32000)
    reference = " ".join(u.text for u in utts)
    report: dict[str, Any] = {"utterances": len(utts), "audio_s": round(len(stream.audio) / SR, 1)}

    with LocalServer() as server:
        stream_wer = {}
        windows: list[np.ndarray] = []
        for width in WIDTHS:
            meta = metadata(whisper_sampling_params={"beam_width": width})
            res = asyncio.run(stream_pcm(server.url, meta, pcm, speed=0, timeout_s=900))
            stream_wer[width] = wer([reference], [res.text])
            if width == 1:
                for m in res.finals:
                    if m["segments"]:
                        a, b = m["segments"][0]["start_time"], m["segments"][-1]["end_time"]
                        windows.append(stream.audio[int(a * SR) : int(b * SR)])
            print(f"stream through the server, beam {width}: WER {stream_wer[width]:.1%}", flush=True)
    report["stream_wer"] = stream_wer
    report["windows"] = len(windows)

    from faster_whisper import WhisperModel

    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine()
    reference_model = WhisperModel(engine.model_path, device="cpu", compute_type="int8")
    rows = []
    for width in WIDTHS:
        options = beam_options(width)
        texts, times = [], []
        for audio in windows:
            started = time.perf_counter()
            (result,) = engine.transcribe_sync([TranscribeRequest(audio, replace(options))])
            times.append(time.perf_counter() - started)
            texts.append(result.text)
        fw_texts = [faster_whisper_text(reference_model, audio, options) for audio in windows]
        row = {
            "beam_width": width,
            "s_per_window_median": statistics.median(times),
            "s_per_window_p10": float(np.percentile(times, 10)),
            "s_per_window_p90": float(np.percentile(times, 90)),
            "total_s": sum(times),
            "wer": wer([reference], [" ".join(texts)]),
            "faster_whisper_wer": wer([reference], [" ".join(fw_texts)]),
            "stream_wer": stream_wer[width],
        }
        rows.append(row)
        print(
            f"beam {width}: {row['s_per_window_median']:.2f} s/window ({row['s_per_window_p10']:.2f}-"
            f"{row['s_per_window_p90']:.2f}), total {row['total_s']:.1f} s, WER {row['wer']:.1%}, "
            f"faster-whisper {row['faster_whisper_wer']:.1%}, stream {row['stream_wer']:.1%}",
            flush=True,
        )
    report["rows"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "beam.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out / 'beam.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
