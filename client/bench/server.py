"""Server-side benchmarks: what the server costs and whether its contracts hold under load.

    python -m client.bench.server load      # 8, 16, 32 real-time streams, finals only, then with partials
    python -m client.bench.server soak      # 2 streams for --duration-s (default 2 h), RSS and lag every 30 s
    python -m client.bench.server frontend  # real-time streams, --engine null: CPU per stream, loop lag
    python -m client.bench.server memory    # RSS per stream: idle streams, then unpaced ones not reading

Each run starts its own server (`client.kit.local_server`) so its CPU time and RSS can be read from /proc,
prints a table and writes `<out>/<command>.json`. Streams are real speech from the data set, trimmed and
joined with pauses of known length as `make bench` builds them; a final "covers" an utterance when its span
contains the utterance's end of speech, and latency is `make bench`'s TTFS (end of speech as captured ->
final). "Lost": utterances no final covers; "duplicated": utterances covered by more than one final. CPU is
the server process's user+system time over the run's wall time (100 % = one core). These machines are shared:
read each number with the load average printed next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from client.bench import metrics as bm
from client.bench.workload import build_streams, select_utterances
from client.kit.local_server import LocalServer
from client.kit.speech import JoinedStream, to_pcm16, wer
from client.protocol import metadata, stream_pcm

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MAX_UTTERANCE_S = 30.0  # as `make bench` (--max-utterance-s)


# -- measuring the server process ----------------------------------------------------------------------------


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """CPU time of a process, or of one of its threads (the main thread's id is the pid: the event loop)."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scrape(server: LocalServer) -> dict[str, float]:
    """The server's Prometheus metrics, flattened: `name{labels}` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(server.health.replace("/health", "/metrics"), timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def loop_lag_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float | None:
    """Quantile of the event-loop lag histogram between two scrapes (upper bucket bound, seconds)."""
    name = "whisper_stream_event_loop_lag_seconds_bucket"
    buckets = sorted(
        (float(k.split("le=")[1].rstrip("}")), after[k] - before.get(k, 0.0))
        for k in after
        if k.startswith(name + "{")
    )
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    for bound, count in buckets:
        if count >= q * total:
            return bound
    return buckets[-1][0]


class Sampler:
    """The server's RSS and CPU over a run (sampled every `every_s`)."""

    def __init__(self, pid: int, every_s: float = 0.5) -> None:
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float]] = []  # (t, rss MB)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sampler:
        self.t0, self.cpu0 = time.monotonic(), cpu_seconds(self.pid)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.t0, rss_mb(self.pid)))
            await asyncio.sleep(self.every_s)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.wall = time.monotonic() - self.t0
        self.cpu = cpu_seconds(self.pid) - self.cpu0

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.wall

    @property
    def rss_peak(self) -> float:
        return max(r for _, r in self.samples)


# -- streams and their accounting ----------------------------------------------------------------------------


def streams_of(n: int, per_stream: int, pause_s: float, data: Path | None) -> list[JoinedStream]:
    """`make bench`'s streams: its English utterances, trimmed (exact ends of speech), stream i rotated."""
    return build_streams(select_utterances(data, "en", MAX_UTTERANCE_S, []), n, per_stream, pause_s)


def account(stream: JoinedStream, finals: list[dict[str, Any]], tolerance_s: float = 0.3) -> dict[str, Any]:
    """Per utterance: which finals cover its end of speech, and when the covering final arrived."""
    spans = [
        (min(s["start_time"] for s in m["segments"]), max(s["end_time"] for s in m["segments"]), m)
        for m in finals
        if m["segments"]
    ]
    lost = duplicated = 0
    for end in stream.speech_ends:
        covering = [m for a, b, m in spans if a - tolerance_s <= end <= b + tolerance_s]
        lost += not covering
        duplicated += len(covering) > 1
    return {"utterances": len(stream.speech_ends), "lost": lost, "duplicated": duplicated}


class FullLoad:
    """The part of a run when all N streams send audio, from the last stream's first frame to the first
    stream's last: the server's CPU there is its cost at N streams. Over the whole run it is not: streams
    start 0.25 s apart, so the run's first and last seconds serve fewer streams (smaller VAD batches), and
    each stream's connection, metadata and closing are counted once per ~30 s of audio."""

    def __init__(self, pid: int, n: int) -> None:
        self.pid, self.n = pid, n
        self._started = 0
        # (monotonic time, server CPU seconds, its event-loop thread's CPU seconds)
        self.start: tuple[float, float, float] | None = None
        self.end: tuple[float, float, float] | None = None

    def progress(self, js: JoinedStream) -> Any:
        """`stream_pcm`'s on_progress for one stream."""
        total_s = len(js.audio) / 16000
        first = True

        def on_progress(sent_s: float) -> None:
            nonlocal first
            if first:
                first = False
                self._started += 1
                if self._started == self.n:
                    self.start = self._now()
            if sent_s >= total_s - 0.05 and self.end is None and self.start is not None:
                self.end = self._now()

        return on_progress

    def _now(self) -> tuple[float, float, float]:
        return time.monotonic(), cpu_seconds(self.pid), cpu_seconds(self.pid, thread=self.pid)

    @property
    def window_s(self) -> float | None:
        return self.end[0] - self.start[0] if self.start and self.end else None

    @property
    def core_percent_per_stream(self) -> float | None:
        if not (self.start and self.end and self.window_s):
            return None
        return 100 * (self.end[1] - self.start[1]) / self.window_s / self.n

    @property
    def loop_thread_percent_per_stream(self) -> float | None:
        """The event-loop thread's part: the one thread every socket's messages go through (the front end's
        worker threads can use other cores)."""
        if not (self.start and self.end and self.window_s):
            return None
        return 100 * (self.end[2] - self.start[2]) / self.window_s / self.n


async def run_streams(
    url: str, streams: list[JoinedStream], partials: bool, full_load: FullLoad | None = None
) -> list[dict[str, Any]]:
    async def one(i: int, js: JoinedStream) -> dict[str, Any]:
        await asyncio.sleep(0.25 * i)
        res = await stream_pcm(
            url,
            metadata(partials=partials),
            to_pcm16(js.audio),
            speed=1.0,
            timeout_s=600,
            on_progress=full_load.progress(js) if full_load else None,
        )
        latencies = []
        for end in js.speech_ends:
            arrivals = [
                r.t
                for r in res.received
                if r.message.get("type") == "transcription"
                and r.message["is_final"]
                and r.message["segments"]
                and max(s["end_time"] for s in r.message["segments"]) >= end - 0.3
            ]
            speech_end = bm.speech_time_at(
                res.audio_sent_s, end
            )  # TTFS's definition (client/bench/metrics.py)
            if arrivals and speech_end is not None:
                latencies.append(min(arrivals) - speech_end)
        lags = [m["server_lag_s"] for m in res.finals + res.partials if m.get("server_lag_s") is not None]
        return {
            **account(js, res.finals),
            "finished": res.finished,
            "errors": [e["body"]["message"] for e in res.errors],
            "latencies": latencies,
            "max_lag_s": max(lags, default=0.0),
            "wer": wer([" ".join(u.text for u in js.utterances)], [res.text]),
        }

    return await asyncio.gather(*(one(i, js) for i, js in enumerate(streams)))


# -- commands ------------------------------------------------------------------------------------------------


async def cmd_load(args: argparse.Namespace, server: LocalServer) -> dict[str, Any]:
    rows = []
    for partials in (False, True):
        for n in args.concurrency:
            streams = streams_of(n, args.utterances_per_stream, 1.5, args.data)
            before = scrape(server)
            async with Sampler(server.proc.pid) as sampler:
                results = await run_streams(server.url, streams, partials)
            after = scrape(server)
            lat = [x for r in results for x in r["latencies"]]
            rows.append(
                {
                    "streams": n,
                    "partials": partials,
                    "utterances": sum(r["utterances"] for r in results),
                    "lost": sum(r["lost"] for r in results),
                    "duplicated": sum(r["duplicated"] for r in results),
                    "refused_or_failed": sum(1 for r in results if not r["finished"] or r["errors"]),
                    "latency_p50_s": bm.percentile(lat, 50),
                    "latency_p95_s": bm.percentile(lat, 95),
                    "n_latencies": len(lat),
                    "partials_shed": after.get("whisper_stream_partials_shed_total", 0)
                    - before.get("whisper_stream_partials_shed_total", 0),
                    "max_lag_s": max(r["max_lag_s"] for r in results),
                    "wer_mean": statistics.mean(r["wer"] for r in results),
                    "server_cpu_percent": sampler.cpu_percent,
                    "server_rss_peak_mb": sampler.rss_peak,
                    "loadavg": os.getloadavg(),
                }
            )
            print(_row(rows[-1]), flush=True)
            await asyncio.sleep(args.rest_s)
    return {"runs": rows}


async def cmd_soak(args: argparse.Namespace, server: LocalServer) -> dict[str, Any]:
    streams = streams_of(2, 6, 1.5, args.data)
    samples: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.duration_s

    async def loop(js: JoinedStream) -> list[dict[str, Any]]:
        out = []
        while time.monotonic() < deadline:
            out += await run_streams(server.url, [js], partials=True)
        return out

    async def sample() -> None:
        t0 = time.monotonic()
        while time.monotonic() < deadline:
            metrics = scrape(server)
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0),
                    "rss_mb": rss_mb(server.proc.pid),
                    "streams": metrics.get("whisper_stream_streams_active", 0),
                    "loadavg": os.getloadavg()[0],
                }
            )
            print(f"  t={samples[-1]['t_s']:>6} s  RSS {samples[-1]['rss_mb']:.0f} MB", flush=True)
            await asyncio.sleep(args.sample_s)

    sampler = asyncio.create_task(sample())
    results = [r for rs in await asyncio.gather(*(loop(js) for js in streams)) for r in rs]
    sampler.cancel()
    warm = min(60.0, args.duration_s / 4)  # the first transcriptions allocate the model's buffers
    rss = [s["rss_mb"] for s in samples if s["t_s"] >= warm]
    half = len(rss) // 2
    return {
        "duration_s": args.duration_s,
        "samples": samples,
        "warm_up_s": warm,
        "rss_first_half_mean_mb": statistics.mean(rss[:half]) if half else None,
        "rss_second_half_mean_mb": statistics.mean(rss[half:]) if half else None,
        "rss_growth_mb": (statistics.mean(rss[half:]) - statistics.mean(rss[:half])) if half else None,
        "utterances": sum(r["utterances"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "duplicated": sum(r["duplicated"] for r in results),
        "max_lag_s": max((r["max_lag_s"] for r in results), default=0.0),
    }


async def cmd_frontend(args: argparse.Namespace, server: LocalServer) -> dict[str, Any]:
    rows = []
    for n in args.concurrency:
        streams = streams_of(n, args.utterances_per_stream, 1.5, args.data)
        before = scrape(server)
        full_load = FullLoad(server.proc.pid, n)
        async with Sampler(server.proc.pid) as sampler:
            await run_streams(server.url, streams, partials=True, full_load=full_load)
        after = scrape(server)
        audio_s = sum(len(s.audio) for s in streams) / 16000
        rows.append(
            {
                "streams": n,
                "server_cpu_percent": sampler.cpu_percent,
                # CPU per second of audio = share of one core per real-time stream over the whole run
                # (streams start staggered, so dividing the run's CPU by N would flatter it)
                "cpu_ms_per_audio_s": 1000 * sampler.cpu / audio_s,
                "core_percent_per_realtime_stream": 100 * sampler.cpu / audio_s,
                # the same while all N streams send: the cost at N streams (the issue #11 goal)
                "full_load_core_percent_per_stream": full_load.core_percent_per_stream,
                "full_load_loop_thread_percent_per_stream": full_load.loop_thread_percent_per_stream,
                "full_load_window_s": full_load.window_s,
                "loop_lag_p50_s": loop_lag_quantile(before, after, 0.5),
                "loop_lag_p99_s": loop_lag_quantile(before, after, 0.99),
                "loadavg": os.getloadavg(),
            }
        )
        print(_row(rows[-1]), flush=True)
    return {"engine": "null", "runs": rows}


async def cmd_memory(args: argparse.Namespace, server: LocalServer) -> dict[str, Any]:
    pid, n = server.proc.pid, args.streams
    # warm-up: the engine's working memory for full batches is the process's, not any stream's
    warm = [to_pcm16(js.audio) for js in streams_of(8, 4, 0.0, args.data)]
    await asyncio.gather(*(stream_pcm(server.url, metadata(partials=True), p, speed=0) for p in warm))
    base = rss_mb(pid)
    idle = [await websockets.connect(server.url) for _ in range(n)]
    for ws in idle:
        await ws.send(json.dumps(metadata()))
    await asyncio.sleep(2)
    idle_rss = rss_mb(pid)
    for ws in idle:
        await ws.close()
    await asyncio.sleep(2)
    audio = to_pcm16(streams_of(1, 4, 0.5, args.data)[0].audio)
    frame = (audio * 8)[: 1 << 20]

    async def unread() -> int:
        sent = 0
        async with websockets.connect(server.url, max_queue=1) as ws:
            await ws.send(json.dumps(metadata(partials=True, partial_interval_s=0.1)))
            try:
                while sent < (64 << 20):
                    await asyncio.wait_for(ws.send(frame), 5)
                    sent += len(frame)
            except (TimeoutError, websockets.ConnectionClosed):
                pass
        return sent

    peak = base
    task = asyncio.gather(*(unread() for _ in range(n)))
    while not task.done():
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.2)
    sent = await task
    return {
        "streams": n,
        "baseline_rss_mb": base,
        "idle_rss_per_stream_mb": (idle_rss - base) / n,
        "unread_unpaced_peak_rss_per_stream_mb": (peak - base) / n,
        "bytes_accepted_per_unread_stream_mb": statistics.mean(sent) / (1 << 20),
    }


def _row(row: dict[str, Any]) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.3g}")
        elif isinstance(v, tuple):
            parts.append(f"{k} " + "/".join(f"{x:.2f}" for x in v))
        else:
            parts.append(f"{k} {v}")
    return "  " + ", ".join(parts)


COMMANDS = {"load": cmd_load, "soak": cmd_soak, "frontend": cmd_frontend, "memory": cmd_memory}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m client.bench.server", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=sorted(COMMANDS))
    p.add_argument("--concurrency", default=None, help="streams per run, e.g. 8,16,32")
    p.add_argument("--streams", type=int, default=16, help="memory: streams of each kind")
    p.add_argument("--duration-s", type=float, default=7200.0, help="soak: how long (default 2 h)")
    p.add_argument("--sample-s", type=float, default=30.0, help="soak: sampling interval")
    p.add_argument("--utterances-per-stream", type=int, default=4)
    p.add_argument("--rest-s", type=float, default=3.0, help="pause between runs")
    p.add_argument("--data", type=Path, default=None, help="speech data folder (default: data/)")
    p.add_argument("--server-args", default="", help='extra arguments for the server, e.g. "--engine null"')
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    default = {"load": "8,16,32", "frontend": "16,32,64"}.get(args.command, "2")
    args.concurrency = [int(x) for x in (args.concurrency or default).split(",")]
    server_args = args.server_args.split()
    if args.command == "frontend" and "--engine" not in server_args:
        server_args += ["--engine", "null"]
    server_args += ["--max-streams", str(max(args.concurrency + [args.streams]) + 8)]
    server_args += ["--max-streams-per-client", str(max(args.concurrency + [args.streams]) + 8)]
    with LocalServer(*server_args) as server:
        print(f"# {args.command}: server {server.model} (pid {server.proc.pid}), loadavg {os.getloadavg()}")
        report = asyncio.run(COMMANDS[args.command](args, server))
    report = {"command": args.command, "server_args": server_args, "cpu_count": os.cpu_count(), **report}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.command}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
