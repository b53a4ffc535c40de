"""The long-repeat guard shared by every engine's fallback ladder and by the session's hallucination flag."""

from __future__ import annotations

from whisper_stream.core.hallucination import REPEATED_RUN_WORDS, possible_hallucination, repeats_long_run
from whisper_stream.engines.fallback import compression_ratio, needs_fallback, preferable
from whisper_stream.engines.interface import Segment

BODY = "Mr. John Dashwood had then leisure to consider how much there might be prudently in his power."
SENTENCE = "And " + BODY
TWICE = f"{SENTENCE} {BODY}"


def seg(text: str, avg_logprob: float = -0.11) -> Segment:
    return Segment(0.0, 5.0, text, avg_logprob, 0.01, compression_ratio(text.strip()))


def test_a_sentence_said_twice_is_a_long_repeat():
    assert repeats_long_run(TWICE)
    assert repeats_long_run("Not what your country can do for you. not what your country can do for you!")


def test_speech_without_a_long_repeat_is_not():
    assert not repeats_long_run(SENTENCE)
    assert not repeats_long_run("And here are some more words, words, words, words.")  # a short loop
    run = " ".join(f"w{i}" for i in range(REPEATED_RUN_WORDS - 1))
    assert not repeats_long_run(f"{run} and then {run}")  # one word short of the limit


def test_a_long_repeat_fails_the_fallback_check_though_its_compression_ratio_passes():
    """The issue's final: log_prob -0.11 and a compression ratio under 2.4, so Whisper's rule kept it."""
    repeated = seg(TWICE)
    assert repeated.compression_ratio < 2.4
    assert needs_fallback(repeated)
    assert not needs_fallback(seg(SENTENCE))


def test_a_result_without_the_repeat_wins_even_with_a_lower_log_prob():
    assert preferable(seg(SENTENCE, -0.4), seg(TWICE, -0.1))
    assert not preferable(seg(TWICE, -0.1), seg(SENTENCE, -0.4))


def test_a_long_repeat_that_survives_fallback_is_flagged():
    assert possible_hallucination(seg(TWICE))
    assert not possible_hallucination(seg(SENTENCE))


def test_the_ladder_re_decodes_only_failures_and_keeps_each_items_preferable_result():
    from whisper_stream.engines.fallback import decode_with_fallback

    good = Segment(0.0, 1.0, "a clear sentence", avg_logprob=-0.2)
    bad = Segment(0.0, 1.0, "mumble", avg_logprob=-2.0)  # under Whisper's log-prob threshold
    worse = Segment(0.0, 1.0, "mumble mumble", avg_logprob=-3.0)
    calls: list[tuple[list[int], float]] = []
    script = {(0, 0.0): good, (1, 0.0): bad, (1, 0.2): worse, (1, 0.4): bad}

    def decode(pending: list[int], temperature: float) -> list[Segment]:
        calls.append((pending, temperature))
        return [script[(i, temperature)] for i in pending]

    best = decode_with_fallback(2, (0.0, 0.2, 0.4), decode, lambda s: s)
    assert calls == [([0, 1], 0.0), ([1], 0.2), ([1], 0.4)]  # item 0 passed at once: never decoded again
    assert best == [good, bad]  # every step failed for item 1: its best log-prob wins
    calls.clear()
    assert decode_with_fallback(2, (), decode, lambda s: s) == [good, bad] and calls == [([0, 1], 0.0)]
