"""`make soak` in CI: 2 real-time streams with partials for WHISPER_STREAM_SOAK_S (180 s here; 2 h with
`make soak`), RSS sampled every 30 s: no final lost or duplicated, and memory does not keep growing."""

from __future__ import annotations

import json
import os

from client.bench import server as bench_server

SOAK_S = float(os.environ.get("WHISPER_STREAM_SOAK_S", "180"))
MAX_GROWTH_MB = 40  # second half's mean RSS over the first half's: a leak of one stream's buffers per minute


def test_two_streams_soak_without_loss_or_growth(tmp_path):
    code = bench_server.main(
        ["soak", "--duration-s", str(SOAK_S), "--sample-s", "15", "--out", str(tmp_path)]
    )
    assert code == 0
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["utterances"] >= 4 and report["lost"] == 0 and report["duplicated"] == 0, report
    assert report["rss_growth_mb"] is not None and report["rss_growth_mb"] < MAX_GROWTH_MB, report["samples"]
