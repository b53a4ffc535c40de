"""Metadata schema: the three shapes clients send, defaults, and errors that name the field."""

from __future__ import annotations

import pytest

from whisper_stream.config import ConfigError, parse_metadata

SEED = {
    "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
    "streaming_params": {"encoding": "pcm_s16le", "sample_rate": 16000, "enable_partial_transcripts": True},
    "whisper_params": {"audio_language": "en"},
}


def test_defaults_match_baseten():
    c = parse_metadata({})
    v, s, w = c.streaming_vad_config, c.streaming_params, c.whisper_params
    assert (v.threshold, v.min_silence_duration_ms, v.speech_pad_ms) == (0.5, 300, 0)
    assert (s.encoding, s.sample_rate, s.enable_partial_transcripts) == ("pcm_s16le", 16000, False)
    assert (s.partial_transcript_interval_s, s.final_transcript_max_duration_s) == (0.5, 30.0)
    assert w.audio_language == "en" and w.output_language == "auto"
    sp = w.whisper_sampling_params
    assert (sp.beam_width, sp.length_penalty, sp.repetition_penalty, sp.max_new_tokens) == (1, 2.0, 1.01, 400)
    assert sp.sampling_temperatures == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def test_seed_shape_and_current_shape_are_equal():
    current = {**SEED, "streaming_vad_config": SEED["vad_params"]}
    del current["vad_params"]
    assert parse_metadata(SEED) == parse_metadata(current)


def test_early_flat_shape():
    c = parse_metadata(
        {
            "vad_params": {"threshold": 0.4},
            "streaming_whisper_params": {
                "encoding": "pcm_s16le",
                "sample_rate": 16000,
                "enable_partial_transcripts": True,
                "audio_language": "auto",
            },
        }
    )
    assert c.streaming_vad_config.threshold == 0.4
    assert c.streaming_params.enable_partial_transcripts is True
    assert c.decode_options().language is None


def test_a_maximum_segment_over_30_s_is_clamped_as_on_baseten():
    c = parse_metadata({"streaming_params": {"final_transcript_max_duration_s": 45}})
    assert c.streaming_params.final_transcript_max_duration_s == 30.0


def test_asr_options_map_to_sampling_params():
    c = parse_metadata({"asr_options": {"beam_size": 3, "length_penalty": 1.5}})
    sp = c.whisper_params.whisper_sampling_params
    assert (sp.beam_width, sp.length_penalty) == (3, 1.5)
    assert c.decode_options().beam_width == 3


def test_every_current_field_is_accepted_at_its_default():
    full = {
        "streaming_vad_config": {
            "threshold": 0.5,
            "min_silence_duration_ms": 300,
            "speech_pad_ms": 0,
            "sampling_rate": 16000,
        },
        "streaming_params": {
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "enable_partial_transcripts": False,
            "partial_transcript_interval_s": 0.5,
            "final_transcript_max_duration_s": 30,
            "prioritize_latency": True,
            "skip_partial_if_hallucination": True,
            "include_pipeline_latency_metric": False,
        },
        "whisper_params": {
            "prompt": "",
            "prefix": "",
            "audio_language": "en",
            "output_language": "auto",
            "language_detection_only": False,
            "language_options": [],
            "use_dynamic_preprocessing": False,
            "show_word_timestamps": False,
            "enable_vad": True,
            "show_beam_results": False,
            "enable_chunk_level_language_detection": False,
            "enable_diarization": False,
            "whisper_sampling_params": {
                "beam_width": 1,
                "length_penalty": 2.0,
                "repetition_penalty": 1.01,
                "beam_search_diversity_rate": 0.0,
                "no_repeat_ngram_size": 0,
                "sampling_temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                "max_new_tokens": 400,
            },
        },
        "stream_id": "abc",
        "include_timing_info": False,
        "streaming_diarization_config": None,
        "diarization_config": None,
    }
    assert parse_metadata(full).stream_id == "abc"


@pytest.mark.parametrize(
    "meta,field,needle",
    [
        ({"vad_params": {"threshold": 1.5}}, "vad_params.threshold", "less than or equal to 1"),
        (
            {"streaming_vad_config": {"min_silence_duration_ms": -5}},
            "streaming_vad_config.min_silence_duration_ms",
            "greater than or equal to 0",
        ),
        (
            {"streaming_params": {"final_transcript_max_duration_s": 0.5}},
            "streaming_params.final_transcript_max_duration_s",
            "greater than or equal to 1",
        ),
        ({"streaming_params": {"encoding": "opus"}}, "streaming_params.encoding", "allowed values"),
        ({"whisper_params": {"audio_langauge": "en"}}, "whisper_params.audio_langauge", "unknown field"),
        ({"vad_param": {}}, "vad_param", "unknown field"),
        (
            {"streaming_params": {"enable_partial_transcripts": "maybe"}},
            "streaming_params.enable_partial_transcripts",
            "valid boolean",
        ),
        ({"vad_params": {}, "streaming_vad_config": {}}, None, "not both"),
        ({"asr_options": {"beam": 2}}, None, "beam_size"),
    ],
)
def test_errors_name_the_field(meta, field, needle):
    with pytest.raises(ConfigError) as info:
        parse_metadata(meta)
    assert info.value.field == field
    assert needle in str(info.value)
    if field:
        assert field in str(info.value)


@pytest.mark.parametrize(
    "meta,suggestion",
    [
        ({"whisper_params": {"audio_langauge": "en"}}, "did you mean 'audio_language'?"),
        ({"vad_param": {}}, "did you mean 'vad_params'?"),  # an older shape's key
        ({"vad_params": {"treshold": 0.4}}, "did you mean 'threshold'?"),  # named as the client sent it
        ({"streaming_params": {"sample_rte": 8000}}, "did you mean 'sample_rate'?"),
        ({"whisper_params": {"whisper_sampling_params": {"beam_widht": 2}}}, "did you mean 'beam_width'?"),
    ],
)
def test_a_misspelt_field_gets_the_closest_known_one(meta, suggestion):
    with pytest.raises(ConfigError, match="unknown field") as info:
        parse_metadata(meta)
    assert suggestion in str(info.value)


def test_an_unknown_field_like_no_known_one_gets_no_guess():
    with pytest.raises(ConfigError, match="unknown field 'zzz'") as info:
        parse_metadata({"zzz": 1})
    assert "did you mean" not in str(info.value)


def test_unimplemented_settings_are_refused_not_ignored():
    with pytest.raises(ConfigError) as info:
        parse_metadata({"whisper_params": {"enable_diarization": True}})
    assert info.value.unsupported and info.value.field == "whisper_params.enable_diarization"
    parse_metadata({"whisper_params": {"enable_diarization": False}})  # the default is fine


def test_non_object_metadata():
    with pytest.raises(ConfigError, match="JSON object"):
        parse_metadata([1, 2])


def test_translate_when_output_is_english_and_audio_is_not():
    assert (
        parse_metadata({"whisper_params": {"audio_language": "de", "output_language": "en"}})
        .decode_options()
        .task
        == "translate"
    )
    assert (
        parse_metadata({"whisper_params": {"audio_language": "en", "output_language": "en"}})
        .decode_options()
        .task
        == "transcribe"
    )
