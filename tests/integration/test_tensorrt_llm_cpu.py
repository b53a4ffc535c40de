"""TensorRTLLMEngine end to end on real speech, through the CPU stand-in faithful to ModelRunnerCpp 1.1.0.

The stand-in (`testing.trtllm_runner`) runs the default CTranslate2 Whisper model behind
ModelRunnerCpp's `from_dir` / `generate()` / output layout, so the engine's whole production path (batched
torch log-mel, first-step call, prompts, decode, log-prob parsing, fallback, segments) runs here. Its
transcripts must agree with the CPU engine's on the same audio (both on 30 s windows: the CPU engine without
its adaptive context) within a WER bound, not character for character: the two log-mels are different
arithmetic (torch float32 then float16 vs numpy float32), so a near-tie token may go either way, and which
way depends on the CPU's instruction set ("grantregården" vs "grantrekåden" on AVX2). One batch carries
everything, to keep this under a minute on two cores.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch", reason="the TensorRT-LLM engine's code path needs torch")

from client.kit.speech import load_audio, load_manifest, wer  # noqa: E402
from whisper_stream.core.hallucination import is_invented, is_silence, possible_hallucination  # noqa: E402
from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest  # noqa: E402

ENGLISH = ["ls_1221-135766-0002", "ls_61-70968-0000", "lj_LJ002-0020"]
LANGUAGES = ["en"] * 3 + ["sv", "es"]  # of the batch's speech windows, in order
# Per window, the CPU engine's transcript as reference: one word in ten may differ (a near-tie token decided
# by float rounding); a broken prompt, parse or fallback changes most words of a window or empties it.
MAX_ENGINE_WER = 0.1


@pytest.fixture(scope="module")
def audio() -> dict[str, np.ndarray]:
    m = {u.id: u for u in load_manifest()}
    return {i: load_audio(m[i].path) for i in [*ENGLISH, "mfa_sv_u0016003", "mfa_mls_es_13697_11991_000000"]}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from testing.trtllm_runner import make_engine_dir
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    return TensorRTLLMEngine(make_engine_dir(tmp_path_factory.mktemp("engine")), runner="faithful")


@pytest.fixture(scope="module")
def batch(audio: dict[str, np.ndarray]) -> list[TranscribeRequest]:
    sv, es = audio["mfa_sv_u0016003"], audio["mfa_mls_es_13697_11991_000000"]
    return [
        *(TranscribeRequest(audio[i]) for i in ENGLISH),
        TranscribeRequest(sv, DecodeOptions(language=None, language_options=("no", "sv"))),
        TranscribeRequest(es, DecodeOptions(language=None, language_options=("es", "it"))),
        TranscribeRequest(np.zeros(16000 * 2, np.float32)),  # silence that reached Whisper
    ]


@pytest.fixture(scope="module")
def results(engine, batch):
    return engine.transcribe_sync(batch)


@pytest.fixture(scope="module")
def cpu_results(batch):
    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    return CTranslate2Engine(adaptive_context=False).transcribe_sync(batch)


def test_transcripts_agree_with_the_cpu_engine(results, cpu_results) -> None:
    """On speech, within MAX_ENGINE_WER per window. On the digital silence both invent a word, never sent
    (`is_invented`), not the same one: with Whisper's zero log-mel frames after the audio, this engine (no
    suppress-tokens filter in the executor) says "[Music]" where the CPU engine, which suppresses non-speech
    symbols, says "you"."""
    for got, want, language in zip(results[:5], cpu_results[:5], LANGUAGES, strict=True):
        assert wer([want.text], [got.text], language) <= MAX_ENGINE_WER, (got.text, want.text)
    assert [r.language for r in results] == ["en"] * 3 + ["sv", "es", "en"]
    assert all(r.text for r in results[:5])
    assert all(is_invented(s) for r in (results[5], cpu_results[5]) for s in r.segments)


def test_languages_are_detected_within_the_options(results, cpu_results) -> None:
    for got, want in zip(results[3:5], cpu_results[3:5], strict=True):
        assert got.language == want.language and got.language_prob == pytest.approx(
            want.language_prob, abs=0.05
        )
    assert all(r.language_prob is None for r in results[:3])


def test_log_prob_and_no_speech_match_the_cpu_engine(results, cpu_results) -> None:
    """On speech: confident, no guard fires; both signals within reach of the CPU engine's."""
    for got, want in zip(results[:5], cpu_results[:5], strict=True):
        (g,), (w,) = got.segments, want.segments
        assert -0.6 < g.avg_logprob < 0 and g.avg_logprob == pytest.approx(w.avg_logprob, abs=0.15)
        assert g.no_speech_prob == pytest.approx(w.no_speech_prob, abs=0.02)
        assert not possible_hallucination(g)


def test_silence_trips_whisper_s_no_speech_guard(results) -> None:
    """Defects 1 and 2 together: with avg_logprob 0 and no_speech 0 this window's invented text passed."""
    for seg in results[5].segments:
        assert seg.no_speech_prob > 0.6 and is_silence(seg) and possible_hallucination(seg)


def test_prompt_prefix_timestamps_and_beams(engine, audio) -> None:
    clip = audio["ls_61-70968-0000"]
    res = engine.transcribe_sync(
        [
            TranscribeRequest(clip, DecodeOptions(prefix="He began")),
            TranscribeRequest(clip, DecodeOptions(prompt="The wizard of Oz.", beam_width=2)),
            TranscribeRequest(
                clip, DecodeOptions(word_timestamps=True)
            ),  # segment times (engine refuses words)
        ]
    )
    assert res[0].text.startswith("He began a confused complaint")
    assert "wizard" in res[1].text.lower()
    segs = res[2].segments
    assert segs and 0.0 <= segs[0].start < segs[-1].end <= len(clip) / 16000 + 0.01
    assert all(s.words == () for s in segs) and "wizard" in res[2].text.lower()
    with pytest.raises(ValueError, match="show_word_timestamps"):
        engine.check_options(DecodeOptions(word_timestamps=True))


def test_a_prefix_is_prompt_to_the_runner_and_text_in_the_transcript(engine, audio) -> None:
    """As the executor: output_ids echo the prompt (prefix included) once, then exactly max_new_tokens new
    ids; the engine puts the prefix back in front of them, as the CPU engine's transcript has it."""
    import torch

    from whisper_stream.dsp.mel import batch_window_features_torch

    clip = audio["ls_61-70968-0000"]
    (res,) = engine.transcribe_sync(
        [TranscribeRequest(clip, DecodeOptions(prefix="He began", max_new_tokens=4))]
    )
    prompt = engine._runner.calls[-1]["prompts"][0]
    prefix = engine.tokenizer.encode(" He began")
    assert prompt[-len(prefix) :] == prefix
    mel = batch_window_features_torch([clip], engine.n_mels, 3000, "cpu")
    feats = [m.T.to(torch.float16).contiguous() for m in mel]
    out = engine._generate([prompt], feats, 4, num_beams=1, output_log_probs=True, output_cum_log_probs=True)
    ids = out["output_ids"][0, 0, : int(out["sequence_lengths"][0, 0])].tolist()
    assert ids[: len(prompt)] == prompt and len(ids) == len(prompt) + 4
    assert ids[len(prompt) : len(prompt) + len(prefix)] != prefix  # not echoed a second time
    assert res.text.strip() == "He began " + engine.tokenizer.decode(ids[len(prompt) :]).strip()


def test_each_request_gets_its_own_length_cap_beside_a_longer_prompt(audio, tmp_path) -> None:
    """The runner takes one max_new_tokens per call: a request whose prompt leaves it more of a small build's
    decoder length than its neighbour's does is decoded in its own call, not cut to the neighbour's cap."""
    from testing.trtllm_runner import make_engine_dir
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    small = TensorRTLLMEngine(make_engine_dir(tmp_path, max_seq_len=114, max_input_len=14), runner="faithful")
    clip = audio["ls_61-70968-0000"]
    prefixed = DecodeOptions(prefix="one two three four five six seven eight nine")
    small.transcribe_sync([TranscribeRequest(clip), TranscribeRequest(clip, prefixed)])
    caps = {len(c["prompts"][0]): c["max_new_tokens"] for c in small._runner.calls if len(c["prompts"]) == 1}
    assert caps == {4: 110, 13: 101}  # each its own: 114 - its own prompt length
