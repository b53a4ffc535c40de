"""Choosing a segment's language from the detector's probabilities: option restriction and stream memory.

Short segments are where Whisper's detector wavers between close languages (Spanish/Portuguese, ...). A
stream rarely switches language mid-sentence, so when the detector is unsure and the stream's previous
language is still a strong candidate, that language is kept; a confident detection always wins, so a stream
can switch languages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

UNSURE_BELOW = 0.8  # top probability under which the stream's previous language may be kept
HINT_SHARE = 0.2  # ... if it has at least this share of the top probability


def choose_language(
    probs: Mapping[str, float], options: Iterable[str] = (), hint: str | None = None
) -> tuple[str, float]:
    """(language, probability renormalised over the allowed languages)."""
    allowed = set(options)
    scores = {lang: p for lang, p in probs.items() if not allowed or lang in allowed}
    if not scores:
        raise ValueError(f"none of the language options {sorted(allowed)} is known to the model")
    total = sum(scores.values()) or 1.0
    best = max(scores, key=scores.__getitem__)
    top = scores[best] / total
    if (
        hint
        and hint != best
        and hint in scores
        and top < UNSURE_BELOW
        and scores[hint] >= HINT_SHARE * scores[best]
    ):
        return hint, scores[hint] / total
    return best, top
