"""Running the benchmark: N streams at once against one server (`run_level`, one step per function), the
whole ramp of repetitions, concurrencies, modes and servers (`run_bench`), and the offline WER reference."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from dataclasses import dataclass
from typing import Any

from client.bench import metrics as bm
from client.bench import wire
from client.bench.report import NORMALIZERS, aggregate, compare, loadavg, machine_info, settings
from client.bench.workload import build_streams, client_flushes, select_utterances
from client.kit.speech import SR, JoinedStream, to_pcm16, wer
from client.protocol import StreamResult, is_transcription, metadata_from_args, stream_pcm
from whisper_stream.core.endpointer import VadOptions


@dataclass
class Target:
    label: str
    url: str
    api_key: str | None = None
    model: str = "unknown"
    local: bool = False  # started by the benchmark on this machine (so `machine` describes it too)
    protocol: str = "baseten"  # the wire protocol spoken to it (`wire.PROTOCOLS`)


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
    """N streams at once against one server: stream each, score each, summarise the run."""
    norm = _normalizer(args.language)
    load_before = loadavg()

    async def one(i: int, js: JoinedStream) -> dict[str, Any]:
        await asyncio.sleep(i * args.stagger_s)
        info = _stream_info(i, js)
        after = flushes[i] if mode == "flush" and flushes else None
        try:
            res = await stream_one(target, js, meta, args, progress, after)
        except Exception as exc:  # noqa: BLE001 - one failed stream is a result, not the end of the run
            return _failed_stream(info, exc)
        return score_stream(info, res, js, args, norm)

    results = await asyncio.gather(*(one(i, js) for i, js in enumerate(streams)))
    return {
        "label": target.label,
        "url": target.url,
        "model": target.model,
        "mode": mode,
        "repetition": repetition,
        "concurrency": len(streams),
        "summary": summarize_run(results, args.language, load_before),
        "streams": results,
    }


def _stream_info(i: int, js: JoinedStream) -> dict[str, Any]:
    return {
        "stream": i,
        "audio_s": round(len(js.audio) / SR, 3),
        "started": time.monotonic(),
        "utterance_ids": [u.id for u in js.utterances],
    }


async def stream_one(
    target: Target,
    js: JoinedStream,
    meta: dict[str, Any],
    args: argparse.Namespace,
    progress: Progress,
    after_frame: dict[int, str] | None,
) -> StreamResult:
    """One stream over the target's wire protocol; the protocol's flush after the frames of `after_frame`."""
    if target.protocol == "baseten":
        return await stream_pcm(
            target.url,
            meta,
            to_pcm16(js.audio),
            speed=args.speed,
            api_key=target.api_key,
            timeout_s=args.drain_timeout_s,
            on_progress=progress.tracker(),
            after_frame=after_frame,
        )
    stream = wire.stream_deepgram if target.protocol == "deepgram" else wire.stream_openai
    return await stream(
        target.url,
        to_pcm16(js.audio),
        speed=args.speed,
        language=args.language,
        partials=bool(meta["streaming_params"].get("enable_partial_transcripts")),
        api_key=target.api_key,
        timeout_s=args.drain_timeout_s,
        on_progress=progress.tracker(),
        flush_after=set(after_frame or ()),
        vad=VadOptions(args.vad_threshold, args.min_silence_ms, args.speech_pad_ms),
        **({"rate": args.openai_rate} if target.protocol == "openai" else {}),
    )


def _failed_stream(info: dict[str, Any], exc: Exception) -> dict[str, Any]:
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


def score_stream(
    info: dict[str, Any], res: StreamResult, js: JoinedStream, args: argparse.Namespace, norm: Any
) -> dict[str, Any]:
    """A finished stream's record: per-utterance metrics (TTFS, WER...), lag, finals, wall and drain time."""
    utts = bm.utterance_metrics(
        res.received,
        res.audio_sent_s,
        [(u.id, u.text) for u in js.utterances],
        js.speech_starts,
        js.speech_ends,
        normalize=norm,
        stream=info["stream"],
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
        "ended": info["started"] + end_t,
        "wall_s": round(end_t, 3),
        "drain_s": round(end_t - last_sent, 3),
        "rtf": round(end_t / (info["audio_s"] / args.speed), 4) if args.speed > 0 else None,
        "messages": len(res.received),
        "finals_speculative": sum(1 for m in final_msgs if (m.get("timing_info") or {}).get("speculative")),
        "flushes_sent": len(res.controls_sent),
        "utterances": [u.as_dict() for u in utts],
        "lag": bm.lag_series(res.received, res.audio_sent_s),
        "finals": [
            {"t": round(f.t, 4), "num": f.num, "start_s": f.start_s, "end_s": f.end_s, "text": f.text}
            for f in bm.transcriptions(res.received)
            if f.is_final
        ],
    }


def summarize_run(
    results: list[dict[str, Any]], language: str, load_before: list[float] | None
) -> dict[str, Any]:
    """One run's summary over its streams: the metrics' percentiles, WER, RTFx / RTF, drain, lag, load.
    Drops each stream's `started` / `ended` (monotonic times, meaningless in the JSON)."""
    wall = max(r["ended"] for r in results) - min(r["started"] for r in results)
    for r in results:
        r.pop("started"), r.pop("ended")
    utts = [bm.UtteranceMetrics(**u) for r in results for u in r["utterances"]]
    scored = [u for u in utts if u.scored]
    run_wer = wer([u.reference for u in scored], [u.hypothesis for u in scored], language) if scored else None
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
            "loadavg_after": loadavg(),
        }
    )
    return summary


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
    load_start = loadavg()
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
        "settings": settings(args, ramp, meta),
        "targets": [
            {"label": t.label, "url": t.url, "model": t.model, "api_key": bool(t.api_key), "local": t.local}
            for t in targets
        ],
        "machine": {**machine_info(), "loadavg_start": load_start, "loadavg_end": loadavg()},
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

        from whisper_stream.engines.model_source import resolve_model
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


def _normalizer(language: str) -> Any:
    from client.kit.speech import normalizer

    return normalizer(language if language == "en" else "other")
