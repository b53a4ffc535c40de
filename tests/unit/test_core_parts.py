"""The core's parts, each on its own: the segmenter (where finals begin and end), the request table (states,
delivery order, promotion and cancellation pushed out) and the turns (a turn's end reported once)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.fakes import fake_result
from whisper_stream.config import parse_metadata
from whisper_stream.core.events import Cancel, Promote, Transcript
from whisper_stream.core.inflight import InFlight, State
from whisper_stream.core.segmenter import MIN_SPEECH_FRAMES, PAUSE_FINAL_MS, Rules, Segmenter
from whisper_stream.core.settings import Settings
from whisper_stream.core.turns import Turns
from whisper_stream.dsp.vad import FRAME

SPEECH, QUIET = 0.9, 0.02
ZERO = np.zeros(FRAME, np.float32)


def push(seg: Segmenter, probs: list[float]) -> list[str]:
    return [seg.push(ZERO, p) for p in probs]


def test_segmenter_endpoint_window_with_padding_never_reaching_into_covered_audio():
    seg = Segmenter(Rules(min_silence_ms=96, speech_pad_ms=96))  # 3 silent frames end speech; 3 of padding
    steps = push(seg, [QUIET] * 4 + [SPEECH] * 10 + [QUIET] * 3)
    assert steps[:5] == ["idle"] * 4 + ["start"] and steps[-1] == "end"
    assert seg.seg_start == 1 * FRAME  # three frames of padding before the speech
    end = seg.endpoint_end()
    assert end == 17 * FRAME  # the silence's start plus the padding
    assert seg.close(end) == (1 * FRAME, 17 * FRAME) and not seg.in_speech and seg.floor == end
    push(seg, [SPEECH])  # speech right after: its padding stops at the floor (never audio sent twice)
    assert seg.seg_start == end


def test_segmenter_forced_cut_at_the_quietest_recent_frame():
    seg = Segmenter(Rules(max_duration_s=2.0, speech_pad_ms=0))
    push(seg, [SPEECH] * 50 + [0.6] + [SPEECH] * 13)  # the 0.6 frame is the quietest
    assert seg.too_long()
    start, cut = seg.forced_cut()
    assert start == 0 and cut == 50 * FRAME + FRAME // 2 and seg.seg_start == cut == seg.floor


def test_segmenter_pause_due_only_in_a_long_segment_after_a_short_pause():
    frames = round(PAUSE_FINAL_MS / 32)
    seg = Segmenter(Rules(min_silence_ms=2000, speech_pad_ms=32, pause_after_s=1.0))
    push(seg, [SPEECH] * 40 + [QUIET] * (frames - 1))
    assert not seg.pause_due() and seg.speculation_window() == (0, 40 * FRAME + FRAME)
    push(seg, [QUIET])
    assert seg.pause_due()
    assert seg.pause_cut() == (0, 41 * FRAME) and seg.speech_frames == 0 and seg.in_speech
    short = Segmenter(Rules(min_silence_ms=2000, speech_pad_ms=32, pause_after_s=2.0))
    push(short, [SPEECH] * 40 + [QUIET] * frames)
    assert not short.pause_due()  # 1.3 s is not long enough to be cut at a pause


def test_segmenter_no_speculation_for_a_click():
    seg = Segmenter(Rules(speech_pad_ms=0))
    push(seg, [SPEECH] * (MIN_SPEECH_FRAMES - 1) + [QUIET])
    assert seg.speculation_window() is None


SETTINGS = Settings(parse_metadata({}), True, None)
AUDIO = np.zeros(16000, np.float32)


def request(flight: InFlight, kind: str, window=(0, 16000), number: int = 0):
    return flight.request(kind, window, AUDIO, SETTINGS, number=number, utterance=0)  # type: ignore[arg-type]


def test_inflight_a_speculative_decode_answered_first_is_delivered_by_its_confirmation():
    flight = InFlight()
    t = request(flight, "speculative")
    assert flight.spec is not None and flight.spec.state is State.SPECULATIVE
    assert flight.on_result(t.request_id, fake_result(t.request), None, None).finals == ()
    spec = flight.take_spec((0, 16000), SETTINGS)
    assert spec is not None and spec.state is State.DONE
    ready, actions = flight.confirm(
        spec, cause="endpoint", continues=False, urgent=False, end_of_audio=False, processing_s=0.0
    )
    assert ready == [spec] and actions == []  # no second decode, nothing to promote


def test_inflight_a_confirmation_before_the_result_is_pushed_as_a_promotion():
    flight = InFlight()
    t = request(flight, "speculative")
    spec = flight.take_spec((0, 16000), SETTINGS)
    assert spec is not None
    ready, actions = flight.confirm(
        spec, cause="finalize", continues=False, urgent=True, end_of_audio=False, processing_s=0.0
    )
    assert ready == [] and actions == [Promote(t.request_id)] and spec.state is State.CONFIRMED
    again = flight.on_result(t.request_id, None, None, None).again  # shed before the promotion arrived
    assert again is not None and again.kind == "final" and again.urgent
    (done,) = flight.on_result(t.request_id, fake_result(t.request), None, None).finals
    assert done is spec


def test_inflight_another_window_is_not_the_speculative_decode_and_is_cancelled():
    flight = InFlight()
    t = request(flight, "speculative")
    assert flight.take_spec((0, 8000), SETTINGS) is None
    assert flight.drop_spec() == [Cancel(t.request_id)] and flight.spec is None
    assert flight.on_result(t.request_id, fake_result(t.request), None, None).finals == ()  # late: ignored


def test_inflight_finals_leave_in_request_order_and_answer_a_flush():
    flight = InFlight()
    first, second = request(flight, "final", number=0), request(flight, "final", number=1)
    assert flight.answer_flush()  # the latest final on its way answers a flush with nothing of its own
    assert flight.on_result(second.request_id, fake_result(second.request), None, None).finals == ()
    out = flight.on_result(first.request_id, fake_result(first.request), None, None)
    assert [r.id for r in out.finals] == [first.request_id, second.request_id]
    sent = flight.deliver(list(out.finals), 1.0, SETTINGS, lambda r: True)
    assert [t.answers_flush for t in sent if isinstance(t, Transcript)] == [False, True]
    assert not flight.answer_flush()  # nothing on its way any more


def test_inflight_a_queued_partial_is_cancelled_and_its_slot_freed_when_answered():
    flight = InFlight()
    t = request(flight, "partial")
    assert flight.cancel_partial() == [Cancel(t.request_id)] and flight.partial == t.request_id
    flight.on_result(t.request_id, None, None, None)  # the scheduler dropped it unrun
    assert flight.partial is None and flight.cancel_partial() == []


def test_turns_end_once_and_utterance_end_after_enough_audio_and_all_finals():
    turns = Turns()
    event = turns.ended(16000, "endpoint", True)
    assert (event.kind, event.utterance, event.cause, event.has_final) == ("end_of_turn", 0, "endpoint", True)
    assert turns.utterance == 1
    assert turns.utterance_end(16000 + 15000, 0, 1000) == []  # not 1 s of audio without speech yet
    assert turns.utterance_end(16000 + 16000, 1, 1000) == []  # a final still on its way
    (end,) = turns.utterance_end(16000 + 16000, 0, 1000)
    assert end.kind == "utterance_end" and end.time_s == pytest.approx(1.0) and end.utterance == 0
    assert turns.utterance_end(64000, 0, 1000) == []  # once per utterance


def test_turns_the_last_piece_still_on_its_way_takes_the_end_else_an_empty_final_carries_it():
    flight, turns = InFlight(), Turns()
    piece_t = request(flight, "final")
    turns.last_piece = flight.table[piece_t.request_id]
    assert turns.piece_ends(flight, "endpoint", False, 16000, 1) == []  # it is the last final on its way
    assert turns.last_piece.cause == "endpoint" and not turns.last_piece.continues
    flight.on_result(piece_t.request_id, fake_result(piece_t.request), None, None)  # delivered
    (empty,) = turns.piece_ends(flight, "end_of_audio", True, 16000, 1)
    assert isinstance(empty, Transcript) and empty.segments == () and empty.end_of_audio
    assert (empty.number, empty.cause, empty.start_s) == (1, "end_of_audio", 1.0)
