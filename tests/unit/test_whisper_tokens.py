"""Prompt token ids, tokenizer and restricted language detection, checked against documented ids and
openai-whisper's own tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_stream.engines.whisper_tokens import (
    LANGUAGE_CODES,
    SpecialTokens,
    WhisperTokenizer,
    build_prompt,
    restricted_language,
    sot_sequence,
    split_segments,
)

V3 = SpecialTokens.for_model("large-v3")
V2 = SpecialTokens.for_model("large-v2")


def test_documented_prompt_ids() -> None:
    # REFERENCE.md section 4: <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    assert sot_sequence(V3, "en") == [50258, 50259, 50360, 50364]
    assert sot_sequence(V2, "en") == [50258, 50259, 50359, 50363]
    assert V3.eot == V2.eot == 50257
    assert V3.vocab_size == 51866 and V2.vocab_size == 51865
    assert SpecialTokens.from_vocab_size(51866) == V3 and SpecialTokens.from_vocab_size(51865) == V2
    assert V3.language_token("yue") == 50358
    with pytest.raises(ValueError):
        V2.language_token("yue")  # Cantonese arrived with large-v3


@pytest.mark.parametrize("num_languages", [99, 100])
def test_special_ids_equal_openai_whisper(num_languages: int) -> None:
    tokenizer = pytest.importorskip("whisper.tokenizer", reason="openai-whisper not installed")
    assert LANGUAGE_CODES == tuple(tokenizer.LANGUAGES)
    special = SpecialTokens(num_languages)
    for lang in ("en", "de", "zh", "sv", "haw", "jw"):
        for task in ("transcribe", "translate"):
            ref = tokenizer.get_tokenizer(True, num_languages=num_languages, language=lang, task=task)
            assert sot_sequence(special, lang, task, timestamps=True) == list(ref.sot_sequence)
            assert sot_sequence(special, lang, task) == list(ref.sot_sequence_including_notimestamps)
    ref = tokenizer.get_tokenizer(True, num_languages=num_languages)
    assert (special.eot, special.sot_prev, special.no_speech, special.timestamp_begin, special.sot_lm) == (
        ref.eot,
        ref.sot_prev,
        ref.no_speech,
        ref.timestamp_begin,
        ref.sot_lm,
    )
    assert special.vocab_size == ref.encoding.n_vocab
    assert [special.language_token(c) for c in ref.all_language_codes] == list(ref.all_language_tokens)


def test_text_tokens_and_prompt_equal_openai_whisper() -> None:
    tokenizer = pytest.importorskip("whisper.tokenizer", reason="openai-whisper not installed")
    ref = tokenizer.get_tokenizer(True, num_languages=100, language="de", task="transcribe")
    ours = WhisperTokenizer(V3)
    texts = [" Hello world, it's 3:45pm!", " Grüß Gott, wie geht's?", " 你好，世界", " <|en|> stays text"]
    for text in texts:
        assert ours.encode(text) == ref.encoding.encode_ordinary(text)
        assert ours.decode(ours.encode(text)) == text
    prev, prefix = "So we met again yesterday.", "Und dann"
    expected = (
        [ref.sot_prev]
        + ref.encode(" " + prev)
        + list(ref.sot_sequence_including_notimestamps)
        + ref.encode(" " + prefix)
    )
    assert ours.prompt("de", previous_text=prev, prefix=prefix) == expected
    # decode drops special and timestamp tokens
    assert ours.decode([V3.sot, *ours.encode(" Hi"), V3.timestamp_begin + 10, V3.eot]) == " Hi"


def test_prompt_fits_the_decoder_input_length() -> None:
    previous = list(range(1000, 1300))
    full = build_prompt(V3, "en", previous=previous)
    assert full[0] == V3.sot_prev and full[1:224] == previous[-223:] and full[-4:] == sot_sequence(V3, "en")
    short = build_prompt(V3, "en", previous=previous, prefix=[7, 8], max_length=14)
    assert len(short) == 14
    assert short == [V3.sot_prev, *previous[-7:], *sot_sequence(V3, "en"), 7, 8]
    assert build_prompt(V3, "en", previous=previous, max_length=4) == sot_sequence(V3, "en")
    with pytest.raises(ValueError):
        build_prompt(V3, "en", prefix=list(range(20)), max_length=14)


def _logits(best: dict[str, float]) -> np.ndarray:
    z = np.full(V3.vocab_size, -5.0, dtype=np.float32)
    z[V3.language_token("en") - 1] = 30.0  # a non-language token (eot region) must never win
    for code, value in best.items():
        z[V3.language_token(code)] = value
    return z


def test_restricted_language_picks_the_best_allowed() -> None:
    z = _logits({"de": 10.0, "fr": 8.0, "es": 7.0, "en": 2.0})
    assert restricted_language(z, (), V3)[0] == "de"
    lang, prob = restricted_language(z, ("fr", "es"), V3)
    assert lang == "fr"
    assert prob == pytest.approx(np.exp(8.0) / (np.exp(8.0) + np.exp(7.0)), rel=1e-6)
    # only-language-token scores in token order, and probabilities instead of logits
    lang_only = z[V3.sot + 1 : V3.sot + 1 + V3.num_languages]
    assert restricted_language(lang_only, ("es", "en"), V3)[0] == "es"
    probs = np.exp(lang_only - lang_only.max())
    probs /= probs.sum()
    lang, prob = restricted_language(probs, ("en", "es"), V3, are_probs=True)
    assert lang == "es" and prob == pytest.approx(np.exp(7.0) / (np.exp(7.0) + np.exp(2.0)), rel=1e-5)
    with pytest.raises(ValueError):
        restricted_language(z, ("xx",), V3)


def test_split_segments_at_timestamps() -> None:
    ts = V3.timestamp_begin
    a, b = [100, 101], [102]
    tokens = [ts + 0, *a, ts + 100, ts + 100, *b, ts + 200, V3.eot, 999]
    assert split_segments(tokens, V3, 5.0) == [(0.0, 2.0, a), (2.0, 4.0, b)]
    assert split_segments([ts + 50, *a], V3, 3.3) == [(1.0, 3.3, a)]  # unclosed: ends at the audio's end
    assert split_segments(a, V3, 3.3) == [(0.0, 3.3, a)]
    assert split_segments([V3.eot], V3, 1.0) == []
