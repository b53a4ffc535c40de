"""Latency and accuracy benchmark over the protocol: any compatible server, a ramp of concurrent streams.

    python -m client.bench                                   # starts a local server, 1, 2 and 4 streams
    python -m client.bench --url ws://127.0.0.1:8000/v1/websocket --concurrency 1,4,16
    python -m client.bench --url ws://A/v1/websocket --label cpu --url ws://B/v1/websocket --label triton

Each stream is the same `--utterances-per-stream` recordings of real speech (the repository's data/, or
`--data DIR` / $WHISPER_STREAM_DATA), stream i starting i recordings further into the list, so every
concurrency measures the same utterances. Each recording is trimmed once by a fixed energy rule
(`client.speech.energy_bounds`, no VAD) and followed by `--pause-s` of digital silence: every utterance's end
of speech is known exactly, not guessed by the server's detector. Frames of 32 ms are paced in real time
(`--speed`), each sent once its last sample would have been captured, as from a microphone. TTFS (time to
final) = arrival of the final covering an utterance - the moment its last sample was captured, in two modes
run side by side (`--modes`):
- server: the server's own endpointing decides (Baseten's default);
- flush: a client-side Silero VAD (the server's model, `--flush-stop-ms` 200 ms of silence ends speech, as
  pipecat's SileroVADAnalyzer with stop_secs 0.2) sends `{"type": "finalize"}` when it fires, as pipecat does.
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
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from client.bench import metrics as bm
from client.bench import wire
from client.kit.local_server import LocalServer
from client.kit.speech import (
    DATA_ENV,
    SR,
    JoinedStream,
    Utterance,
    join_utterances,
    load_manifest,
    to_pcm16,
    wer,
)
from client.protocol import add_stream_options, is_transcription, metadata_from_args, stream_pcm

MODES = ("server", "flush")
FINALIZE = json.dumps({"type": "finalize"})

NORMALIZERS = {
    "en": "Whisper's English normalizer (whisper_normalizer.english.EnglishTextNormalizer), markup removed",
    "other": "Whisper's basic normalizer (whisper_normalizer.basic.BasicTextNormalizer), markup removed",
}


@dataclass
class Target:
    label: str
    url: str
    api_key: str | None = None
    model: str = "unknown"
    local: bool = False  # started by the benchmark on this machine (so `machine` describes it too)


# -- the streams ---------------------------------------------------------------------------------------------


def select_utterances(
    data: Path | None,
    language: str,
    max_duration_s: float,
    exclude: list[str],
    ids: list[str] | None = None,
) -> list[Utterance]:
    """The manifest's utterances in `language` (or exactly `ids`, in that order) that fit the limits."""
    try:
        every = load_manifest(data)
    except FileNotFoundError as exc:
        raise SystemExit(f"whisper-stream-bench: {exc}") from None
    if ids:
        by_id = {u.id: u for u in every}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise SystemExit(f"not in the manifest: {', '.join(missing)}")
        return [by_id[i] for i in ids]
    utts = [
        u
        for u in every
        if (language == "auto" or u.language == language)
        and u.duration_s <= max_duration_s
        and u.id not in exclude
    ]
    if not utts:
        raise SystemExit(f"no utterance in the manifest for language {language!r} under {max_duration_s} s")
    return utts


def build_streams(utts: list[Utterance], n: int, per_stream: int, pause_s: float) -> list[JoinedStream]:
    """Every stream holds the same K utterances (the first K selected), stream i rotated by i: the same speech
    at every concurrency, but streams do not speak the same words at the same moment. Recordings are trimmed
    (`energy_bounds`), so each speech end is exact."""
    chosen = [utts[j % len(utts)] for j in range(per_stream)]
    return [
        join_utterances([chosen[(i + j) % per_stream] for j in range(per_stream)], pause_s=pause_s, trim=True)
        for i in range(n)
    ]


def client_flushes(audio: np.ndarray, stop_ms: int, threshold: float) -> tuple[dict[int, str], list[float]]:
    """pipecat's client side: Silero (the server's model) on the audio as it is sent, 512-sample frames;
    when `stop_ms` of silence ends speech (the same rule as the server's, `Endpointer`), `finalize` is sent
    right after that frame. -> ({frame index: finalize}, the speech ends the client VAD found, stream s)."""
    from whisper_stream.endpointer import Endpointer, silence_frames
    from whisper_stream.vad import FRAME, SileroModel

    ep = Endpointer(threshold, silence_frames(stop_ms))
    after: dict[int, str] = {}
    ends: list[float] = []
    for i, p in enumerate(SileroModel().probabilities(audio)):
        if ep.push(float(p), i * FRAME) == "end":
            assert ep.silence_start is not None
            after[i] = FINALIZE
            ends.append(ep.silence_start / SR)
            ep.close()
    return after, ends


# -- one run: N streams against one server -------------------------------------------------------------------


class Progress:
    """A tqdm bar over the seconds of audio sent (all runs together); silent when tqdm is missing or off."""

    def __init__(self, total_s: float, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(
                    total=round(total_s, 1),
                    unit="s",
                    desc="bench",
                    file=sys.stderr,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0,  # a log file gets a line per 30 s
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s audio "
                    "[{elapsed}<{remaining}]",
                )
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if self.bar:
            self.bar.set_description_str(text)

    def tracker(self) -> Any:
        last = [0.0]

        def update(sent_s: float) -> None:
            if self.bar and sent_s - last[0] >= 0.5:
                self.bar.update(sent_s - last[0])
                last[0] = sent_s

        return update

    def close(self) -> None:
        if self.bar:
            self.bar.close()


async def run_level(
    target: Target,
    streams: list[JoinedStream],
    meta: dict[str, Any],
    args: argparse.Namespace,
    progress: Progress,
    mode: str = "server",
    flushes: list[dict[int, str]] | None = None,
    repetition: int = 0,
) -> dict[str, Any]:
    norm = _normalizer(args.language)
    load_before = _loadavg()

    async def one(i: int, js: JoinedStream) -> dict[str, Any]:
        await asyncio.sleep(i * args.stagger_s)
        started = time.monotonic()
        info: dict[str, Any] = {
            "stream": i,
            "audio_s": round(len(js.audio) / 16000, 3),
            "started": started,
            "utterance_ids": [u.id for u in js.utterances],
        }
        try:
            protocol = getattr(args, "protocol", "baseten")
            if protocol == "baseten":
                res = await stream_pcm(
                    target.url,
                    meta,
                    to_pcm16(js.audio),
                    speed=args.speed,
                    api_key=target.api_key,
                    timeout_s=args.drain_timeout_s,
                    on_progress=progress.tracker(),
                    after_frame=flushes[i] if mode == "flush" and flushes else None,
                )
            else:  # the server mode only (checked with the arguments)
                stream = wire.stream_deepgram if protocol == "deepgram" else wire.stream_openai
                res = await stream(
                    target.url,
                    to_pcm16(js.audio),
                    speed=args.speed,
                    language=args.language,
                    partials=bool(meta["streaming_params"].get("enable_partial_transcripts")),
                    api_key=target.api_key,
                    timeout_s=args.drain_timeout_s,
                    on_progress=progress.tracker(),
                )
        except Exception as exc:  # noqa: BLE001 - one failed stream is a result, not the end of the run
            return {
                **info,
                "error": f"{type(exc).__name__}: {exc}",
                "server_errors": [],
                "finished": False,
                "finals_speculative": 0,
                "flushes_sent": 0,
                "ended": time.monotonic(),
                "wall_s": None,
                "drain_s": None,
                "rtf": None,
                "messages": 0,
                "utterances": [],
                "lag": [],
                "finals": [],
            }
        utts = bm.utterance_metrics(
            res.received,
            res.audio_sent_s,
            [(u.id, u.text) for u in js.utterances],
            js.speech_starts,
            js.speech_ends,
            normalize=norm,
            stream=i,
            tolerance_s=args.tolerance_s,
        )
        finished = next(
            (
                r.t
                for r in res.received
                if r.message.get("type") == "end_audio"
                and (r.message.get("body") or {}).get("status") == "finished"
            ),
            None,
        )
        unscored = set(args.exclude_wer) | {u.id for u in js.utterances if not u.scored}
        for u in utts:
            u.scored = u.id not in unscored
        final_msgs = [r.message for r in res.received if is_transcription(r.message, True)]
        last_sent = res.audio_sent_s[-1][0] if res.audio_sent_s else 0.0
        end_t = finished if finished is not None else (res.received[-1].t if res.received else last_sent)
        return {
            **info,
            "error": None if res.finished else f"no 'finished' (close {res.close_code} {res.close_reason})",
            "server_errors": [m["body"] for m in res.errors],
            "finished": res.finished,
            "ended": started + end_t,
            "wall_s": round(end_t, 3),
            "drain_s": round(end_t - last_sent, 3),
            "rtf": round(end_t / (info["audio_s"] / args.speed), 4) if args.speed > 0 else None,
            "messages": len(res.received),
            "finals_speculative": sum(
                1 for m in final_msgs if (m.get("timing_info") or {}).get("speculative")
            ),
            "flushes_sent": len(res.controls_sent),
            "utterances": [u.as_dict() for u in utts],
            "lag": bm.lag_series(res.received, res.audio_sent_s),
            "finals": [
                {"t": round(f.t, 4), "num": f.num, "start_s": f.start_s, "end_s": f.end_s, "text": f.text}
                for f in bm.transcriptions(res.received)
                if f.is_final
            ],
        }

    results = await asyncio.gather(*(one(i, js) for i, js in enumerate(streams)))
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    for r in results:
        r.pop("started"), r.pop("ended")
    utts = [bm.UtteranceMetrics(**u) for r in results for u in r["utterances"]]
    scored = [u for u in utts if u.scored]
    run_wer = (
        wer([u.reference for u in scored], [u.hypothesis for u in scored], args.language) if scored else None
    )
    summary = bm.summarize(utts, run_wer)
    total_audio = sum(r["audio_s"] for r in results if r["finished"])  # audio the server got through
    lags = [p["server_lag_s"] for r in results for p in r["lag"] if p["server_lag_s"] is not None]
    rtfs = [r["rtf"] for r in results if r.get("rtf") is not None and r["finished"]]
    drains = [r["drain_s"] for r in results if r["finished"]]
    summary.update(
        {
            "streams": len(results),
            "stream_errors": sum(1 for r in results if r["error"]),
            "audio_s": round(total_audio, 3),
            "wall_s": round(wall, 3),
            "rtfx": round(total_audio / wall, 4) if wall > 0 and total_audio else None,
            "rtf_max": max(rtfs) if rtfs else None,
            "drain_p50_s": bm.percentile(drains, 50),
            "drain_p95_s": bm.percentile(drains, 95),
            "server_lag_max_s": max(lags) if lags else None,
            "finals_speculative": sum(r["finals_speculative"] for r in results),
            "finals": sum(len(r["finals"]) for r in results),
            "loadavg_before": load_before,
            "loadavg_after": _loadavg(),
        }
    )
    return {
        "label": target.label,
        "url": target.url,
        "model": target.model,
        "mode": mode,
        "repetition": repetition,
        "concurrency": len(streams),
        "summary": summary,
        "streams": results,
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _spread(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}


def aggregate(runs: list[dict[str, Any]], language: str = "en") -> list[dict[str, Any]]:
    """Per server, mode and N over the repetitions: n and matched, each percentile as min / median / max of
    the repetitions' values, pooled percentiles over every utterance of every repetition, pooled WER."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["label"], r.get("mode", "server"), r["concurrency"]), []).append(r)
    rows = []
    for (label, mode, n), rs in groups.items():
        utts = [u for r in rs for s in r["streams"] for u in s["utterances"]]
        lat = [u["latency_s"] for u in utts if u["latency_s"] is not None]
        scored = [u for u in utts if u.get("scored", True)]
        loads = [r["summary"].get(k) for r in rs for k in ("loadavg_before", "loadavg_after")]
        finals = sum(r["summary"].get("finals", 0) for r in rs)
        rows.append(
            {
                "label": label,
                "mode": mode,
                "concurrency": n,
                "repetitions": len(rs),
                "utterances_per_repetition": rs[0]["summary"]["utterances"],
                "utterances": sum(r["summary"]["utterances"] for r in rs),
                "matched": sum(r["summary"]["finals_matched"] for r in rs),
                "latency_p50_s": _spread([r["summary"]["latency_p50_s"] for r in rs]),
                "latency_p95_s": _spread([r["summary"]["latency_p95_s"] for r in rs]),
                "pooled_p50_s": bm.percentile(lat, 50),
                "pooled_p95_s": bm.percentile(lat, 95),
                "pooled_max_s": max(lat) if lat else None,
                "rtfx": _spread([r["summary"]["rtfx"] for r in rs]),
                "rtf_max": max((r["summary"]["rtf_max"] or 0 for r in rs), default=None) or None,
                "stream_errors": sum(r["summary"]["stream_errors"] for r in rs),
                "wer": wer([u["reference"] for u in scored], [u["hypothesis"] for u in scored], language)
                if scored
                else _median_or_none([r["summary"].get("wer") for r in rs]),
                "speculative_ratio": sum(r["summary"].get("finals_speculative", 0) for r in rs) / finals
                if finals
                else None,
                "loadavg_1min": _spread([x[0] for x in loads if x]),
            }
        )
    return rows


def _median_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# -- the whole ramp ------------------------------------------------------------------------------------------


async def run_bench(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    utts = select_utterances(args.data, args.language, args.max_utterance_s, args.exclude, args.ids)
    ramp = sorted(set(args.concurrency))
    all_streams = build_streams(utts, max(ramp), args.utterances_per_stream, args.pause_s)
    flushes = [client_flushes(s.audio, args.flush_stop_ms, args.vad_threshold) for s in all_streams]
    flush_frames = [f for f, _ in flushes]
    meta = {**metadata_from_args(args), "include_timing_info": True}  # says which finals were speculative
    if args.speculative is not None:  # our server's extension; not sent unless asked, so others accept it
        meta["streaming_params"]["speculative_finals"] = args.speculative
    if args.pause_final_after_s is not None:  # likewise
        meta["streaming_params"]["pause_final_after_s"] = args.pause_final_after_s
    per_run = [sum(len(s.audio) / 16000 for s in all_streams[:n]) for n in ramp]
    progress = Progress(
        sum(per_run) * len(targets) * len(args.modes) * args.repeats, enabled=not args.no_progress
    )
    runs = []
    started = time.time()
    load_start = _loadavg()
    try:
        # modes and servers alternate inside each N and repetition: slow drift of the machine hits all alike
        for rep in range(args.repeats):
            for n in ramp:
                for mode in args.modes:
                    for target in targets:
                        progress.describe(f"{target.label} {mode} N={n} #{rep + 1}")
                        runs.append(
                            await run_level(
                                target, all_streams[:n], meta, args, progress, mode, flush_frames, rep
                            )
                        )
                        if args.rest_s:
                            await asyncio.sleep(args.rest_s)
    finally:
        progress.close()
    offline = offline_wer(all_streams[0], args) if args.offline_wer else None
    return {
        "started_unix": started,
        "duration_s": round(time.time() - started, 2),
        "settings": _settings(args, ramp, meta),
        "targets": [
            {"label": t.label, "url": t.url, "model": t.model, "api_key": bool(t.api_key), "local": t.local}
            for t in targets
        ],
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": _loadavg()},
        "offline": offline,
        "normalizer": NORMALIZERS["en" if args.language == "en" else "other"],
        "streams": [
            {
                "stream": i,
                "utterances": [u.id for u in s.utterances],
                "audio_s": len(s.audio) / 16000,
                "speech_starts": s.speech_starts,
                "speech_ends": s.speech_ends,
                "client_vad_ends": ends,
                "finalize_after_frames": sorted(f),
            }
            for i, (s, (f, ends)) in enumerate(zip(all_streams, flushes, strict=True))
        ],
        "runs": runs,
        "aggregate": aggregate(runs, args.language),
        "comparison": compare(runs, [t.label for t in targets]),
    }


def offline_wer(stream: JoinedStream, args: argparse.Namespace) -> dict[str, Any] | None:
    """The same model offline (faster-whisper, beam 1, no previous-text conditioning) on the same trimmed
    recordings the streams carry: the reference the finals' WER is compared with. Local default model only."""
    try:
        from faster_whisper import WhisperModel

        from whisper_stream.model_source import resolve_model
    except ImportError as exc:
        return {"error": f"offline WER needs faster-whisper: {exc}"}
    name = server_model(args.server_args)
    model = WhisperModel(resolve_model(name), device="cpu", compute_type="int8")
    refs, hyps = [], []
    for u, a, b in zip(stream.utterances, stream.speech_starts, stream.speech_ends, strict=True):
        if not u.scored or u.id in args.exclude_wer:
            continue
        audio = stream.audio[round(a * SR) : round(b * SR)]
        segments, _ = model.transcribe(
            audio, language=None if args.language == "auto" else args.language, beam_size=1,
            condition_on_previous_text=False,
        )  # fmt: skip
        refs.append(u.text)
        hyps.append(" ".join(s.text.strip() for s in segments))
    score = wer(refs, hyps, args.language) if refs else None
    return {"model": name or "default", "wer": score, "n": len(refs)}


def server_model(server_args: str) -> str | None:
    """The model the local server loads: `--model X` or `--model=X` in its arguments, else
    $WHISPER_STREAM_MODEL (which LocalServer passes on), else None (the default)."""
    name = None
    for i, arg in enumerate(argv := shlex.split(server_args)):
        if arg == "--model" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--model="):
            name = arg.split("=", 1)[1]
    return name or os.environ.get("WHISPER_STREAM_MODEL") or None


def compare(runs: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Per mode, N and server: the repetitions' median latency p50/p95 and RTFx as ratios to the first
    server's (the baseline)."""
    if len(labels) < 2:
        return []
    by = {(a["label"], a["mode"], a["concurrency"]): a for a in aggregate(runs)}

    def med(row: dict[str, Any], key: str) -> float | None:
        return row[key]["median"] if row.get(key) else None

    out = []
    for mode, n in sorted({(m, c) for _, m, c in by}):
        base = by.get((labels[0], mode, n))
        for label in labels[1:]:
            cur = by.get((label, mode, n))
            if not base or not cur:
                continue
            row: dict[str, Any] = {"mode": mode, "concurrency": n, "label": label, "baseline": labels[0]}
            for key in ("latency_p50_s", "latency_p95_s", "rtfx"):
                c, b = med(cur, key), med(base, key)
                row[f"{key}_ratio"] = c / b if c and b else None
            out.append(row)
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "client_host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
    }


def _settings(args: argparse.Namespace, ramp: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    skip = {"url", "label", "api_key", "model", "server_args"}
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    return {**out, "concurrency": ramp, "metadata": meta, "server_args": args.server_args}


def _normalizer(language: str) -> Any:
    from client.kit.speech import normalizer

    return normalizer(language if language == "en" else "other")


# -- output --------------------------------------------------------------------------------------------------


def _f(v: Any, spec: str = ".2f", unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _ms_spread(v: dict[str, float] | None) -> str:
    if not v:
        return "-"
    return f"{v['median'] * 1000:.0f} [{v['min'] * 1000:.0f}-{v['max'] * 1000:.0f}]"


def format_table(report: dict[str, Any]) -> str:
    rows = [
        (
            "server",
            "mode",
            "N",
            "reps",
            "n/rep",
            "matched",
            "TTFS p50 ms med [min-max]",
            "TTFS p95 ms med [min-max]",
            "pooled p50/p95/max ms",
            "WER",
            "spec",
            "RTF max",
            "load 1m",
            "errors",
        )
    ]
    for a in report.get("aggregate") or aggregate(report["runs"]):
        keys = ("pooled_p50_s", "pooled_p95_s", "pooled_max_s")
        pooled = "/".join("-" if a[k] is None else f"{a[k] * 1000:.0f}" for k in keys)
        load = a["loadavg_1min"]
        rows.append(
            (
                a["label"],
                a["mode"],
                str(a["concurrency"]),
                str(a["repetitions"]),
                str(a["utterances_per_repetition"]),
                f"{a['matched']}/{a['utterances']}",
                _ms_spread(a["latency_p50_s"]),
                _ms_spread(a["latency_p95_s"]),
                pooled,
                _f(a["wer"], ".1%"),
                _f(a["speculative_ratio"], ".0%"),
                _f(a["rtf_max"], ".2f"),
                f"{load['min']:.1f}-{load['max']:.1f}" if load else "-",
                str(a["stream_errors"]),
            )
        )
    lines = [_columns(rows)]
    if report.get("comparison"):
        comp = [("mode", "N", "server", "vs", "lat p50 ratio", "lat p95 ratio", "RTFx ratio")]
        for c in report["comparison"]:
            comp.append(
                (
                    c.get("mode", "server"),
                    str(c["concurrency"]),
                    c["label"],
                    c["baseline"],
                    _f(c["latency_p50_s_ratio"], ".2f", "x"),
                    _f(c["latency_p95_s_ratio"], ".2f", "x"),
                    _f(c["rtfx_ratio"], ".2f", "x"),
                )
            )
        lines += ["", _columns(comp)]
    offline = report.get("offline")
    if offline and offline.get("wer") is not None:
        n = offline["n"]
        lines += ["", f"offline WER (same model, same trimmed recordings, n={n}): {offline['wer']:.1%}"]
    lines += [
        "",
        f"WER normalizer: {report['normalizer']}",
        "TTFS = arrival of the final covering an utterance - the moment its last sample was captured (the "
        "end of the energy-trimmed recording, followed by digital silence; frames leave once captured); "
        "p50/p95 per repetition (nearest rank: with n <= 20 a p95 is the maximum), median [min-max] over "
        "repetitions; pooled = every utterance of every repetition; n/rep = utterances per repetition; "
        "spec = finals decoded speculatively; "
        "load 1m = the machine's 1-minute load average around the runs",
    ]
    return "\n".join(lines)


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


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
        "--concurrency", type=_int_list, default=[1, 2, 4], help="the ramp, e.g. 1,2,4,8 (default)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"speech data folder with manifest.jsonl (default ${DATA_ENV}, else the repository's data/)",
    )
    p.add_argument(
        "--utterances-per-stream", type=int, default=4, help="K: every stream holds the same K utterances"
    )
    p.add_argument(
        "--modes",
        type=_str_list,
        default=list(MODES),
        help="server (server endpointing), flush (client VAD + finalize); default both",
    )
    p.add_argument(
        "--flush-stop-ms", type=int, default=200, help="client VAD silence before finalize (stop_secs)"
    )
    p.add_argument("--repeats", type=int, default=3, help="repetitions of the whole ramp (default 3)")
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
    p.add_argument("--pause-s", type=float, default=1.5, help="silence between utterances (default 1.5)")
    p.add_argument("--max-utterance-s", type=float, default=30.0, help="skip longer recordings")
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
        choices=wire.PROTOCOLS,
        default="baseten",
        help="wire protocol: baseten (default), deepgram (/v1/listen) or openai (/v1/realtime "
        "?intent=transcription); the same figures for each, so a hosted Deepgram or OpenAI endpoint compares",
    )
    p.add_argument("--stagger-s", type=float, default=0.25, help="start stream i this many seconds x i later")
    p.add_argument("--rest-s", type=float, default=1.0, help="pause between runs")
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
    p.add_argument("--drain-timeout-s", type=float, default=180.0, help="wait this long for 'finished'")
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
    if args.protocol != "baseten" and "flush" in args.modes:
        raise SystemExit(f"--modes flush sends Baseten's finalize: use --modes server with {args.protocol}")
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
