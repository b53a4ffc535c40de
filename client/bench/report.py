"""The benchmark's numbers across runs: aggregates over repetitions, the ratio table between servers, the
machine, and the text table printed at the end (`bench.json` holds the same numbers)."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from client.bench import metrics as bm
from client.kit.speech import wer

NORMALIZERS = {
    "en": "Whisper's English normalizer (whisper_normalizer.english.EnglishTextNormalizer), markup removed",
    "other": "Whisper's basic normalizer (whisper_normalizer.basic.BasicTextNormalizer), markup removed",
}


def loadavg() -> list[float] | None:
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


def settings(args: argparse.Namespace, ramp: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    skip = {"url", "label", "api_key", "model", "server_args"}
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}
    return {**out, "concurrency": ramp, "metadata": meta, "server_args": args.server_args}


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
