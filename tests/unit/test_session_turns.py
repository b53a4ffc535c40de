"""The session rules the Deepgram and OpenAI adapters rely on (shared by all protocols): turn events,
transcript info, update_config from the next utterance, clear, client-committed turns."""

from __future__ import annotations

import json

import numpy as np

from tests.unit.fakes import BasetenStream, LoudnessVad, silence, tone
from tests.unit.test_session import answer, feed, make, requests, sent
from whisper_stream.config import StreamConfig, parse_metadata
from whisper_stream.core.events import Transcript, TurnEvent
from whisper_stream.engines.interface import Segment, TranscribeResult, Word


def events(actions, kind=None) -> list[TurnEvent]:
    return [a for a in actions if isinstance(a, TurnEvent) and (kind is None or a.kind == kind)]


def transcripts(actions) -> list[Transcript]:
    return [a for a in actions if isinstance(a, Transcript)]


def plain(meta: dict) -> StreamConfig:
    """Metadata on the plain (non-speculative) final path, which these tests check."""
    return parse_metadata({**meta, "streaming_params": {"speculative_finals": False}})


def with_events(**kw) -> BasetenStream:
    meta = {
        "streaming_vad_config": {"min_silence_duration_ms": 300, "speech_pad_ms": 0},
        "streaming_params": {"speculative_finals": False},  # the plain path; speculation: test_session.py
    }
    return BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s", **kw)


def test_baseten_renders_no_turn_events():
    s = make()
    acts = feed(s, np.concatenate([silence(0.5), tone(1.0), silence(1.0)]))
    assert events(acts) and not sent(acts) and len(requests(acts, "final")) == 1


def test_speech_started_stopped_and_causes():
    s = with_events()
    acts = feed(s, np.concatenate([silence(0.5), tone(1.0), silence(1.0)]))
    started, stopped = events(acts, "speech_started"), events(acts, "speech_stopped")
    assert len(started) == len(stopped) == 1
    assert abs(started[0].time_s - 0.5) < 0.04 and abs(stopped[0].time_s - 1.5) < 0.04
    final = requests(acts, "final")[0]
    (t,) = transcripts(answer(s, final, text="hello"))
    assert t.cause == "endpoint" and t.kind == "final" and t.text == "hello" and not t.answers_flush
    (end,) = events(acts, "end_of_turn")
    assert end.cause == "endpoint" and end.has_final and end.utterance == t.utterance == 0
    feed(s, tone(1.0))
    final = requests(s.finalize(), "final")[0]
    (t,) = transcripts(answer(s, final))
    assert t.cause == "finalize" and t.answers_flush and t.utterance == 1


def test_an_empty_final_is_a_transcript_baseten_does_not_send():
    s = with_events()
    final = requests(feed(s, np.concatenate([tone(1.0), silence(1.0)])), "final")[0]
    acts = answer(s, final, text="")
    (t,) = transcripts(acts)
    assert not sent(acts) and t.number == final.number and t.segments == () and t.kind == "final"


def test_utterance_end_after_its_finals_and_enough_silence():
    s = with_events(utterance_end_ms=1000)
    acts = feed(s, np.concatenate([tone(1.0), silence(2.0)]))
    assert not events(acts, "utterance_end")  # the final is still outstanding
    acts = answer(s, requests(acts, "final")[0], text="hi")
    ends = events(acts, "utterance_end")
    assert len(ends) == 1 and abs(ends[0].time_s - 1.0) < 0.04
    assert not events(feed(s, silence(2.0)), "utterance_end")  # once per utterance


def test_a_click_after_the_utterance_does_not_cancel_its_utterance_end():
    s = with_events(utterance_end_ms=1000)
    final = requests(feed(s, np.concatenate([tone(1.0), silence(0.5)])), "final")[0]
    answer(s, final, text="hi")
    acts = feed(s, np.concatenate([tone(0.1), silence(1.5)]))  # 100 ms: a click, no utterance
    assert not requests(acts, "final")
    (end,) = events(acts, "utterance_end")
    assert abs(end.time_s - 1.0) < 0.04


def test_update_config_applies_from_the_next_utterance():
    s = with_events()
    acts = feed(s, tone(1.0))  # an utterance is open
    config = plain({"whisper_params": {"prompt": "Kubernetes", "audio_language": "de"}})
    assert s.update_config(config) is False
    final = requests(feed(s, silence(1.0)), "final")[0]
    assert final.request.options.prompt == "" and final.request.options.language == "en"  # the old settings
    final = requests(feed(s, np.concatenate([tone(1.0), silence(1.0)])), "final")[0]
    assert final.request.options.prompt == "Kubernetes" and final.request.options.language == "de"
    assert acts is not None


def test_an_outstanding_final_is_sent_with_the_settings_it_was_requested_with():
    """update_config applies when the segment closes, while its final is still being decoded: that final
    keeps its word timestamps, and is not filtered as an echo of the new prompt."""
    s = BasetenStream(plain({"whisper_params": {"show_word_timestamps": True}}), stream_id="s")
    final = requests(feed(s, np.concatenate([tone(1.0), silence(1.0)])), "final")[0]
    config = plain({"whisper_params": {"show_word_timestamps": False, "prompt": "okay"}})
    assert s.update_config(config) is True
    word = Word(word=" okay", start=0.1, end=0.5, prob=0.9)
    seg = Segment(0.0, 1.0, " okay", -0.1, no_speech_prob=0.01, compression_ratio=1.0, words=(word,))
    result = TranscribeResult(segments=(seg,), language="en", language_prob=None)
    (msg,) = sent(s.on_result(final.request_id, result, None, 0.0))
    assert msg["transcript"] == "okay" and msg["segments"][0]["word_timestamps"]


def test_update_config_changes_the_endpointer_now_when_idle():
    s = with_events()
    longer = plain({"streaming_vad_config": {"min_silence_duration_ms": 1500}})
    assert s.update_config(longer) is True
    acts = feed(s, np.concatenate([tone(1.0), silence(1.0), tone(1.0), silence(2.0)]))
    assert len(requests(acts, "final")) == 1  # a 1 s pause no longer ends the utterance


def test_update_config_refuses_a_new_audio_format():
    s = make()
    msgs = sent(
        s.handle_text(
            json.dumps({"type": "update_config", "body": {"streaming_params": {"sample_rate": 8000}}}), 0.0
        )
    )
    assert msgs[0]["type"] == "error" and msgs[0]["body"]["field"] == "streaming_params.sample_rate"
    assert msgs[0]["body"]["recoverable"] is True


def test_baseten_update_config_message():
    s = make()
    body = {"whisper_params": {"prompt": "Baseten"}, "streaming_vad_config": {"threshold": 0.6}}
    msgs = sent(s.handle_text(json.dumps({"type": "update_config", "trace_id": "t", "body": body}), 0.0))
    assert msgs == [{"type": "update_config", "trace_id": "t", "body": {"status": "applied"}}]
    final = requests(feed(s, np.concatenate([tone(1.0), silence(1.0)])), "final")[0]
    assert final.request.options.prompt == "Baseten" and s.config.streaming_vad_config.threshold == 0.6
    bad = sent(s.handle_text(json.dumps({"type": "update_config", "body": {"stream_id": "x"}}), 0.0))
    assert bad[0]["body"]["error_type"] == "CONFIGURATION_ERROR"


def test_clear_drops_the_open_utterance():
    s = with_events()
    feed(s, tone(1.0))
    s.clear()
    assert not s.in_speech and not requests(feed(s, silence(1.0)))


def test_client_committed_turns_never_end_on_silence():
    s = with_events(end_on_silence=False)
    acts = feed(s, np.concatenate([tone(1.0), silence(2.0), tone(1.0), silence(2.0)]))
    assert not requests(acts, "final") and s.in_speech
    final = requests(s.finalize(), "final")[0]
    assert abs(final.end_s - final.start_s - 6.0) < 0.05
