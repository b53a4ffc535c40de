"""The benchmark's PNG plots, drawn from the report dict alone (so a saved JSON can be re-plotted later).

- latency_distribution.png: TTFS of every utterance (all repetitions), one box (plus the points) per
  concurrency, one panel per server and mode;
- ttfs_cdf.png: the TTFS distribution as a CDF, one panel per mode, one line per server and concurrency;
- latency_vs_concurrency.png: p50 (solid) and p95 (dashed) against concurrency, the repetitions' median with
  their min-max as error bars, one line pair per server and mode;
- lag_over_time.png: the server's lag over the stream's wall time (first repetition), one panel per mode and
  concurrency, one colour per stream.
Every title carries the machine's 1-minute load average during the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, works on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _mode(run: dict[str, Any]) -> str:
    return run.get("mode", "server")


def _groups(report: dict[str, Any]) -> dict[tuple[str, str], dict[int, list[dict[str, Any]]]]:
    """(server, mode) -> concurrency -> its runs (the repetitions)."""
    out: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for run in report["runs"]:
        out.setdefault((run["label"], _mode(run)), {}).setdefault(run["concurrency"], []).append(run)
    return out


def _latencies(runs: list[dict[str, Any]]) -> list[float]:
    return [
        u["latency_s"]
        for run in runs
        for s in run["streams"]
        for u in s["utterances"]
        if u["latency_s"] is not None
    ]


def _load(report: dict[str, Any]) -> str:
    m = report.get("machine") or {}
    a, b = m.get("loadavg_start"), m.get("loadavg_end")
    if not a or not b:
        return ""
    return f" (load avg 1 min {a[0]:.1f} -> {b[0]:.1f} on {m.get('cpu_count', '?')} CPUs)"


def plot_latency_distribution(report: dict[str, Any], path: Path) -> Path:
    groups = _groups(report)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False, sharey=True)
    for ax, ((label, mode), by_n) in zip(axes[0], groups.items(), strict=True):
        data = [_latencies(by_n[n]) for n in sorted(by_n)]
        names = [f"{n}\n(n={len(d)})" for n, d in zip(sorted(by_n), data, strict=True)]
        ax.boxplot([d or [float("nan")] for d in data], tick_labels=names, showfliers=False)
        for i, d in enumerate(data, start=1):
            jitter = [i + 0.12 * ((k % 5) - 2) / 2 for k in range(len(d))]
            ax.scatter(jitter, d, s=10, alpha=0.6)
        ax.set_title(f"{label}: {mode}")
        ax.set_xlabel("concurrent streams")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("TTFS: end of speech -> final (s)")
    fig.suptitle("TTFS per utterance, all repetitions" + _load(report), fontsize=10)
    return _save(fig, path)


def plot_ttfs_cdf(report: dict[str, Any], path: Path) -> Path:
    groups = _groups(report)
    modes = sorted({m for _, m in groups}, key=lambda m: (m != "server", m))
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes, strict=True):
        for (label, m), by_n in groups.items():
            if m != mode:
                continue
            for n in sorted(by_n):
                lat = np.sort(_latencies(by_n[n]))
                if len(lat):
                    ys = np.arange(1, len(lat) + 1) / len(lat)
                    ax.step(lat, ys, where="post", label=f"{label} N={n} (n={len(lat)})")
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.axhline(0.95, color="grey", lw=0.6, ls=":")
        ax.set_title(f"mode: {mode}")
        ax.set_xlabel("TTFS (s)")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("fraction of utterances")
    fig.suptitle("TTFS CDF per mode" + _load(report), fontsize=10)
    return _save(fig, path)


def plot_latency_vs_concurrency(report: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (label, mode), by_n in _groups(report).items():
        xs = sorted(by_n)
        color = None
        for key, style in (("latency_p50_s", "o-"), ("latency_p95_s", "s--")):
            vals = [[r["summary"][key] for r in by_n[n] if r["summary"][key] is not None] for n in xs]
            med = [float(np.median(v)) if v else float("nan") for v in vals]
            err = [
                [m - min(v) if v else 0 for m, v in zip(med, vals, strict=True)],
                [max(v) - m if v else 0 for m, v in zip(med, vals, strict=True)],
            ]
            bars = ax.errorbar(
                xs, med, yerr=err, fmt=style, color=color, capsize=3, label=f"{label} {mode} {key[8:11]}"
            )
            color = bars.lines[0].get_color()
    ramp = sorted({r["concurrency"] for r in report["runs"]})
    ax.set_xticks(ramp)
    if len(ramp) > 2 and ramp[-1] / ramp[0] >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ramp, [str(n) for n in ramp])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("TTFS (s): median of repetitions, min-max bars")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("TTFS vs concurrency" + _load(report), fontsize=9)
    return _save(fig, path)


def plot_lag_over_time(report: dict[str, Any], path: Path) -> Path:
    groups = _groups(report)
    ramp = sorted({r["concurrency"] for r in report["runs"]})
    rows = list(groups)
    fig, axes = plt.subplots(
        len(rows), len(ramp), figsize=(4.5 * len(ramp), 3 * len(rows)), squeeze=False, sharey=True
    )
    cmap = plt.get_cmap("tab10")
    for i, key in enumerate(rows):
        for j, n in enumerate(ramp):
            ax = axes[i][j]
            runs = groups[key].get(n) or []
            if runs:
                for stream in runs[0]["streams"]:
                    pts = stream["lag"]
                    k = (
                        "server_lag_s"
                        if pts and all(p["server_lag_s"] is not None for p in pts)
                        else "client_lag_s"
                    )
                    xs = [p["t"] for p in pts if p[k] is not None]
                    ys = [p[k] for p in pts if p[k] is not None]
                    c = cmap(stream["stream"] % 10)
                    ax.plot(xs, ys, "-", color=c, alpha=0.8, lw=1, label=f"stream {stream['stream']}")
                    fx = [p["t"] for p in pts if p[k] is not None and p["is_final"]]
                    fy = [p[k] for p in pts if p[k] is not None and p["is_final"]]
                    ax.plot(fx, fy, "o", color=c, ms=3)
            ax.set_title(f"{key[0]}: {key[1]}, N={n}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(rows) - 1:
                ax.set_xlabel("stream wall time (s)")
            if j == 0:
                ax.set_ylabel("lag (s of audio)")
            if runs and n > 1:
                ax.legend(fontsize=7)
    fig.suptitle("Server lag over time, first repetition (dots: finals)" + _load(report), fontsize=10)
    return _save(fig, path)


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_latency_distribution(report, out_dir / "latency_distribution.png"),
        plot_ttfs_cdf(report, out_dir / "ttfs_cdf.png"),
        plot_latency_vs_concurrency(report, out_dir / "latency_vs_concurrency.png"),
        plot_lag_over_time(report, out_dir / "lag_over_time.png"),
    ]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
