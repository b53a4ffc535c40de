"""The benchmark's PNG plots, drawn from the report dict alone (so a saved JSON can be re-plotted later).

- latency_distribution.png: end-of-speech -> final latency of every utterance, one box (plus the points) per
  concurrency, one panel per server;
- latency_vs_concurrency.png: p50 (solid) and p95 (dashed) against concurrency, one line pair per server;
- lag_over_time.png: the server's lag over the stream's wall time, one line per stream, colour = concurrency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402


def _by_target(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for run in report["runs"]:
        out.setdefault(run["label"], []).append(run)
    return out


def _latencies(run: dict[str, Any]) -> list[float]:
    return [u["latency_s"] for s in run["streams"] for u in s["utterances"] if u["latency_s"] is not None]


def plot_latency_distribution(report: dict[str, Any], path: Path) -> Path:
    targets = _by_target(report)
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False, sharey=True)
    for ax, (label, runs) in zip(axes[0], targets.items(), strict=True):
        data = [_latencies(r) for r in runs]
        names = [str(r["concurrency"]) for r in runs]
        ax.boxplot([d or [float("nan")] for d in data], tick_labels=names, showfliers=False)
        for i, d in enumerate(data, start=1):
            jitter = [i + 0.12 * ((k % 5) - 2) / 2 for k in range(len(d))]
            ax.scatter(jitter, d, s=10, alpha=0.6)
        ax.set_title(label)
        ax.set_xlabel("concurrent streams")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("end of speech -> final (s)")
    fig.suptitle("End-of-speech -> final latency per utterance")
    return _save(fig, path)


def plot_latency_vs_concurrency(report: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in _by_target(report).items():
        xs = [r["concurrency"] for r in runs]
        p50 = [r["summary"]["latency_p50_s"] for r in runs]
        p95 = [r["summary"]["latency_p95_s"] for r in runs]
        (line,) = ax.plot(xs, [float("nan") if v is None else v for v in p50], "o-", label=f"{label} p50")
        ax.plot(
            xs,
            [float("nan") if v is None else v for v in p95],
            "s--",
            color=line.get_color(),
            label=f"{label} p95",
        )
    ramp = sorted({r["concurrency"] for r in report["runs"]})
    ax.set_xticks(ramp)
    if len(ramp) > 2 and ramp[-1] / ramp[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ramp, [str(n) for n in ramp])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("end of speech -> final (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Final latency vs concurrency")
    return _save(fig, path)


def plot_lag_over_time(report: dict[str, Any], path: Path) -> Path:
    targets = _by_target(report)
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), squeeze=False, sharey=True)
    cmap = plt.get_cmap("viridis")
    for ax, (label, runs) in zip(axes[0], targets.items(), strict=True):
        for k, run in enumerate(runs):
            color = cmap(k / max(1, len(runs) - 1))
            for j, stream in enumerate(run["streams"]):
                pts = stream["lag"]
                key = (
                    "server_lag_s"
                    if pts and all(p["server_lag_s"] is not None for p in pts)
                    else "client_lag_s"
                )
                xs = [p["t"] for p in pts if p[key] is not None]
                ys = [p[key] for p in pts if p[key] is not None]
                ax.plot(
                    xs,
                    ys,
                    ".-",
                    color=color,
                    alpha=0.7,
                    lw=1,
                    ms=3,
                    label=f"N={run['concurrency']}" if j == 0 else None,
                )
        ax.set_title(label)
        ax.set_xlabel("stream wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("server lag (s of audio not yet transcribed)")
    fig.suptitle("Server lag over time")
    return _save(fig, path)


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_latency_distribution(report, out_dir / "latency_distribution.png"),
        plot_latency_vs_concurrency(report, out_dir / "latency_vs_concurrency.png"),
        plot_lag_over_time(report, out_dir / "lag_over_time.png"),
    ]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
