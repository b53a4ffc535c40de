"""The streaming session with synthetic audio, a loudness VAD and a hand-driven engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit.fakes import SR, BasetenStream, LoudnessVad, fake_result, pcm, silence, tone
from whisper_stream.config import parse_metadata
from whisper_stream.core.events import Cancel, FlushAnswered, Promote, Transcribe
from whisper_stream.serving.driver import Send
from whisper_stream.serving.transport import Close


def make(
    vad=None,
    partials: bool = False,
    interval: float = 0.5,
    max_s: float = 30.0,
    speculative: bool = False,
    timing: bool = False,
    **vad_cfg,
):
    """A session; the speculative path is off unless asked for, so the classic tests see plain finals."""
    meta = {
        "streaming_vad_config": {"min_silence_duration_ms": 300, "speech_pad_ms": 0, **vad_cfg},
        "streaming_params": {
            "enable_partial_transcripts": partials,
            "partial_transcript_interval_s": interval,
            "final_transcript_max_duration_s": max_s,
            "speculative_finals": speculative,
        },
        "include_timing_info": timing,
    }
    return BasetenStream(parse_metadata(meta), vad or LoudnessVad(), stream_id="s1")


def feed(session: BasetenStream, audio: np.ndarray, chunk: int = 1024) -> list:
    data, actions = pcm(audio), []
    for i in range(0, len(data), chunk):
        actions += session.feed_audio(data[i : i + chunk], now=0.0)
    return actions


def requests(actions, kind=None) -> list[Transcribe]:
    return [a for a in actions if isinstance(a, Transcribe) and (kind is None or a.kind == kind)]


def promoted(actions) -> set[int]:
    """Requests the session promoted in the scheduler (speculative decodes confirmed as finals)."""
    return {a.request_id for a in actions if isinstance(a, Promote)}


def cancelled(actions) -> set[int]:
    return {a.request_id for a in actions if isinstance(a, Cancel)}


def sent(actions) -> list[dict]:
    return [a.message for a in actions if isinstance(a, Send)]


def answer(session: BasetenStream, req: Transcribe, **kw) -> list:
    return session.on_result(req.request_id, fake_result(req.request, **kw), None, now=0.0)


def test_one_final_per_speech_segment_with_exact_bounds():
    s = make()
    acts = feed(s, np.concatenate([silence(1.0), tone(2.0), silence(1.0), tone(1.0), silence(1.0)]))
    finals = requests(acts, "final")
    assert len(finals) == 2
    assert finals[0].start_s == pytest.approx(1.0, abs=0.033)
    assert finals[0].end_s == pytest.approx(3.0, abs=0.033)
    assert finals[1].start_s == pytest.approx(4.0, abs=0.033)
    assert len(finals[0].request.audio) == pytest.approx(2.0 * SR, abs=FRAME_TOL)
    msgs = sent(answer(s, finals[0]) + answer(s, finals[1]))
    assert [m["is_final"] for m in msgs] == [True, True]
    assert [m["transcription_num"] for m in msgs] == [0, 1]
    assert msgs[0]["segments"][0]["start_time"] == pytest.approx(1.0, abs=0.033)
    assert msgs[0]["transcript"] == msgs[0]["segments"][0]["text"]
    assert float(msgs[0]["transcript"].split()[1]) == pytest.approx(2.0, abs=0.033)


FRAME_TOL = 512


@pytest.mark.parametrize("min_silence_ms,expected_finals", [(200, 2), (600, 1)])
def test_min_silence_decides_whether_a_pause_ends_speech(min_silence_ms, expected_finals):
    s = make(min_silence_duration_ms=min_silence_ms)
    acts = feed(s, np.concatenate([tone(1.0), silence(0.4), tone(1.0), silence(1.0)]))
    assert len(requests(acts, "final")) == expected_finals


def test_speech_pad_adds_audio_on_both_sides():
    s = make(speech_pad_ms=100)
    acts = feed(s, np.concatenate([silence(1.0), tone(1.0), silence(1.0)]))
    (final,) = requests(acts, "final")
    assert final.start_s == pytest.approx(0.9, abs=0.033)
    assert final.end_s == pytest.approx(2.1, abs=0.033)


def test_threshold_decides_what_is_speech():
    quiet = tone(1.0, amp=0.04)  # RMS 0.028: below the fake VAD's loudness
    s = make()
    assert requests(feed(s, np.concatenate([quiet, silence(1.0)]))) == []


def test_threshold_parameter_is_applied():
    class Prob:
        def __call__(self, frames):
            return np.full(len(frames), 0.6, dtype=np.float32)

    low = make(vad=Prob(), threshold=0.5)
    high = make(vad=Prob(), threshold=0.7)
    feed(low, silence(0.5))
    feed(high, silence(0.5))
    assert low.in_speech and not high.in_speech


def test_silence_only_stream_requests_nothing():
    s = make(partials=True)
    acts = feed(s, silence(10.0)) + s.end_audio(now=0.0)
    assert requests(acts) == []
    msgs = sent(acts)
    assert [m["body"]["status"] for m in msgs] == ["acknowledged", "finished"]
    assert isinstance(acts[-1], Close) and acts[-1].code == 1000


def test_blips_shorter_than_min_speech_are_not_transcribed():
    from whisper_stream.core.segmenter import MIN_SPEECH_FRAMES

    s = make()
    one_frame = 512 / SR
    blip = tone((MIN_SPEECH_FRAMES - 1) * one_frame)
    acts = feed(s, np.concatenate([silence(16 * one_frame), blip, silence(32 * one_frame), blip]))
    assert requests(acts + s.end_audio(now=0.0)) == []  # not at the end_audio flush either


def test_partials_follow_the_interval_and_one_in_flight():
    s = make(partials=True, interval=0.5)
    acts = feed(s, tone(0.6))
    (p1,) = requests(acts, "partial")
    assert len(p1.request.audio) / SR == pytest.approx(0.5, abs=0.04)
    # while p1 is in flight no new partial is requested, however much audio arrives
    assert requests(feed(s, tone(1.5)), "partial") == []
    msgs = sent(answer(s, p1))
    assert msgs and msgs[0]["is_final"] is False and msgs[0]["message_type"] == "partial_transcript"
    (p2,) = requests(feed(s, tone(0.04)), "partial")  # overdue: asked for at the next frame
    assert len(p2.request.audio) / SR == pytest.approx(2.1, abs=0.05)
    answer(s, p2)
    assert requests(feed(s, tone(0.3)), "partial") == []
    assert len(requests(feed(s, tone(0.3)), "partial")) == 1


def test_partials_disabled_by_default():
    s = make()
    assert requests(feed(s, tone(3.0)), "partial") == []


def test_partial_uses_first_temperature_only():
    s = make(partials=True)
    (p,) = requests(feed(s, tone(0.6)), "partial")
    assert p.request.options.temperatures == (0.0,)


def test_forced_final_at_max_duration_partitions_the_audio():
    s = make(max_s=5.0)
    # 12 s of continuous speech with short quiet dips (not long enough to end speech)
    parts = []
    for _ in range(6):
        parts += [tone(1.8), silence(0.2)]
    audio = np.concatenate(parts + [silence(1.0)])
    finals = requests(feed(s, audio), "final")
    assert len(finals) >= 3
    for f in finals:
        assert f.end_s - f.start_s <= 5.0 + 1e-6
    for a, b in zip(finals, finals[1:], strict=False):
        assert b.start_s == pytest.approx(a.end_s, abs=1e-9)  # no gap, no overlap: no word lost or repeated
    total = sum(len(f.request.audio) for f in finals)
    assert total == pytest.approx((finals[-1].end_s - finals[0].start_s) * SR, abs=1)
    # the cut lands in a quiet dip, not in the middle of a tone
    for f in finals[:-1]:
        t = f.end_s % 2.0
        assert 1.75 <= t <= 2.05, f.end_s


@pytest.mark.parametrize("pad_ms,speech_s", [(0, 9.9), (200, 9.7)])
def test_speech_ending_just_before_the_cut_leaves_no_silent_final_and_no_gap_in_numbers(pad_ms, speech_s):
    """The rest of a cut segment is judged by its own speech: silence after the cut is no utterance."""
    s = make(max_s=10.0, speech_pad_ms=pad_ms, speculative=True)
    audio = np.concatenate([silence(1.0), tone(speech_s), silence(2.0), tone(1.0), silence(1.0)])
    reqs = [r for r in requests(feed(s, audio)) if r.kind in ("final", "speculative")]
    assert all(np.sqrt(np.mean(r.request.audio**2)) > 0.05 for r in reqs)  # none decodes silence
    msgs = [m for r in reqs for m in sent(answer(s, r))]
    assert [m["transcription_num"] for m in msgs] == [0, 1]


def test_finals_are_sent_in_order_even_when_results_arrive_reversed():
    s = make()
    acts = feed(s, np.concatenate([tone(1.0), silence(0.5), tone(1.0), silence(0.5)]))
    f1, f2 = requests(acts, "final")
    assert sent(answer(s, f2, text="second")) == []
    msgs = sent(answer(s, f1, text="first"))
    assert [m["transcript"] for m in msgs] == ["first", "second"]


def test_stale_partial_is_not_sent_after_a_newer_final():
    s = make(partials=True)
    (p,) = requests(feed(s, tone(0.6)), "partial")
    finals = requests(feed(s, np.concatenate([tone(0.5), silence(0.5)])), "final")
    assert len(finals) == 1
    assert sent(answer(s, finals[0], text="final"))[0]["is_final"]
    assert sent(answer(s, p, text="old partial")) == []


def test_partial_of_next_segment_waits_behind_pending_final():
    s = make(partials=True)
    acts = feed(s, np.concatenate([tone(1.0), silence(0.5)]))
    (old,), (final,) = requests(acts, "partial"), requests(acts, "final")
    assert sent(answer(s, old)) == []  # its segment is closed: stale
    (p,) = requests(feed(s, tone(0.6)), "partial")
    assert sent(answer(s, p, text="next")) == []
    msgs = sent(answer(s, final, text="done"))
    assert [(m["is_final"], m["transcript"]) for m in msgs] == [(True, "done"), (False, "next")]


def test_hallucinated_partial_is_skipped():
    s = make(partials=True)
    (p,) = requests(feed(s, tone(0.6)), "partial")
    assert sent(answer(s, p, text="thank you", compression_ratio=3.0)) == []


def test_end_audio_flushes_speech_then_finishes():
    s = make()
    feed(s, tone(1.0))
    acts = s.end_audio(now=0.0)
    msgs = sent(acts)
    assert msgs[0] == {"type": "end_audio", "trace_id": None, "body": {"status": "acknowledged"}}
    (final,) = requests(acts, "final")
    out = answer(s, final, text="tail")
    msgs = sent(out)
    assert msgs[0]["is_final"] and msgs[0]["is_end_of_audio_flush"] is True
    assert msgs[0]["transcript"] == "tail"
    assert msgs[1]["body"]["status"] == "finished"
    assert isinstance(out[-1], Close)
    assert s.finished


def test_end_audio_waits_for_earlier_finals():
    s = make()
    (f1,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    feed(s, tone(0.5))
    acts = s.end_audio(now=0.0)
    (f2,) = requests(acts, "final")
    assert not any(m.get("body", {}).get("status") == "finished" for m in sent(acts))
    assert sent(answer(s, f2)) == []
    statuses = [m.get("body", {}).get("status") for m in sent(answer(s, f1))]
    assert statuses == [None, None, "finished"]


def test_end_audio_flushes_a_partial_frame():
    s = make()
    s.feed_audio(pcm(tone(0.5 + 0.02)), now=0.0)  # ends with 320 samples: less than one VAD frame
    (final,) = requests(s.end_audio(now=0.0), "final")
    assert final.end_s == pytest.approx(0.544, abs=1e-3)  # the zero-padded last frame is included


def test_finalize_makes_a_final_and_keeps_the_stream_open():
    s = make(speech_pad_ms=200)
    feed(s, tone(1.0))
    (f,) = requests(s.handle_text('{"type": "finalize"}', now=0.0), "final")
    assert f.end_s == pytest.approx(1.0, abs=0.033)
    assert not s.finished
    more = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert len(more) == 1
    assert more[0].start_s >= f.end_s  # padding never reaches back into finalized audio
    assert requests(s.handle_text("finalize", now=0.0)) == []  # pipecat's bare form; no speech now


def test_health_check_echoes_trace_id():
    s = make()
    (msg,) = sent(s.handle_text(json.dumps({"type": "health_check", "trace_id": "abc"}), now=12.5))
    assert msg["type"] == "health_check" and msg["trace_id"] == "abc" and msg["timestamp"] == 12.5
    assert msg["body"]["healthy"] is True


@pytest.mark.parametrize(
    "text,needle", [("not json", "not valid JSON"), ('{"type": "dance"}', "dance"), ("[1]", "JSON object")]
)
def test_bad_control_messages_get_recoverable_errors(text, needle):
    s = make()
    (msg,) = sent(s.handle_text(text, now=0.0))
    assert msg["type"] == "error" and msg["body"]["recoverable"] is True
    assert needle in msg["body"]["message"]
    feed(s, tone(1.0))  # the stream goes on
    assert len(requests(s.end_audio(now=0.0), "final")) == 1


def test_terminate_session_is_end_audio():
    s = make()
    feed(s, tone(1.0))
    acts = s.handle_text('{"terminate_session": true}', now=0.0)
    assert len(requests(acts, "final")) == 1 and s._ending


def test_odd_byte_frames_decode_like_one_piece():
    audio = np.concatenate([silence(0.3), tone(1.0), silence(0.6)])
    whole, split = make(), make()
    a = feed(whole, audio, chunk=len(pcm(audio)))
    b = feed(split, audio, chunk=333)  # odd sizes: samples straddle frames
    (fa,), (fb,) = requests(a, "final"), requests(b, "final")
    np.testing.assert_array_equal(fa.request.audio, fb.request.audio)


def test_engine_error_on_final_is_reported_and_order_kept():
    s = make()
    f1, f2 = requests(feed(s, np.concatenate([tone(1.0), silence(0.5), tone(1.0), silence(0.5)])), "final")
    assert sent(answer(s, f2, text="two")) == []
    msgs = sent(s.on_result(f1.request_id, None, "engine unavailable: down", now=0.0))
    assert msgs[0]["type"] == "error" and "unavailable" in msgs[0]["body"]["message"]
    assert msgs[1]["transcript"] == "two"


def test_silence_result_sends_no_transcript():
    s = make()
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert sent(answer(s, f, text="you", no_speech_prob=0.9, avg_logprob=-1.5)) == []


def test_lag_is_reported_and_bounded_by_received_audio():
    s = make()
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    feed(s, silence(2.0))
    (msg,) = sent(answer(s, f))
    assert msg["server_lag_s"] == pytest.approx(s.received_s - f.end_s, abs=1e-3)
    assert 2.0 <= msg["server_lag_s"] <= s.received_s


def test_a_long_pause_between_utterances_is_not_lag():
    """A caller on hold for two minutes: lag_s (what sheds partials at max_lag_s / 2 and closes the stream
    at max_lag_s) counts from the speech still owed a final, not from the last transcript sent."""
    meta = make().config
    s = BasetenStream(meta, stream_id="s1", max_partial_lag_s=60.0)
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    answer(s, f)
    feed(s, silence(125.0))
    feed(s, tone(1.0))
    assert s.lag_s == pytest.approx(1.0, abs=0.1)
    (g,) = requests(feed(s, silence(0.5)), "final")
    assert s.lag_s == pytest.approx(1.5, abs=0.1)  # its final is outstanding: owed since its speech began
    answer(s, g)
    assert s.lag_s < 0.1
    s = make_meta({"whisper_params": {"enable_vad": False}})
    feed(s, silence(125.0))  # fixed windows of silence, each discarded
    assert s.lag_s <= 30.0
    s = BasetenStream(make(partials=True).config, stream_id="s1", max_partial_lag_s=60.0)
    for req in requests(feed(s, np.concatenate([tone(1.0), silence(0.5)]))):
        answer(s, req)
    feed(s, silence(125.0))
    assert requests(feed(s, tone(1.0)), "partial")  # not shed as if 126 s behind


def test_audio_after_end_audio_is_refused():
    s = make()
    s.end_audio(now=0.0)
    (msg,) = sent(s.feed_audio(pcm(tone(0.1)), now=0.0))
    assert msg["type"] == "error"


def make_meta(meta: dict, vad=None) -> BasetenStream:
    meta = {**meta, "streaming_params": {"speculative_finals": False, **meta.get("streaming_params", {})}}
    return BasetenStream(parse_metadata(meta), vad or LoudnessVad(), stream_id="s2")


def test_fixed_segmentation_without_vad_cuts_windows_and_skips_silent_ones():
    s = make_meta(
        {"whisper_params": {"enable_vad": False}, "streaming_params": {"final_transcript_max_duration_s": 2}}
    )
    acts = feed(s, np.concatenate([tone(1.0), silence(3.0), tone(0.5), silence(1.5)])) + s.end_audio(now=0.0)
    finals = requests(acts, "final")
    assert [(f.start_s, f.end_s) for f in finals] == [
        (0.0, pytest.approx(2.0, abs=0.04)),
        (pytest.approx(4.0, abs=0.04), pytest.approx(6.0, abs=0.04)),
    ]


def test_dynamic_preprocessing_normalises_the_window():
    s = make_meta({"whisper_params": {"use_dynamic_preprocessing": True}})
    (f,) = requests(feed(s, np.concatenate([tone(1.0, amp=0.08), silence(0.5)])), "final")
    rms = float(np.sqrt(np.mean(f.request.audio**2)))
    assert rms == pytest.approx(10 ** (-20 / 20), rel=0.15)


def test_conditioning_on_previous_finals_adds_them_to_the_prompt():
    s = make_meta({"whisper_params": {"condition_on_previous_finals": True, "prompt": "Names: Ada."}})
    (f1,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert f1.request.options.prompt == "Names: Ada."
    answer(s, f1, text="hello there")
    (f2,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert f2.request.options.prompt == "Names: Ada. hello there"


def test_prompt_echo_is_dropped():
    s = make_meta({"whisper_params": {"prompt": "Quarterly budget review."}})
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert sent(answer(s, f, text="Quarterly budget review.")) == []


def test_repetition_loop_is_collapsed_and_flagged():
    s = make()
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    (msg,) = sent(answer(s, f, text="go on " * 12, compression_ratio=4.0))
    assert msg["transcript"] == "go on" and msg["segments"][0]["possible_hallucination"] is True


def test_auto_language_hint_and_continuation_language():
    s = make_meta(
        {
            "whisper_params": {"audio_language": "auto"},
            "streaming_params": {"final_transcript_max_duration_s": 3},
        }
    )
    (f1,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    assert f1.request.options.language is None and f1.request.options.language_hint is None
    res = fake_result(f1.request)
    res = type(res)(segments=res.segments, language="es", language_prob=0.9)
    s.on_result(f1.request_id, res, None, now=0.0)
    (f2,) = requests(feed(s, tone(3.1)), "final")  # forced cut: the utterance goes on
    assert f2.request.options.language_hint == "es"
    res2 = type(res)(segments=res.segments, language="pt", language_prob=0.6)
    s.on_result(f2.request_id, res2, None, now=0.0)
    (f3,) = requests(feed(s, np.concatenate([tone(0.5), silence(0.5)])), "final")
    assert f3.request.options.language == "pt"  # later pieces keep the utterance's first language


def test_timing_info_is_attached_when_asked():
    s = make_meta({"include_timing_info": True})
    (f,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")
    s.add_processing_time(0.01)
    (msg,) = sent(
        s.on_result(
            f.request_id,
            fake_result(f.request),
            None,
            now=0.0,
            timing={"queue_s": 0.1, "model_s": 0.2, "batch_size": 2},
        )
    )
    assert msg["timing_info"]["model_s"] == 0.2 and msg["timing_info"]["batch_size"] == 2


@pytest.mark.parametrize(
    "encoding,rate,width",
    [("pcm_mulaw", 8000, 1), ("pcm_f32le", 48000, 4), ("pcm_alaw", 8000, 1), ("pcm_s16le", 44100, 2)],
)
def test_other_encodings_and_rates_find_the_same_speech(encoding, rate, width):
    from whisper_stream.dsp.audio import encode, resample

    audio = np.concatenate([silence(1.0), tone(1.0), silence(1.0)])
    s = make_meta({"streaming_params": {"encoding": encoding, "sample_rate": rate}})
    data = encode(resample(audio, 16000, rate), encoding)
    frame = rate * 32 // 1000 * width
    acts = []
    for i in range(0, len(data), frame):
        acts += s.feed_audio(data[i : i + frame], now=0.0)
    (f,) = requests(acts + s.end_audio(now=0.0), "final")
    assert f.start_s == pytest.approx(1.0, abs=0.05) and f.end_s == pytest.approx(2.0, abs=0.05)


# -- speculative finals: decoded from the first silent frame, sent once the endpoint or a flush confirms


def frames_until(session: BasetenStream, audio: np.ndarray, kind: str) -> tuple[int, list]:
    """Feed one 32 ms frame at a time; (index of the frame whose feed asked for `kind`, all actions)."""
    actions, at = [], None
    for i in range(0, len(audio), 512):
        acts = session.feed_audio(pcm(audio[i : i + 512]), now=0.0)
        if at is None and requests(acts, kind):
            at = i // 512
        actions += acts
    return at, actions


def test_speculative_decode_starts_at_the_first_silent_frame():
    s = make(speculative=True)
    at, acts = frames_until(s, np.concatenate([tone(1.024), silence(1.0)]), "speculative")
    assert at == 32  # frames 0-31 are the tone, 32 is the first silent one (not 32 + 300 ms of frames)
    (spec,) = requests(acts, "speculative")
    assert spec.start_s == 0.0 and spec.end_s == pytest.approx(1.024)
    assert requests(acts, "final") == []  # the endpoint confirmed it: no second decode
    msgs = sent(answer(s, spec, text="hello"))
    assert [(m["is_final"], m["transcript"], m["transcription_num"]) for m in msgs] == [(True, "hello", 0)]


def test_speculative_window_and_options_are_the_plain_finals():
    audio = np.concatenate(
        [silence(0.5), tone(1.0), silence(0.1), tone(0.7), silence(0.6), tone(1.2), silence(1)]
    )
    plain, spec = make(speech_pad_ms=30), make(speech_pad_ms=30, speculative=True)
    finals = requests(feed(plain, audio), "final")
    acts = feed(spec, audio)
    confirmed = [t for t in requests(acts, "speculative") if t.request_id in promoted(acts)]
    assert len(finals) == 2 and requests(acts, "final") == []
    for f, c in zip(finals, confirmed, strict=True):
        np.testing.assert_array_equal(f.request.audio, c.request.audio)
        assert f.request.options == c.request.options and (f.start_s, f.end_s) == (c.start_s, c.end_s)


def test_speech_resuming_drops_the_speculative_result():
    s = make(speculative=True)
    acts = feed(s, np.concatenate([tone(1.0), silence(0.1)]))
    (early,) = requests(acts, "speculative")
    assert sent(answer(s, early, text="too early")) == []  # arrived, held: not confirmed yet
    acts = feed(s, np.concatenate([tone(1.0), silence(0.1)]))  # speech resumes
    assert cancelled(acts) == set()  # its result already arrived: nothing to cancel in the scheduler
    (late,) = requests(acts, "speculative")
    acts = feed(s, silence(0.5))
    assert requests(acts) == [] and promoted(acts) == {late.request_id}
    msgs = sent(answer(s, late, text="whole"))
    assert [m["transcript"] for m in msgs] == ["whole"]
    assert late.start_s == 0.0 and late.end_s == pytest.approx(2.1, abs=0.033)


def test_result_of_a_cancelled_speculation_arriving_late_is_never_sent():
    s = make(speculative=True)
    (early,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.1)])), "speculative")
    (late,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "speculative")
    assert sent(answer(s, early, text="too early")) == []
    assert [m["transcript"] for m in sent(answer(s, late, text="whole"))] == ["whole"]


def test_flush_with_no_new_speech_returns_the_speculative_result_without_a_decode():
    s = make(speculative=True, timing=True)
    (spec,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.2)])), "speculative")  # < 300 ms
    timing = {"queue_s": 0.0, "model_s": 0.1, "batch_size": 1}
    assert sent(s.on_result(spec.request_id, fake_result(spec.request, "hi"), None, 0.0, timing)) == []
    acts = s.handle_text('{"type": "finalize"}', now=0.0)
    assert requests(acts) == []
    (msg,) = sent(acts)
    assert msg["is_final"] and msg["transcript"] == "hi" and msg["timing_info"]["speculative"] is True
    assert requests(feed(s, silence(0.5))) == []  # the endpoint has nothing left to do


def test_flush_before_the_speculative_result_waits_for_it_and_promotes_it():
    s = make(speculative=True)
    (spec,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.1)])), "speculative")
    acts = s.handle_text("finalize", now=0.0)
    assert requests(acts) == [] and sent(acts) == []
    assert promoted(acts) == {spec.request_id}  # the scheduler moves it ahead, never sheds it
    assert [m["transcript"] for m in sent(answer(s, spec, text="hi"))] == ["hi"]


def test_flush_after_new_speech_decodes_then_and_is_urgent():
    s = make(speculative=True)
    acts = feed(s, np.concatenate([tone(1.0), silence(0.1), tone(0.5)]))
    (spec,) = requests(acts, "speculative")
    assert cancelled(acts) == {spec.request_id}  # speech resumed: a queued one is dropped unrun
    (final,) = requests(s.handle_text("finalize", now=0.0), "final")
    assert final.urgent and final.end_s == pytest.approx(1.6, abs=0.033)


def test_shed_speculation_falls_back_to_a_plain_final():
    s = make(speculative=True)
    (spec,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.1)])), "speculative")
    assert s.on_result(spec.request_id, None, None, now=0.0) == []  # shed under load
    (final,) = requests(feed(s, silence(0.5)), "final")
    assert final.end_s == spec.end_s and not final.urgent
    # shed after the endpoint confirmed it (the confirmation raced the shedding): decoded as a final
    (spec2,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "speculative")
    (again,) = s.on_result(spec2.request_id, None, None, now=0.0)
    assert isinstance(again, Transcribe) and again.kind == "final" and again.request_id == spec2.request_id
    answer(s, final, text="one")
    assert [m["transcription_num"] for m in sent(answer(s, again, text="two"))] == [1]


def test_speculative_finals_keep_order_and_numbers():
    s = make(speculative=True)
    audio = np.concatenate([tone(1.0), silence(0.5), tone(1.0), silence(0.5)])
    acts = feed(s, audio)
    specs = [t for t in requests(acts, "speculative") if t.request_id in promoted(acts)]
    f1, f2 = specs
    assert sent(answer(s, f2, text="second")) == []
    msgs = sent(answer(s, f1, text="first"))
    assert [(m["transcript"], m["transcription_num"]) for m in msgs] == [("first", 0), ("second", 1)]


def test_frequent_flushes_lose_no_speech():
    s = make(speculative=True)
    finals = []
    for _ in range(20):  # 2 s of speech, a finalize every 100 ms
        finals += requests(feed(s, tone(0.1)), "final")
        finals += requests(s.handle_text("finalize", now=0.0), "final")
    finals += requests(s.end_audio(now=0.0), "final")
    assert finals, "every flush closed a too-short segment and dropped it"
    assert finals[0].start_s == 0.0
    for a, b in zip(finals, finals[1:], strict=False):
        assert b.start_s == pytest.approx(a.end_s, abs=0.033)  # contiguous: nothing dropped between
    assert finals[-1].end_s == pytest.approx(2.0, abs=0.033)


def test_a_flush_is_answered_by_a_final_or_at_once():
    s = make(speculative=True)
    assert [type(a) for a in s.finalize()] == [FlushAnswered]  # nothing open: answered empty, at once
    acts = feed(s, np.concatenate([tone(1.0), silence(0.1)]))  # a speculative decode is in flight
    (spec,) = requests(acts, "speculative")
    assert promoted(s.finalize()) == {spec.request_id}  # confirmed: its result will be the final
    assert s.finalize() == []  # nothing new, a final on its way: that final answers this flush too
    (msg,) = sent(answer(s, spec, text="hi"))
    assert msg["transcript"] == "hi"
    assert s.session._flight.finals_outstanding == 0
    s2 = make()
    feed(s2, tone(1.0))
    assert requests(s2.finalize(), "final")
