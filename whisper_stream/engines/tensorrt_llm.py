"""Whisper on TensorRT-LLM engines (built by `build_engine`), in-process through the C++ executor.

`ModelRunnerCpp` (TensorRT-LLM's Python binding of its C++ executor, in-flight batching, paged KV cache) runs
the encoder engine on our log-mel features and the decoder engine on our prompt ids, a whole batch at once.
TensorRT-LLM is imported in `__init__` only, so this module imports (and the package tests) anywhere.

- Features: `whisper_stream.mel` (numpy, Whisper's exact definition), 128 bins for large-v3, the audio
  zero-padded to the 30 s window (3000 frames) as OpenAI's models expect; passed as (frames, n_mels) fp16 with
  `encoder_output_lengths = frames // 2` (the encoder's stride-2 conv).
- Prompt: `whisper_stream.whisper_tokens` (previous text, sot, language, task, no-timestamps, prefix), cut to
  the decoder's built `max_input_len`.
- Language detection (`language=None`): a one-step decode of `[<|startoftranscript|>]` with
  `output_generation_logits=True`; the language-token logits of that step pick the best of
  `language_options` (`restricted_language`), and the same step's `<|nospeech|>` probability is Whisper's
  no-speech probability. TensorRT-LLM only returns generation logits from a decoder built with
  `--gather_generation_logits` (the build's default). Without it the engine falls back to the greedy language
  token, if it is among the options, with its log-prob from `output_log_probs`.
- Segment timestamps (engine `timestamps=True`, or requests asking for word timestamps): decode without
  `<|notimestamps|>` and cut at timestamp tokens. Word-level times need cross-attention alignment, which the
  C++ runner does not expose: words stay empty.
- Temperature fallback as in the CPU engine (compression ratio / average log-prob), re-decoding only failures.

Differences from openai-whisper's decoder, not hidden: no suppress-tokens / suppress-blank logit filters and
no timestamp rules (the C++ sampler has no hook for them here), so timestamps come from the model unguided.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisper_stream.engines.interface import (
    SAMPLE_RATE,
    DecodeOptions,
    EngineUnavailable,
    Segment,
    TranscribeRequest,
    TranscribeResult,
)
from whisper_stream.fallback import compression_ratio, needs_fallback, preferable
from whisper_stream.mel import N_FRAMES, window_features
from whisper_stream.whisper_tokens import SpecialTokens, WhisperTokenizer, restricted_language, split_segments

log = logging.getLogger(__name__)


def _read_config(path: Path) -> dict[str, Any]:
    raw = json.loads(path.read_text())
    return {**raw.get("pretrained_config", {}), **raw.get("build_config", {})}


class TensorRTLLMEngine:
    name = "tensorrt_llm"
    max_inflight = 1  # one executor; it batches inside a call, concurrent calls would only contend

    def __init__(
        self,
        engine_dir: str | Path,
        assets_dir: str | Path | None = None,
        max_batch_size: int | None = None,
        max_beam_width: int | None = None,
        timestamps: bool = False,
        kv_cache_free_gpu_memory_fraction: float = 0.9,
        cross_kv_cache_fraction: float = 0.5,
        model_name: str | None = None,
    ) -> None:
        try:
            import torch
            from tensorrt_llm.runtime import ModelRunnerCpp
        except ImportError as e:
            raise RuntimeError(
                "the tensorrt_llm engine needs TensorRT-LLM (<= 1.2.x, with the Whisper enc-dec path) "
                "and a GPU: run inside the image of build_engine/Dockerfile "
                "(nvcr.io/nvidia/tritonserver:<yy.mm>-trtllm-python-py3)"
                f" ({e})"
            ) from e
        self._torch = torch
        self.engine_dir = Path(engine_dir)
        enc = _read_config(self.engine_dir / "encoder" / "config.json")
        dec = _read_config(self.engine_dir / "decoder" / "config.json")
        self.n_mels = int(enc["n_mels"])
        self.special = SpecialTokens.from_vocab_size(int(dec["vocab_size"]))
        self.tokenizer = WhisperTokenizer(self.special, assets_dir)
        self.assets_dir = assets_dir
        self.max_batch_size = min(max_batch_size or int(dec["max_batch_size"]), int(dec["max_batch_size"]))
        self.max_beam_width = min(max_beam_width or int(dec["max_beam_width"]), int(dec["max_beam_width"]))
        self.max_seq_len = int(dec["max_seq_len"])
        self.max_prompt_len = int(dec["max_input_len"])
        self.timestamps = timestamps
        manifest = self.engine_dir / "manifest.json"
        self.model_name = model_name or (
            json.loads(manifest.read_text()).get("model_name", "whisper") if manifest.is_file() else "whisper"
        )
        built_with_logits = bool(dec.get("gather_generation_logits", False))
        runner_kwargs: dict[str, Any] = {"gather_generation_logits": True} if built_with_logits else {}
        self._runner = ModelRunnerCpp.from_dir(
            engine_dir=str(self.engine_dir),
            is_enc_dec=True,
            max_batch_size=self.max_batch_size,
            max_input_len=N_FRAMES,
            max_beam_width=self.max_beam_width,
            kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
            cross_kv_cache_fraction=cross_kv_cache_fraction,
            **runner_kwargs,
        )
        self.has_logits = built_with_logits or bool(getattr(self._runner, "gather_generation_logits", False))
        if not self.has_logits:
            log.warning("decoder built without --gather_generation_logits: language detection is greedy")

    # -- Engine protocol ------------------------------------------------------------------------------

    async def transcribe(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        return await asyncio.to_thread(self.transcribe_sync, requests)

    async def ready(self) -> bool:
        return self._runner is not None

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.to_thread(runner.executor.shutdown)

    def check_options(self, options: DecodeOptions) -> None:
        """Raise ValueError for options this engine cannot honour (called at stream start)."""
        for lang in ([options.language] if options.language else []) + list(options.language_options):
            self.special.language_token(lang)
        if options.word_timestamps:
            raise ValueError(
                "show_word_timestamps is not available with the TensorRT-LLM engine: its C++ runner "
                "exposes no cross-attention to align words (segment timestamps are)"
            )
        if options.beam_width > self.max_beam_width:
            raise ValueError(
                f"beam_width {options.beam_width} > engine's max_beam_width {self.max_beam_width}"
            )

    # -- blocking implementation ----------------------------------------------------------------------

    def transcribe_sync(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        if self._runner is None:
            raise EngineUnavailable("the TensorRT-LLM engine is closed")
        out: list[TranscribeResult] = []
        for start in range(0, len(requests), self.max_batch_size):
            out += self._transcribe_batch(list(requests[start : start + self.max_batch_size]))
        return out

    def _transcribe_batch(self, requests: list[TranscribeRequest]) -> list[TranscribeResult]:
        torch = self._torch
        feats = [
            torch.from_numpy(window_features(r.audio, self.n_mels, N_FRAMES, self.assets_dir).T.copy())
            .to("cuda", torch.float16)
            .contiguous()
            for r in requests
        ]
        langs = self._languages(requests, feats)
        results: list[TranscribeResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            if r.options.language_detection_only:
                lang, prob, _ = langs[i]
                results[i] = TranscribeResult(segments=(), language=lang, language_prob=prob)
            else:
                o = r.options
                ts = self.timestamps or o.word_timestamps
                groups[
                    (o.beam_width, o.length_penalty, o.repetition_penalty, o.no_repeat_ngram_size, ts)
                ].append(i)
        for (_, _, _, _, ts), idx in groups.items():
            segs = self._decode_with_fallback(
                [requests[i] for i in idx], [feats[i] for i in idx], [langs[i] for i in idx], ts
            )
            for i, s in zip(idx, segs, strict=True):
                results[i] = TranscribeResult(segments=s, language=langs[i][0], language_prob=langs[i][1])
        return results  # type: ignore[return-value]

    def _generate(
        self, prompts: list[list[int]], feats: list[Any], max_new_tokens: int, **kwargs: Any
    ) -> dict:
        torch = self._torch
        with torch.no_grad():
            out = self._runner.generate(
                batch_input_ids=[torch.tensor(p, dtype=torch.int32) for p in prompts],
                encoder_input_features=feats,
                encoder_output_lengths=[f.shape[0] // 2 for f in feats],
                max_new_tokens=max_new_tokens,
                end_id=self.special.eot,
                pad_id=self.special.eot,
                return_dict=True,
                output_sequence_lengths=True,
                **kwargs,
            )
        torch.cuda.synchronize()
        return out

    def _languages(
        self, requests: list[TranscribeRequest], feats: list[Any]
    ) -> list[tuple[str, float | None, float]]:
        """(language, language_prob, no_speech_prob) per request; detection only where language is None."""
        langs: list[tuple[str, float | None, float]] = [
            (r.options.language or "", None, 0.0) for r in requests
        ]
        todo = [i for i, r in enumerate(requests) if r.options.language is None]
        if not todo:
            return langs
        sot = [[self.special.sot]] * len(todo)
        f = [feats[i] for i in todo]
        if self.has_logits:
            out = self._generate(sot, f, 1, num_beams=1, output_generation_logits=True)
            logits = out["generation_logits"][:, 0, 0, :].float().cpu().numpy()  # (batch, vocab)
            for row, i in zip(logits, todo, strict=True):
                lang, prob = restricted_language(
                    row[: self.special.vocab_size], requests[i].options.language_options, self.special
                )
                z = row[: self.special.vocab_size].astype(np.float64)
                no_speech = float(np.exp(z[self.special.no_speech] - np.logaddexp.reduce(z)))
                langs[i] = (lang, prob, no_speech)
            return langs
        out = self._generate(sot, f, 1, num_beams=1, output_log_probs=True)
        ids = out["output_ids"][:, 0, :].cpu().tolist()
        lps = out["log_probs"][:, 0, :].cpu().tolist()
        for seq, lp, i in zip(ids, lps, todo, strict=True):
            options = requests[i].options.language_options
            lang = self.special.language_of(seq[1] if seq[0] == self.special.sot else seq[0])
            if lang is None or (options and lang not in options):
                log.warning("greedy language %s not in %s; using %s", lang, options, (options or ("en",))[0])
                langs[i] = ((options or ("en",))[0], 0.0, 0.0)
            else:
                langs[i] = (lang, float(math.exp(lp[0])), 0.0)
        return langs

    def _prompt(self, o: DecodeOptions, language: str, timestamps: bool) -> list[int]:
        return self.tokenizer.prompt(language, o.task, timestamps, o.prompt, o.prefix, self.max_prompt_len)

    def _decode_with_fallback(
        self,
        requests: list[TranscribeRequest],
        feats: list[Any],
        langs: list[tuple[str, float | None, float]],
        timestamps: bool,
    ) -> list[tuple[Segment, ...]]:
        o = requests[0].options
        prompts = [
            self._prompt(r.options, lang, timestamps) for r, (lang, _, _) in zip(requests, langs, strict=True)
        ]
        best: list[list[Segment] | None] = [None] * len(requests)
        pending = list(range(len(requests)))
        ladder = o.temperatures or (0.0,)
        for step, temperature in enumerate(ladder):
            max_new = min(o.max_new_tokens, self.max_seq_len - max(len(prompts[i]) for i in pending))
            sampling: dict[str, Any] = (
                {"num_beams": 1, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"num_beams": min(o.beam_width, self.max_beam_width)}
            )
            out = self._generate(
                [prompts[i] for i in pending],
                [feats[i] for i in pending],
                max(1, max_new),
                length_penalty=o.length_penalty,
                repetition_penalty=o.repetition_penalty,
                no_repeat_ngram_size=o.no_repeat_ngram_size or None,
                output_cum_log_probs=True,
                **sampling,
            )
            ids = out["output_ids"][:, 0, :].cpu().tolist()
            lens = out["sequence_lengths"][:, 0].cpu().tolist()
            cum = out["cum_log_probs"][:, 0].cpu().tolist()
            still = []
            for k, i in enumerate(pending):
                tokens = _strip_prompt(ids[k][: lens[k]], prompts[i])
                n = next((j for j, t in enumerate(tokens) if t == self.special.eot), len(tokens))
                segs = self._segments(tokens[:n], requests[i], cum[k] / (n + 1), langs[i][2], temperature)
                prev = best[i]
                joined = _joined(segs, temperature)
                if prev is None or preferable(joined, _joined(prev, temperature)):
                    best[i] = segs
                if needs_fallback(joined) and step + 1 < len(ladder):
                    still.append(i)
            if not still:
                break
            pending = still
        return [tuple(s or ()) for s in best]

    def _segments(
        self,
        tokens: list[int],
        req: TranscribeRequest,
        avg_logprob: float,
        no_speech: float,
        temperature: float,
    ) -> list[Segment]:
        duration = round(len(req.audio) / SAMPLE_RATE, 3)
        out = []
        for start, end, text_ids in split_segments(tokens, self.special, duration):
            text = self.tokenizer.decode(text_ids)
            if not text.strip():
                continue
            out.append(
                Segment(
                    start=min(start, duration),
                    end=min(end, duration),
                    text=text,
                    avg_logprob=float(avg_logprob),
                    no_speech_prob=no_speech,
                    compression_ratio=compression_ratio(text.strip()),
                    temperature=temperature,
                )
            )
        return out


def _strip_prompt(tokens: list[int], prompt: list[int]) -> list[int]:
    """The executor returns prompt + generated ids unless told otherwise: keep only what was generated."""
    return tokens[len(prompt) :] if tokens[: len(prompt)] == prompt else tokens


def _joined(segs: list[Segment], temperature: float) -> Segment:
    """One segment standing for a window's decode, for the fallback checks (they look at the whole text)."""
    text = "".join(s.text for s in segs)
    return Segment(
        start=0.0,
        end=0.0,
        text=text,
        avg_logprob=segs[0].avg_logprob if segs else 0.0,
        no_speech_prob=segs[0].no_speech_prob if segs else 0.0,
        compression_ratio=compression_ratio(text.strip()),
        temperature=temperature,
    )
