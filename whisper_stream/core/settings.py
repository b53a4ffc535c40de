"""One stream's settings as the core reads them, from its `StreamConfig` and the protocol's turn mode.

They change only between utterances (`Session.update_config`); the audio format and `enable_vad` never
change mid-stream, since the driver's decoder and the segments already cut depend on them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from whisper_stream.config import ConfigError, StreamConfig
from whisper_stream.core.segmenter import Rules
from whisper_stream.engines.interface import DecodeOptions


@dataclass(frozen=True)
class Settings:
    config: StreamConfig
    end_on_silence: bool  # False: client-committed turns (only a flush or the maximum duration ends one)
    utterance_end_ms: int | None  # report utterance_end after this much audio without speech

    @cached_property
    def rules(self) -> Rules:
        v, s, w = self.config.streaming_vad_config, self.config.streaming_params, self.config.whisper_params
        return Rules(
            v.threshold, v.min_silence_duration_ms, v.speech_pad_ms, s.final_transcript_max_duration_s,
            s.pause_final_after_s, self.end_on_silence, w.enable_vad,
        )  # fmt: skip

    @cached_property
    def options(self) -> DecodeOptions:
        return self.config.decode_options()

    @cached_property
    def partial_options(self) -> DecodeOptions:
        """A partial tries only the first temperature: the final decodes it again anyway."""
        options = self.options
        return replace(options, temperatures=options.temperatures[:1])

    @property
    def timing(self) -> bool:
        return self.config.include_timing_info or self.config.streaming_params.include_pipeline_latency_metric

    def updated(
        self, config: StreamConfig, end_on_silence: bool | None, utterance_end_ms: int | None
    ) -> Settings:
        """These settings with `config` (ConfigError for what cannot change mid-stream)."""
        for name in ("encoding", "sample_rate"):
            if getattr(config.streaming_params, name) != getattr(self.config.streaming_params, name):
                raise ConfigError(
                    f"streaming_params.{name} cannot change mid-stream (reconnect for another audio format)",
                    field=f"streaming_params.{name}",
                    unsupported=True,
                )
        if config.whisper_params.enable_vad != self.config.whisper_params.enable_vad:
            raise ConfigError(
                "whisper_params.enable_vad cannot change mid-stream",
                field="whisper_params.enable_vad",
                unsupported=True,
            )
        return Settings(
            config,
            self.end_on_silence if end_on_silence is None else end_on_silence,
            self.utterance_end_ms if utterance_end_ms is None else utterance_end_ms,
        )
