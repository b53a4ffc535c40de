"""Pause finals: a segment that reached `pause_final_after_s` is also closed by a short pause (fake VAD)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.fakes import BasetenStream, LoudnessVad, fake_result, silence, tone
from tests.unit.test_session import answer, feed, frames_until, requests, sent
from whisper_stream.config import parse_metadata
from whisper_stream.core.events import Transcript, TurnEvent
from whisper_stream.core.segmenter import PAUSE_FINAL_MS
from whisper_stream.engines.interface import TranscribeResult

PAUSE_S = 0.15  # longer than PAUSE_FINAL_MS, far shorter than the 300 ms endpoint
PAD_S = 0.03


def make(after_s: float = 4.0, speculative: bool = True, **streaming) -> BasetenStream:
    meta = {
        "streaming_vad_config": {"min_silence_duration_ms": 300, "speech_pad_ms": int(PAD_S * 1000)},
        "streaming_params": {
            "speculative_finals": speculative,
            "pause_final_after_s": after_s,
            **streaming,
        },
    }
    return BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s")


def finals_of(session: BasetenStream, acts: list) -> list:
    """Final requests, plain or speculative ones the session has confirmed."""
    return [
        t
        for t in requests(acts)
        if t.kind == "final" or (t.kind == "speculative" and t.request_id in session.promoted)
    ]


def test_a_long_segment_ends_at_its_next_pause_and_the_utterance_goes_on():
    s = make()
    acts = feed(s, np.concatenate([tone(4.512), silence(PAUSE_S), tone(2.0), silence(1.0)]))
    first, second = finals_of(s, acts)
    assert (first.start_s, first.end_s) == (0.0, pytest.approx(4.512 + PAD_S, abs=1e-3))
    assert second.start_s == first.end_s  # every sample in exactly one final
    assert second.end_s == pytest.approx(4.512 + PAUSE_S + 2.0 + PAD_S, abs=0.033)
    acts = answer(s, first, text="one") + answer(s, second, text="two")
    assert [(m["transcript"], m["transcription_num"]) for m in sent(acts)] == [("one", 0), ("two", 1)]
    assert [i.cause for i in _infos(acts)] == ["pause", "endpoint"]


def test_the_pause_final_is_the_speculative_decode_confirmed_after_the_pause_length():
    s = make()
    audio = np.concatenate([tone(4.512), silence(PAUSE_S), tone(1.0)])
    at, acts = frames_until(s, audio, "speculative")
    assert at == 141  # 4.512 s = 141 frames of tone: the pause's first frame starts the decode
    (spec,) = requests(acts, "speculative")
    assert spec.request_id in s.promoted and requests(acts, "final") == []
    # confirmed once the pause lasted PAUSE_FINAL_MS, long before the 300 ms endpoint
    s2 = make()
    feed(s2, tone(4.512))
    frames = round(PAUSE_FINAL_MS / 32)
    (spec2,) = requests(feed(s2, silence(frames * 0.032)), "speculative")
    assert spec2.request_id in s2.promoted
    s3 = make()
    feed(s3, tone(4.512))
    (spec3,) = requests(feed(s3, silence((frames - 1) * 0.032)), "speculative")
    assert spec3.request_id not in s3.promoted


@pytest.mark.parametrize(
    ("speech_s", "after_s", "pieces"),
    [(3.0, 4.0, 1), (4.5, 0.0, 1), (4.5, 4.0, 2), (2.5, 2.0, 2)],
)
def test_only_segments_of_the_given_length_end_at_a_pause(speech_s, after_s, pieces):
    s = make(after_s=after_s)
    acts = feed(s, np.concatenate([tone(speech_s), silence(PAUSE_S), tone(1.0), silence(1.0)]))
    assert len(finals_of(s, acts)) == pieces


def test_without_speculation_the_pause_final_is_decoded_at_the_cut():
    s = make(speculative=False)
    acts = feed(s, np.concatenate([tone(4.512), silence(PAUSE_S), tone(1.0), silence(1.0)]))
    first, second = requests(acts, "final")
    assert first.continues and first.end_s == pytest.approx(4.512 + PAD_S, abs=1e-3)
    assert second.start_s == first.end_s


def test_client_committed_turns_get_no_pause_finals():
    meta = {"streaming_params": {"pause_final_after_s": 1.0}}
    s = BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s", end_on_silence=False)
    acts = feed(s, np.concatenate([tone(2.0), silence(PAUSE_S), tone(1.0), silence(0.5)]))
    assert finals_of(s, acts) == [] and s.in_speech


def _infos(actions) -> list[Transcript]:
    """The non-empty transcripts (what the old session's TranscriptInfo described)."""
    return [a for a in actions if isinstance(a, Transcript) and a.segments]


def _empty_finals(actions) -> list[Transcript]:
    return [a for a in actions if isinstance(a, Transcript) and a.kind == "final" and not a.segments]


def test_a_pause_that_becomes_the_endpoint_gives_the_piece_the_endpoints_cause():
    """Decoding still when the endpoint comes: the piece leaves as the utterance's (endpoint) final."""
    s = make()
    acts = feed(s, np.concatenate([tone(4.512), silence(1.0)]))
    (piece,) = finals_of(s, acts)
    assert not _empty_finals(acts)
    (info,) = _infos(answer(s, piece, text="all of it"))
    assert info.cause == "endpoint"


def test_a_piece_already_sent_gets_an_empty_final_carrying_the_endpoint():
    s = make()
    acts = feed(s, np.concatenate([tone(4.512), silence(PAUSE_S)]))
    (piece,) = finals_of(s, acts)
    (info,) = _infos(answer(s, piece, text="all of it"))
    assert info.cause == "pause"
    acts = feed(s, silence(1.0))
    (empty,) = _empty_finals(acts)
    assert empty.cause == "endpoint" and not empty.continues and requests(acts) == []


def test_a_flush_after_the_piece_is_answered_by_it():
    s = make()
    (piece,) = finals_of(s, feed(s, np.concatenate([tone(4.512), silence(PAUSE_S)])))
    # nothing of its own to finalize (only silence since the cut): the piece, still decoding, answers it
    assert s.finalize() == []
    (info,) = _infos(answer(s, piece, text="all of it"))
    assert info.answers_flush


def test_no_partial_of_the_silence_after_a_cut():
    meta = {
        "streaming_vad_config": {"min_silence_duration_ms": 2000, "speech_pad_ms": 30},
        "streaming_params": {"enable_partial_transcripts": True, "partial_transcript_interval_s": 0.2},
    }
    s = BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s")
    acts: list = []
    for i in range(0, 16000 * 6, 512):  # 4.5 s of speech, then 1.5 s of silence; partials answered at once
        acts += feed(s, tone(4.512)[i : i + 512] if i < 4.512 * 16000 else silence(0.032))
        for p in requests(acts, "partial"):
            if p.request_id not in s.cancelled:
                answer(s, p)
    (piece,) = finals_of(s, acts)  # the cut came after 100 ms of silence; the endpoint only comes at 2 s
    assert s.in_speech and [p for p in requests(acts, "partial") if p.number > piece.number] == []


def test_end_audio_marks_the_piece_still_on_its_way_as_the_flush():
    s = make()
    (piece,) = finals_of(s, feed(s, np.concatenate([tone(4.512), silence(PAUSE_S)])))
    acts = s.end_audio(now=0.0)
    assert requests(acts) == [] and [m["body"]["status"] for m in sent(acts)] == ["acknowledged"]
    msgs = sent(answer(s, piece, text="all of it"))
    assert msgs[0]["is_end_of_audio_flush"] is True and msgs[0]["transcript"] == "all of it"
    assert msgs[-1]["body"]["status"] == "finished"


def test_end_audio_after_the_piece_was_sent_sends_an_empty_flush_final():
    s = make()
    (piece,) = finals_of(s, feed(s, np.concatenate([tone(4.512), silence(PAUSE_S)])))
    (msg,) = sent(answer(s, piece, text="all of it"))
    assert "is_end_of_audio_flush" not in msg
    msgs = sent(s.end_audio(now=0.0))
    flush = msgs[1]
    assert flush["is_end_of_audio_flush"] is True and flush["transcript"] == "" and flush["is_final"]
    assert flush["transcription_num"] == msg["transcription_num"] + 1
    assert msgs[-1]["body"]["status"] == "finished"


def test_utterance_end_follows_the_last_piece():
    meta = {
        "streaming_vad_config": {"min_silence_duration_ms": 300, "speech_pad_ms": 30},
        "streaming_params": {"pause_final_after_s": 4.0},
    }
    s = BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s", utterance_end_ms=1000)
    acts = feed(s, np.concatenate([tone(4.512), silence(0.5)]))
    (piece,) = finals_of(s, acts)
    assert not [a for a in acts if isinstance(a, TurnEvent) and a.kind == "utterance_end"]
    answer(s, piece)
    acts = feed(s, silence(1.0))
    (end,) = [a for a in acts if isinstance(a, TurnEvent) and a.kind == "utterance_end"]
    assert end.time_s == pytest.approx(piece.end_s)


def test_a_short_last_word_after_a_cut_is_still_transcribed():
    """Fewer frames than a click would need: after a cut they are the end of an utterance, not a click."""
    for ending in ("endpoint", "end_audio"):
        s = make(speculative=False)
        word = np.concatenate([tone(4.512), silence(PAUSE_S), tone(0.1)])
        acts = feed(s, np.concatenate([word, silence(1.0)]) if ending == "endpoint" else word)
        if ending == "end_audio":
            acts += s.end_audio(now=0.0)
        piece, last = requests(acts, "final")
        assert last.start_s == piece.end_s and last.end_s >= 4.512 + PAUSE_S + 0.1 - 0.033


def test_a_piece_decoded_before_its_cut_passes_its_language_on():
    def result(req, language):
        r = fake_result(req.request, text="x")
        return TranscribeResult(segments=r.segments, language=language, language_prob=0.9)

    for answer_first in (True, False):  # the result arrives before the cut, or after it
        meta = {
            "streaming_vad_config": {"min_silence_duration_ms": 300, "speech_pad_ms": 30},
            "whisper_params": {"audio_language": "auto"},
        }
        s = BasetenStream(parse_metadata(meta), LoudnessVad(), stream_id="s")
        feed(s, tone(3.2))
        (spec,) = requests(feed(s, silence(0.064)), "speculative")
        if answer_first:
            s.on_result(spec.request_id, result(spec, "de"), None, 0.0)
        feed(s, silence(0.1))
        assert spec.request_id in s.promoted or answer_first
        if not answer_first:
            s.on_result(spec.request_id, result(spec, "de"), None, 0.0)
        (nxt,) = requests(feed(s, np.concatenate([tone(1.0), silence(0.064)])), "speculative")
        assert nxt.request.options.language == "de", answer_first
