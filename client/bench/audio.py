"""`make bench-audio`: the server's own CPU cost per second of audio, per encoding and sample rate.

Measures what every stream pays before the model: decoding, streaming resampling to 16 kHz (soxr) and Silero
VAD, fed in 32 ms frames as clients send them. Prints a table and writes JSON; numbers are CPU milliseconds
per audio second on the machine named in the output (1000 divided by them: real-time streams per core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from client.bench.report import machine_info
from client.kit.speech import data_dir, load_audio
from whisper_stream.dsp.audio import SAMPLE_WIDTH, AudioDecoder, encode, resample
from whisper_stream.dsp.vad import FRAME, SileroModel

CASES = [("pcm_s16le", 16000), ("pcm_f32le", 16000), ("pcm_mulaw", 8000), ("pcm_alaw", 8000),
         ("pcm_s16le", 8000), ("pcm_s16le", 44100), ("pcm_s16le", 48000)]  # fmt: skip


def measure(
    audio16k: np.ndarray, encoding: str, rate: int, vad: SileroModel, repeats: int
) -> dict[str, float]:
    data = encode(resample(audio16k, 16000, rate), encoding)
    frame = rate * 32 // 1000 * SAMPLE_WIDTH[encoding]
    seconds = len(audio16k) / 16000
    best = {"decode_ms_per_s": float("inf"), "vad_ms_per_s": float("inf")}
    for _ in range(repeats):
        decoder, stream, tail = AudioDecoder(encoding, rate), vad.stream(), np.zeros(0, np.float32)
        decode_s = vad_s = 0.0
        for i in range(0, len(data), frame):
            t0 = time.perf_counter()
            samples = np.concatenate([tail, decoder.decode(data[i : i + frame])])
            t1 = time.perf_counter()
            n = len(samples) // FRAME
            if n:
                stream(samples[: n * FRAME].reshape(n, FRAME))
            tail = samples[n * FRAME :]
            decode_s += t1 - t0
            vad_s += time.perf_counter() - t1
        best["decode_ms_per_s"] = min(best["decode_ms_per_s"], 1000 * decode_s / seconds)
        best["vad_ms_per_s"] = min(best["vad_ms_per_s"], 1000 * vad_s / seconds)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.bench.audio", description=__doc__.split("\n")[0])
    parser.add_argument("--file", type=Path, default=None, help="default: a 10 s LibriSpeech file of data/")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-results/audio.json"))
    args = parser.parse_args(argv)
    args.file = args.file or data_dir() / "speech" / "ls_1221-135766-0001.wav"
    audio = load_audio(args.file)
    vad = SileroModel()
    rows = []
    info = machine_info()
    machine = f"{info['cpu']} x{info['cpu_count']}, Python {info['python']}"
    print(f"audio front end cost, CPU ms per audio second (best of {args.repeats}); {machine}")
    print(f"{'encoding':<10} {'rate':>6} {'decode+resample':>16} {'silero vad':>11} {'total':>7}")
    for encoding, rate in CASES:
        r = measure(audio, encoding, rate, vad, args.repeats)
        total = r["decode_ms_per_s"] + r["vad_ms_per_s"]
        rows.append({"encoding": encoding, "sample_rate": rate, **r, "total_ms_per_s": total})
        print(
            f"{encoding:<10} {rate:>6} {r['decode_ms_per_s']:>16.3f} {r['vad_ms_per_s']:>11.3f} {total:>7.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "file": str(args.file), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
