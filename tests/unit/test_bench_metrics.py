"""The benchmark's pure metric functions, on hand-made message logs whose right answers are known."""

from __future__ import annotations

import re

import numpy as np
import pytest

from client.bench import metrics as bm
from client.bench.cli import build_parser
from client.bench.report import compare, format_table
from client.protocol import Received, frame_samples
from whisper_stream.dsp.audio import encode as encode_audio


def norm(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def tx(
    t: float, final: bool, num: int, segs: list[tuple[float, float, str]], lag: float | None = 0.1
) -> Received:
    msg = {
        "type": "transcription",
        "is_final": final,
        "transcription_num": num,
        "segments": [{"start_time": s, "end_time": e, "text": x} for s, e, x in segs],
        "transcript": " ".join(x for _, _, x in segs),
    }
    if lag is not None:
        msg["server_lag_s"] = lag
    return Received(t, msg)


def paced(duration_s: float, frame_s: float = 0.032, start: float = 0.01) -> list[tuple[float, float]]:
    """audio_sent_s of a live source in real time: frame k (ending at (k+1)*frame_s) sent once captured."""
    n = int(np.ceil(duration_s / frame_s))
    return [
        (start + min((k + 1) * frame_s, duration_s), min((k + 1) * frame_s, duration_s)) for k in range(n)
    ]


def test_speech_time_is_when_the_sample_was_captured():
    sent = [(0.032, 0.032), (0.064, 0.064), (0.080, 0.080)]
    assert bm.speech_time_at(sent, 0.0) == pytest.approx(0.0)
    assert bm.speech_time_at(sent, 0.032) == pytest.approx(0.032)  # the first frame's last sample
    assert bm.speech_time_at(sent, 0.033) == pytest.approx(0.033)  # not when its frame left (0.064)
    assert bm.speech_time_at(sent, 0.080) == pytest.approx(0.080)
    assert bm.speech_time_at(sent, 0.081) is None
    assert bm.speech_time_at([(0.050, 0.032)], 0.020) == pytest.approx(0.038)  # a frame sent 18 ms late
    assert bm.audio_sent_at(sent, -1.0) == 0.0
    assert bm.audio_sent_at(sent, 0.05) == 0.032  # by then only the first frame had left
    assert bm.audio_sent_at(sent, 9.0) == 0.080


def test_match_final_takes_the_first_covering_final_of_this_utterance():
    finals = [
        bm.Transcription(3.0, True, 0, ((0.5, 1.0, "early cut"),), None),  # forced split: ends too early
        bm.Transcription(4.0, False, 1, ((1.0, 2.9, "a partial"),), None),  # partials never count
        bm.Transcription(5.0, True, 1, ((1.0, 2.7, "the end"),), None),  # within tolerance of 3.0
        bm.Transcription(6.0, True, 2, ((2.5, 3.2, "again"),), None),  # also covers, but arrived later
    ]
    assert bm.match_final(finals, 0.5, 3.0, tolerance_s=0.5).t == 5.0
    assert bm.match_final(finals, 0.5, 3.0, tolerance_s=0.2).t == 6.0
    # a later utterance's final (starting after this one's end) is never taken for it
    later = [bm.Transcription(9.0, True, 3, ((4.5, 6.0, "next one"),), None)]
    assert bm.match_final(later, 0.5, 3.0) is None
    assert bm.match_final([bm.Transcription(1.0, True, 0, (), None)], 0.5, 3.0) is None


def test_latency_first_partial_cadence_and_instability_on_a_known_log():
    starts, ends = (0.5, 4.0), (2.5, 6.0)
    sent = paced(7.0)
    speech_end = bm.speech_time_at(sent, 2.5)
    received = [
        tx(1.3, False, 0, [(0.5, 1.2, "the quick")]),
        tx(1.9, False, 0, [(0.5, 1.8, "the quack brown")]),
        tx(2.4, False, 0, [(0.5, 2.3, "the quick brown fox")]),
        tx(3.1, True, 0, [(0.5, 2.48, "The quick brown fox.")]),
        tx(7.6, True, 1, [(4.0, 5.9, "Jumps over.")]),
        Received(7.7, {"type": "end_audio", "body": {"status": "finished"}}),
    ]
    utts = bm.utterance_metrics(
        received, sent, [("a", "the quick brown fox"), ("b", "jumps over")], starts, ends, normalize=norm
    )
    a, b = utts
    assert a.latency_s == pytest.approx(3.1 - speech_end) == pytest.approx(3.1 - 0.01 - 2.5)
    assert 0 < a.latency_s < 1.0
    assert a.final_num == 0 and a.partials == 3
    assert a.first_partial_s == pytest.approx(1.3 - 0.01 - 0.5)
    assert a.partial_intervals_s == pytest.approx([0.6, 0.5])
    # shown: 2 + 3 + 4 = 9 words; only "quack" was changed by the final
    assert (a.unstable_words, a.partial_words) == (1, 9)
    assert a.hypothesis == "The quick brown fox."
    assert b.latency_s == pytest.approx(7.6 - 0.01 - 6.0)
    assert b.partials == 0 and b.first_partial_s is None and b.hypothesis == "Jumps over."
    summary = bm.summarize(utts, wer=0.0)
    assert summary["finals_matched"] == 2
    assert summary["latency_p50_s"] == pytest.approx(a.latency_s)  # nearest rank: the lower of two
    assert summary["unstable_partial_word_ratio"] == pytest.approx(1 / 9)
    assert summary["partial_interval_p50_s"] == pytest.approx(0.5)


def test_percentiles_are_nearest_rank_so_a_p95_of_four_is_the_slowest():
    assert bm.percentile([0.4, 0.5, 0.6, 1.0], 95) == 1.0
    assert bm.percentile([0.4, 0.5, 0.6, 1.0], 50) == 0.5
    assert bm.percentile(list(np.arange(1, 21) / 10), 95) == pytest.approx(1.9)  # 19 of 20 at or below
    assert bm.percentile([], 50) is None


def test_the_first_partial_of_an_utterance_cut_into_two_finals_is_its_first_piece_s():
    sent = paced(12.0)
    received = [
        tx(1.2, False, 0, [(0.5, 1.0, "one")]),  # the first piece's partial
        tx(10.8, True, 0, [(0.5, 10.5, "one two")]),  # cut at the maximum duration
        tx(11.2, False, 1, [(10.5, 11.0, "three")]),
        tx(11.8, True, 1, [(10.5, 11.5, "three four")]),
    ]
    (u,) = bm.utterance_metrics(
        received, sent, [("a", "one two three four")], (0.5,), (11.5,), normalize=norm
    )
    assert u.final_num == 1
    assert u.first_partial_s == pytest.approx(1.2 - 0.01 - 0.5)  # not 11.2 - 0.51


def test_an_utterance_without_final_is_unmatched_not_given_the_next_final():
    sent = paced(8.0)
    received = [tx(7.5, True, 0, [(4.0, 5.9, "only the second")])]
    a, b = bm.utterance_metrics(
        received, sent, [("a", "first"), ("b", "only the second")], (0.5, 4.0), (2.5, 6.0), normalize=norm
    )
    assert a.latency_s is None and a.hypothesis == ""
    assert b.latency_s is not None and b.hypothesis == "only the second"
    assert bm.summarize([a, b], None)["finals_matched"] == 1


def test_segments_go_to_the_utterance_whose_slot_holds_their_midpoint():
    finals = [
        bm.Transcription(
            1.0, True, 0, ((0.4, 1.0, "one"), (1.0, 2.6, "two")), None
        ),  # a little late: still #0
        bm.Transcription(2.0, True, 1, ((3.4, 5.0, "three"),), None),  # a little early: still #1
        bm.Transcription(3.0, False, 2, ((6.0, 7.0, "partial only"),), None),
    ]
    assert bm.assign_segments(finals, (0.5, 3.5, 7.0), (2.5, 5.0, 8.0)) == ["one two", "three", ""]


def test_unstable_words_counts_every_showing():
    assert bm.unstable_words([], "anything", norm) == (0, 0)
    assert bm.unstable_words(["hello", "hello world"], "Hello, world!", norm) == (0, 3)
    assert bm.unstable_words(["hollow", "hollow word"], "hello world", norm) == (3, 3)


def test_lag_series_reports_server_and_client_lag():
    sent = paced(4.0, start=0.0)
    received = [tx(2.0, False, 0, [(0.5, 1.5, "x")], lag=0.4), tx(3.0, True, 0, [(0.5, 1.9, "x")], lag=None)]
    series = bm.lag_series(received, sent)
    assert series[0]["server_lag_s"] == 0.4 and series[1]["server_lag_s"] is None
    assert series[0]["audio_sent_s"] == pytest.approx(2.016, abs=0.04)
    assert series[1]["client_lag_s"] == pytest.approx(3.008 - 1.9, abs=0.04)


def _run(label: str, n: int, p50: float, p95: float, rtfx: float) -> dict:
    summary = {
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "rtfx": rtfx,
        "utterances": 2,
        "finals_matched": 2,
        "latency_max_s": p95,
        "first_partial_p50_s": None,
        "partial_interval_p50_s": None,
        "unstable_partial_word_ratio": None,
        "wer": 0.05,
        "rtf_max": 1.1,
        "drain_p95_s": 0.4,
        "server_lag_max_s": None,
        "stream_errors": 0,
    }
    return {"label": label, "concurrency": n, "summary": summary, "streams": []}


def test_two_servers_are_compared_as_ratios_to_the_first():
    runs = [
        _run("cpu", 1, 1.0, 2.0, 1.0),
        _run("triton", 1, 0.5, 0.5, 1.0),
        _run("cpu", 4, 2.0, 4.0, 3.0),
        _run("triton", 4, 0.5, 1.0, 3.9),
    ]
    rows = compare(runs, ["cpu", "triton"])
    assert [(r["concurrency"], r["label"]) for r in rows] == [(1, "triton"), (4, "triton")]
    assert rows[0]["latency_p50_s_ratio"] == 0.5 and rows[0]["latency_p95_s_ratio"] == 0.25
    assert rows[1]["rtfx_ratio"] == pytest.approx(1.3)
    assert compare(runs[:1], ["cpu"]) == []
    table = format_table({"runs": runs, "comparison": rows, "normalizer": "test"})
    assert "lat p50 ratio" in table and "0.25x" in table and "triton" in table


def test_encodings_and_frame_sizes():
    assert frame_samples(16000) == 512 and frame_samples(8000) == 256
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0], np.float32)
    assert len(encode_audio(x, "pcm_s16le")) == 10 and len(encode_audio(x, "pcm_f32le")) == 20
    assert encode_audio(np.zeros(3, np.float32), "pcm_mulaw") == b"\xff\xff\xff"  # G.711 mu-law silence
    assert encode_audio(np.zeros(3, np.float32), "pcm_alaw") == b"\xd5\xd5\xd5"  # G.711 A-law silence
    with pytest.raises(ValueError):
        encode_audio(x, "opus")


def test_mulaw_and_alaw_match_the_reference_codec():
    audioop = pytest.importorskip("audioop")  # the C reference, in the standard library up to Python 3.12
    pcm = np.arange(-32768, 32768, 7, dtype=np.int32)
    raw = pcm.astype("<i2").tobytes()
    x = pcm.astype(np.float32) / 32768.0
    assert encode_audio(x, "pcm_mulaw") == audioop.lin2ulaw(raw, 2)
    assert encode_audio(x, "pcm_alaw") == audioop.lin2alaw(raw, 2)


def test_full_load_window_runs_from_the_last_stream_start_to_the_first_stream_end():
    """bench-frontend's cost at N streams: read while all N send, not over the staggered start and end."""
    import os

    from client.bench.server import FullLoad
    from client.kit.speech import JoinedStream

    def stream(seconds: float) -> JoinedStream:
        return JoinedStream(np.zeros(int(seconds * 16000), dtype=np.float32), (), (), ())

    window = FullLoad(os.getpid(), 2)
    short, long = window.progress(stream(1.0)), window.progress(stream(3.0))
    short(0.032)
    assert window.start is None  # one of two streams sending: not full load yet
    short(0.5)
    long(0.032)
    assert window.start is not None and window.end is None
    long(2.0)
    sum(i * i for i in range(2_000_000))  # some CPU inside the window, in this (the main) thread
    short(1.0)  # the short stream sent its last frame: the window closes
    end = window.end
    long(3.0)
    assert window.end == end and window.window_s is not None and window.window_s > 0
    assert window.core_percent_per_stream is not None and window.core_percent_per_stream >= 0
    loop_thread = window.loop_thread_percent_per_stream
    # /proc counts CPU in clock ticks and the two are read one after the other: one tick each may differ
    tick_percent = 100 / os.sysconf("SC_CLK_TCK") / window.window_s / 2  # one tick, per stream
    assert loop_thread is not None and 0 < loop_thread <= window.core_percent_per_stream + 2 * tick_percent


def test_bench_help_states_the_defaults_the_benchmark_runs_with():
    parser = build_parser()
    used = parser.parse_args([])
    assert used.concurrency == [1, 2, 4]
    assert "the ramp, comma-separated (default 1,2,4)" in " ".join(parser.format_help().split())
    formatter = parser._get_formatter()
    for action in parser._actions:  # every "default N" a help states is the value the run gets
        value = getattr(used, action.dest, None)
        if action.help is None or value is None:  # not sent by default: the help names the server's default
            continue
        stated = re.findall(r"default:? ([0-9](?:[0-9.,]*[0-9])?)", formatter._expand_help(action))
        shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        assert all(s == shown for s in stated), (action.dest, stated, shown)
