"""What a transcript keeps of a decode: no empty, invented or prompt-echo segments; loops collapsed; flags."""

from __future__ import annotations

from whisper_stream.core.hallucination import filter_segments
from whisper_stream.engines.interface import Segment


def seg(text: str, **kw: float) -> Segment:
    fields = {"avg_logprob": -0.2, "no_speech_prob": 0.01, "compression_ratio": 1.2, **kw}
    return Segment(start=0.0, end=1.0, text=text, **fields)  # type: ignore[arg-type]


def test_keeps_speech_and_drops_empty_invented_and_prompt_echoes():
    kept = filter_segments(
        [
            seg(" Hello there."),
            seg("  "),
            seg(" Thanks for watching!", no_speech_prob=0.9, avg_logprob=-1.2),  # invented on silence
            seg(" Acme Corp quarterly call", avg_logprob=-0.3),  # only the prompt, echoed back
        ],
        prompt="Acme Corp quarterly call",
    )
    assert [(s.text, flagged) for s, flagged in kept] == [(" Hello there.", False)]


def test_a_short_confident_answer_that_the_prompt_contains_is_speech():
    prompt = "We met in Boston last year. And so we decided to stay."
    kept = filter_segments(
        [seg(" And so"), seg(" And so", no_speech_prob=0.5), seg(" we decided to stay")], prompt
    )
    assert [s.text for s, _ in kept] == [" And so"]  # not: the unsure one, the 4-word run


def test_a_loop_that_survived_the_fallback_is_collapsed_and_flagged():
    loop = " the end" * 20
    [(kept, flagged)] = filter_segments([seg(loop, compression_ratio=6.0)], prompt="")
    assert kept.text.split().count("end") < 5 and flagged
