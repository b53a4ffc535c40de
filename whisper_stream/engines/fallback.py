"""Whisper's temperature fallback, shared by every engine that decodes with a temperature ladder: the rules
(`needs_fallback`, `preferable`) and the ladder itself (`decode_with_fallback`)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from whisper_stream.core.hallucination import is_silence, repeats_long_run
from whisper_stream.engines.interface import COMPRESSION_RATIO_THRESHOLD, LOG_PROB_THRESHOLD, Segment

T = TypeVar("T")


def compression_ratio(text: str) -> float:
    """gzip ratio of the text: repetition loops compress far better than speech."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 1.0


def _repetitive(seg: Segment) -> bool:
    """A decoding loop (Whisper's compression-ratio check) or a long run said twice (a beam-search repeat)."""
    return seg.compression_ratio > COMPRESSION_RATIO_THRESHOLD or repeats_long_run(seg.text)


def needs_fallback(seg: Segment) -> bool:
    """Whisper's rule, plus long repeats: the window is decoded again at the next temperature."""
    if is_silence(seg):
        return False  # a higher temperature would only invent text
    return _repetitive(seg) or seg.avg_logprob < LOG_PROB_THRESHOLD


def preferable(new: Segment, old: Segment) -> bool:
    """Whisper's choice when every temperature fails: best log-prob among non-repetitive results."""
    new_ok = not _repetitive(new)
    old_ok = not _repetitive(old)
    if new_ok != old_ok:
        return new_ok
    return new.avg_logprob > old.avg_logprob


def decode_with_fallback(
    n: int,
    temperatures: Sequence[float],
    decode: Callable[[list[int], float], Sequence[T]],
    judged: Callable[[T], Segment],
) -> list[T]:
    """The ladder over `n` items: each step decodes, at the next temperature, only the items whose result
    still `needs_fallback` (`decode(indices, temperature)` returns their results in that order); each item
    keeps its `preferable` result. `judged` gives the segment a result is judged by."""
    best: list[T | None] = [None] * n
    pending = list(range(n))
    ladder = tuple(temperatures) or (0.0,)
    for step, temperature in enumerate(ladder):
        still = []
        for i, result in zip(pending, decode(pending, temperature), strict=True):
            seg, prev = judged(result), best[i]
            if prev is None or preferable(seg, judged(prev)):
                best[i] = result
            if needs_fallback(seg) and step + 1 < len(ladder):
                still.append(i)
        if not still:
            break
        pending = still
    return best  # type: ignore[return-value]
