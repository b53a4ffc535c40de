"""Whisper options, audio formats and guards against invented text: real server, real model, real speech."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np
import pytest

from client.kit.speech import join_utterances, load_audio, to_pcm16, wer
from client.protocol import metadata, stream_pcm
from tests.integration.test_admission_and_drain import served_engine
from whisper_stream.dsp.audio import encode, normalize_loudness, resample
from whisper_stream.engines.interface import TranscribeRequest

LANGUAGE_FILES = {
    "sv": "mfa_sv_u0016003",
    "ru": "ds_ru",
    "ja": "mfa_cv_ja_24511055",
    "zh": "wenet_aishell_BAC009S0724W0121",
}
ENGLISH = ["ls_1089-134686-0001", "ls_61-70968-0000", "lj_LJ002-0020", "ls_1221-135766-0002"]
NOISE_S = float(os.environ.get("WHISPER_STREAM_NOISE_S", "45"))  # `make bench-noise` runs 600


def _languages(result) -> list[str]:
    return [m["language_code"] for m in result.finals if m["segments"] or m.get("language_code")]


async def test_auto_detects_each_language(server, speech):
    """Per file: the first final and most of the speech (by duration) carry the file's language.

    Whisper base may still label a short trailing fragment with a close language (es/pt) when the stream's
    previous language is not known yet; real-time pacing gives the session that hint."""
    streams = {
        lang: to_pcm16(load_audio(speech[i].path)) + bytes(32000) for lang, i in LANGUAGE_FILES.items()
    }
    results = await asyncio.gather(
        *(stream_pcm(server.url, metadata(language="auto"), pcm, speed=1.0) for pcm in streams.values())
    )
    for lang, res in zip(streams, results, strict=True):
        finals = [m for m in res.finals if m["segments"]]
        assert finals, lang
        assert finals[0]["language_code"] == lang, (lang, finals[0]["language_code"], finals[0]["transcript"])
        by_language: dict[str, float] = {}
        for m in finals:
            assert 0.0 < m["language_prob"] <= 1.0
            assert all(s["language_code"] == m["language_code"] for s in m["segments"])
            by_language[m["language_code"]] = by_language.get(m["language_code"], 0.0) + m["audio_length_sec"]
        assert max(by_language, key=by_language.__getitem__) == lang, (lang, by_language)


async def test_language_options_restrict_detection(server, speech):
    pcm = to_pcm16(load_audio(speech["ds_ru"].path)) + bytes(32000)
    res = await stream_pcm(server.url, metadata(language="auto", language_options=["en", "fr"]), pcm, speed=0)
    assert res.finals
    assert {m["language_code"] for m in res.finals} <= {"en", "fr"}


async def test_language_detection_only_returns_languages_without_text(server, speech):
    pcm = to_pcm16(load_audio(speech["mfa_mls_es_13697_11991_000000"].path)) + bytes(32000)
    res = await stream_pcm(server.url, metadata(language="auto", language_detection_only=True), pcm, speed=0)
    assert res.finals and res.finished
    for m in res.finals:
        assert m["transcript"] == "" and m["segments"] == []
    assert "es" in {m["language_code"] for m in res.finals}


async def test_stream_switching_languages_reports_both(server, speech):
    stream = join_utterances([speech["ls_61-70968-0000"], speech["mfa_sv_u0016003"]], pause_s=1.5)
    res = await stream_pcm(server.url, metadata(language="auto"), to_pcm16(stream.audio), speed=0)
    langs = [m["language_code"] for m in res.finals if m["segments"]]
    assert langs[0] == "en" and langs[-1] == "sv", langs


async def test_translate_to_english(server, speech):
    pcm = to_pcm16(load_audio(speech["mfa_sv_u0016004"].path)) + bytes(32000)
    res = await stream_pcm(server.url, metadata(language="sv", output_language="en"), pcm, speed=0)
    text = res.text.lower()
    assert res.finals and text.isascii()
    assert not any(w in text.split() for w in ("och", "det", "är", "som", "börjar")), text


async def test_word_timestamps_are_monotonic_inside_their_segment_and_join_to_text(server, speech):
    stream = join_utterances([speech["ls_1089-134686-0001"], speech["jfk"]], pause_s=1.5)
    res = await stream_pcm(server.url, metadata(show_word_timestamps=True), to_pcm16(stream.audio), speed=0)
    segments = [s for m in res.finals for s in m["segments"]]
    assert len(segments) >= 2
    previous_end = 0.0
    for seg in segments:
        words = seg["word_timestamps"]
        assert words, seg
        for w in words:
            assert seg["start_time"] - 1e-6 <= w["start_time"] <= w["end_time"] <= seg["end_time"] + 1e-6
            assert w["start_time"] >= previous_end - 1e-6
            assert 0.0 <= w["prob"] <= 1.0
            previous_end = w["end_time"]
        joined = " ".join(w["word"] for w in words)
        assert joined.split() == seg["text"].split()


@pytest.fixture(scope="module")
def english(speech):
    return join_utterances([speech[i] for i in ENGLISH], pause_s=1.2)


@pytest.fixture(scope="module")
def reference_wer(server, english):
    res = asyncio.run(stream_pcm(server.url, metadata(), encode(english.audio, "pcm_s16le"), speed=0))
    return wer([" ".join(u.text for u in english.utterances)], [res.text])


@pytest.mark.parametrize(
    "encoding,rate,allowed",
    [
        ("pcm_mulaw", 8000, 0.03),
        # A-law at 8 kHz hears "squalid" as "squallad" (with or without pause finals): one word more
        ("pcm_alaw", 8000, 0.05),
        ("pcm_s16le", 44100, 0.03),
        ("pcm_s16le", 48000, 0.03),
        ("pcm_f32le", 16000, 0.03),
        ("pcm_s16le", 8000, 0.03),
    ],
)
async def test_formats_and_rates_match_16k_s16le(server, english, reference_wer, encoding, rate, allowed):
    audio = resample(english.audio, 16000, rate)
    width = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}[encoding]
    frame = rate * 32 // 1000 * width  # 32 ms frames, as clients send
    res = await stream_pcm(
        server.url,
        metadata(encoding=encoding, sample_rate=rate),
        encode(audio, encoding),
        speed=0,
        frame_bytes=frame,
        bytes_per_second=rate * width,
    )
    got = wer([" ".join(u.text for u in english.utterances)], [res.text])
    print(f"{encoding} {rate} Hz: WER {got:.3f} vs 16 kHz s16le {reference_wer:.3f}")
    assert got <= reference_wer + allowed, res.text


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.arange(1, len(spectrum) + 1))
    x = np.fft.irfft(spectrum, n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def _noises(seconds: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = int(seconds * 16000)
    return {
        "silence": np.zeros(n, np.float32),
        "white": np.clip(rng.standard_normal(n) * 0.3, -1, 1).astype(np.float32),
        "pink": _pink(n, rng),
    }


@pytest.mark.parametrize("kind", ["silence", "white", "pink"])
async def test_no_words_from_silence_or_noise(server, kind):
    audio = _noises(NOISE_S)[kind]
    res = await stream_pcm(server.url, metadata(partials=True), encode(audio, "pcm_s16le"), speed=0)
    assert res.finished and not res.errors
    assert [m["transcript"] for m in res.finals + res.partials if m["transcript"]] == []


@pytest.mark.parametrize("kind", ["white", "pink"])
async def test_noise_let_through_by_a_low_vad_threshold_is_still_not_transcribed(server, kind):
    """VAD threshold 0.01 opens the gate to noise: Whisper's no-speech and log-prob guards must hold."""
    audio = _noises(12.0)[kind]
    meta = metadata(threshold=0.01, prompt="Meeting notes about the budget.")
    res = await stream_pcm(server.url, meta, encode(audio, "pcm_s16le"), speed=0)
    assert [m["transcript"] for m in res.finals if m["transcript"]] == []


async def test_prompt_is_never_returned_on_silence(server):
    audio = np.concatenate([_noises(8.0)["silence"], np.full(16000, 0.001, np.float32)])
    meta = metadata(enable_vad=False, prompt="Quarterly budget review with the finance team.")
    res = await stream_pcm(server.url, meta, encode(audio, "pcm_s16le"), speed=0)
    assert res.finished
    assert [m["transcript"] for m in res.finals if m["transcript"]] == []


async def test_fixed_segmentation_without_vad_transcribes_speech_and_skips_silence(server, speech):
    stream = join_utterances([speech["ls_61-70968-0000"]], pause_s=12.0, lead_s=0.5)
    meta = metadata(enable_vad=False)
    meta["streaming_params"]["final_transcript_max_duration_s"] = 8
    res = await stream_pcm(server.url, meta, encode(stream.audio, "pcm_s16le"), speed=0)
    texts = [m["transcript"] for m in res.finals if m["transcript"]]
    assert "wizard" in " ".join(texts).lower()
    assert len(texts) <= 2  # the silent 8 s windows produced nothing


async def test_timing_info_says_where_the_time_went(server, speech):
    pcm = to_pcm16(load_audio(speech["ls_61-70968-0000"].path)) + bytes(32000)
    meta = metadata()
    meta["include_timing_info"] = True
    res = await stream_pcm(server.url, meta, pcm, speed=0)
    timing = res.finals[0]["timing_info"]
    assert timing["model_s"] > 0 and timing["queue_s"] >= 0 and timing["audio_processing_s"] > 0
    assert timing["batch_size"] >= 1


class Recorder:
    """The CPU engine, recording what reaches it: each request (audio, options) and the keyword arguments of
    each CTranslate2 `generate()` call."""

    def __init__(self) -> None:
        from whisper_stream.engines.ctranslate2 import CTranslate2Engine

        self.engine = CTranslate2Engine()
        self.requests: list[TranscribeRequest] = []
        self.generate_calls: list[dict[str, Any]] = []
        model, transcribe = self.engine._model, self.engine.transcribe
        recorder = self

        class Model:
            def __getattr__(self, name: str) -> Any:
                return getattr(model, name)

            def generate(self, *args: Any, **kw: Any) -> Any:
                recorder.generate_calls.append(kw)
                return model.generate(*args, **kw)

        async def recorded(requests):
            self.requests += requests
            return await transcribe(requests)

        self.engine._model = Model()
        self.engine.transcribe = recorded  # type: ignore[method-assign]

    def clear(self) -> None:
        self.requests.clear()
        self.generate_calls.clear()


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


async def test_dynamic_preprocessing_rescues_quiet_speech(recorder, speech):
    """Quiet speech (-26 dB) with use_dynamic_preprocessing: Whisper gets it at a steady level; the control
    without it gets the quiet audio as it came (the same VAD segment, so the same samples)."""
    utterance = speech["ls_61-70968-0000"]
    quiet = load_audio(utterance.path) * 0.05
    pcm = encode(np.concatenate([quiet, np.zeros(16000, np.float32)]), "pcm_s16le")
    got = {}
    async with served_engine(recorder.engine) as (url, _):
        for dynamic in (False, True):
            recorder.clear()
            meta = metadata(use_dynamic_preprocessing=dynamic, threshold=0.3)
            res = await stream_pcm(url, meta, pcm, speed=0)
            (got[dynamic],) = [r.audio for r in recorder.requests]  # the one final
    assert wer([utterance.text], [res.text]) < 0.3, res.text
    np.testing.assert_array_equal(got[True], normalize_loudness(got[False]))
    assert np.sqrt(np.mean(got[True] ** 2)) > 4 * np.sqrt(np.mean(got[False] ** 2))  # louder, not the same


async def test_sampling_params_reach_the_decoder_and_prefix(recorder, speech):
    """beam_width and no_repeat_ngram_size as CTranslate2's `generate()` gets them, against the defaults on
    the same audio (the control: WER alone would pass were they ignored)."""
    utterance = speech["ls_61-70968-0000"]
    pcm = to_pcm16(load_audio(utterance.path)) + bytes(32000)
    sampling = {"beam_width": 3, "no_repeat_ngram_size": 3, "max_new_tokens": 200}
    decoded = {}
    async with served_engine(recorder.engine) as (url, _):
        for params in ({}, sampling):
            recorder.clear()
            meta = metadata()
            meta["whisper_params"]["whisper_sampling_params"] = params
            res = await stream_pcm(url, meta, pcm, speed=0)
            assert wer([utterance.text], [res.text]) < 0.3, (params, res.text)
            first = [c for c in recorder.generate_calls if "sampling_temperature" not in c]  # temperature 0
            decoded[len(params)] = {(c["beam_size"], c["no_repeat_ngram_size"]) for c in first}
        res = await stream_pcm(url, metadata(prefix="He began"), pcm, speed=0)
    assert decoded == {0: {(1, 0)}, 3: {(3, 3)}}, decoded
    assert res.text.lower().startswith("he began"), res.text


async def test_idle_stream_is_closed_with_an_error(speech):
    from client.kit.local_server import LocalServer

    proc = LocalServer("--idle-timeout-s", "1.5").wait(timeout_s=180)
    try:
        import json

        import websockets

        async with websockets.connect(proc.url) as ws:
            await ws.send(json.dumps(metadata()))
            await ws.send(json.dumps({"type": "health_check"}))  # activity
            assert json.loads(await ws.recv())["type"] == "health_check"
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert msg["type"] == "error" and "idle" in msg["body"]["message"]
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1008
    finally:
        proc.stop()
