"""The in-process CPU engine: faster-whisper's CTranslate2 Whisper, batched across streams.

One call encodes every window of a batch together, detects languages where asked, then decodes requests with
equal decoding options in one `generate` call. By default the encoder sees each window's own length (plus a
margin, in 10 s buckets) instead of Whisper's fixed 30 s: the encoder dominates the cost of short streaming
windows, and CTranslate2 accepts the shorter input. Temperature fallback re-decodes only the items that
failed Whisper's compression-ratio / log-prob checks. Blocking work runs in worker threads, off the event
loop; `workers` calls run at once, one per CTranslate2 replica (see `DEFAULT_WORKERS`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from faster_whisper.transcribe import merge_punctuations

from whisper_stream.dsp.mel import content_frames
from whisper_stream.engines.fallback import compression_ratio, decode_with_fallback
from whisper_stream.engines.interface import (
    MAX_WINDOW_S,
    SAMPLE_RATE,
    DecodeOptions,
    Segment,
    TranscribeRequest,
    TranscribeResult,
    Word,
    generation_key,
)
from whisper_stream.engines.language import choose_language
from whisper_stream.engines.model_source import resolve_model
from whisper_stream.engines.whisper_tokens import MAX_PREV_TOKENS, check_prefix_tokens, ctranslate2_max_length

log = logging.getLogger(__name__)

# faster-whisper's defaults for attaching punctuation to the neighbouring word.
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"

N_SAMPLES = int(MAX_WINDOW_S * SAMPLE_RATE)
N_FRAMES = 3000
# Adaptive encoder context: a window is encoded as its own length plus a margin, rounded up to a bucket, not
# as Whisper's fixed 30 s. CTranslate2 accepts the shorter input; on a 2-core CPU a 5 s utterance costs
# ~0.25 s instead of ~1.1 s, with the same transcripts on our test speech (see docs/benchmarks.md). Buckets
# of 10 s: 5 s contexts were cheaper still but misread one-second utterances ("ask not" -> "is not").
CONTEXT_MARGIN_S = 1.0
CONTEXT_BUCKET_FRAMES = 1000  # 10 s: only requests of the same bucket share an encoder call


# Engine calls that run at once, each on its own CTranslate2 replica (the weights are shared; each replica
# adds its working memory, ~100 MB for base). A decoder step is bound by memory latency, not by the cores
# (the same ~8 ms a token with 1, 2 or 4 threads), so two calls overlap almost for free: on the 2-core
# machine two finals (5.8 s and 8.5 s of speech) finished together in 451 ms vs 630 ms one after the other,
# and one alone took as long as with one replica (docs/benchmarks.md).
DEFAULT_WORKERS = 2


def default_threads() -> int:
    """One thread per core, at most CTranslate2's own default of 4: its 4 threads on a 2-core machine made a
    5 s window 8 % slower (244 vs 224 ms median of 5)."""
    return max(1, min(4, os.cpu_count() or 1))


class CTranslate2Engine:
    name = "ctranslate2"

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 0,
        max_batch_size: int = 8,
        adaptive_context: bool = True,
        device_index: int = 0,
        workers: int = 0,
    ) -> None:
        import ctranslate2
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer

        self._ct2 = ctranslate2
        self._Tokenizer = Tokenizer
        self.model_path = resolve_model(model)
        self.model_name = model or "base"
        self.max_batch_size = max_batch_size
        workers = workers or DEFAULT_WORKERS
        self.max_inflight = workers  # more would only queue inside CTranslate2
        self.adaptive_context = adaptive_context
        # faster-whisper's model object: its CTranslate2 model, features, tokenizer and word alignment.
        self._fw = WhisperModel(
            self.model_path,
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads or default_threads(),
            num_workers=workers,
        )
        self._model = self._fw.model
        self.multilingual = self._model.is_multilingual
        self._features = self._fw.feature_extractor
        self._tok = Tokenizer(self._fw.hf_tokenizer, self.multilingual, task="transcribe", language="en")
        self._suppress = list(self._suppressed_tokens())
        self._languages = set(_LANGUAGE_CODES) if self.multilingual else {"en"}

    # -- Engine protocol ------------------------------------------------------------------------------

    async def transcribe(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        return await asyncio.to_thread(self.transcribe_sync, requests)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    # -- blocking implementation ----------------------------------------------------------------------

    def check_options(self, options: DecodeOptions) -> None:
        """Raise ValueError for options this model cannot honour (called at stream start)."""
        langs = ([options.language] if options.language else []) + list(options.language_options)
        for lang in langs:
            if lang not in self._languages:
                raise ValueError(
                    f"language {lang!r} is not supported by model {self.model_name}"
                    + ("" if self.multilingual else " (an English-only model)")
                )
        if not self.multilingual and (options.language is None or options.task == "translate"):
            raise ValueError(f"model {self.model_name} is English-only: no language detection or translation")
        if options.prefix.strip():
            check_prefix_tokens(len(self._tok.encode(" " + options.prefix.strip())))

    def transcribe_sync(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        results: list[TranscribeResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, req in enumerate(requests):
            # the context bucket is part of the key: padding, and so the text, never depends on neighbours
            groups[(generation_key(req.options), self._frames(req))].append(i)
        for (_, frames), indices in groups.items():
            group = [requests[i] for i in indices]
            for i, res in zip(indices, self._transcribe_group(group, frames), strict=True):
                results[i] = res
        return results  # type: ignore[return-value]

    def _frames(self, request: TranscribeRequest) -> int:
        """Encoder input length: 3000 (30 s), or the window's own length + margin, bucketed.

        Beam search gets Whisper's full 30 s: a client asks for it for accuracy, and with the shortened
        context beam search could rank a sentence said twice first (issue #16) and fell behind
        faster-whisper's own beam decoding on the same windows."""
        if not self.adaptive_context or request.options.beam_width > 1:
            return N_FRAMES
        length = len(request.audio) / SAMPLE_RATE + CONTEXT_MARGIN_S
        buckets = -(-int(length * 100) // CONTEXT_BUCKET_FRAMES)
        return min(N_FRAMES, buckets * CONTEXT_BUCKET_FRAMES)

    def _mel(self, audio: np.ndarray, frames: int = N_FRAMES) -> np.ndarray:
        """Encoder input: the full 30 s window as whisper's and faster-whisper's `transcribe()` build it (zero
        log-mel frames after the audio, `whisper_stream.dsp.mel.window_features`); a shortened context padded
        with the log-mel of silence (zero samples), with which it was tuned: zero frames there made greedy
        decoding worse on `make bench-beam`'s windows (WER 17.0 % vs 14.5 %, "Portionionion..." on one)."""
        audio = audio[:N_SAMPLES].astype(np.float32, copy=False)
        mel = self._features(audio, padding=frames * 160 - len(audio) + 160)[:, :frames]
        if frames == N_FRAMES:
            mel[:, content_frames(len(audio)) :] = 0.0
        return mel

    def _transcribe_group(self, requests: list[TranscribeRequest], frames: int) -> list[TranscribeResult]:
        """Requests with equal decoding options and context: one encode, one generate per temperature."""
        features = np.stack([self._mel(r.audio, frames) for r in requests])
        encoded = self._model.encode(self._ct2.StorageView.from_array(features), to_cpu=False)
        languages = self._languages_for(requests, encoded)
        todo = [i for i, r in enumerate(requests) if not r.options.language_detection_only]
        decoded: dict[int, tuple[Segment, list[int]]] = {}
        prompts = {i: self._prompt(requests[i].options, languages[i][0]) for i in todo}
        # CTranslate2 needs <|startoftranscript|> at one position across a generate call: requests with
        # previous text of different token lengths are decoded in separate calls over the same encoding. So
        # are prefixes of different lengths: one call's length limit would let the shorter decode past its
        # own cap (cut afterwards, but its beam search and scores would depend on the neighbour).
        calls: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in todo:
            calls[(prompts[i].index(self._tok.sot), self._forced(prompts[i]))].append(i)
        for part in calls.values():
            view = encoded if len(part) == len(requests) else self._subset(encoded, part)
            options = requests[part[0]].options  # equal generation options across the group
            for i, res in zip(
                part, self._generate_with_fallback(view, [prompts[i] for i in part], options), strict=True
            ):
                decoded[i] = res
        out = []
        for i, req in enumerate(requests):
            lang, prob = languages[i]
            segments: tuple[Segment, ...] = ()
            if i in decoded and decoded[i][0].text.strip():
                seg, tokens = decoded[i]
                duration = round(len(req.audio) / SAMPLE_RATE, 3)
                seg = replace(seg, start=0.0, end=duration)
                if req.options.word_timestamps:
                    seg = replace(
                        seg, words=self._words(encoded, i, lang, req.options.task, tokens, duration)
                    )
                segments = (seg,)
            out.append(TranscribeResult(segments=segments, language=lang, language_prob=prob))
        return out

    def _subset(self, encoded: Any, indices: list[int]) -> Any:
        """Rows of the encoder output as a host StorageView (CTranslate2 moves inputs to the model's device).

        On a CUDA model the encoder output lives on the GPU, and CTranslate2 refuses to expose device memory
        to numpy: it is copied to the host first."""
        if encoded.device != "cpu":
            encoded = encoded.to_device(self._ct2.Device.cpu)
        return self._ct2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[indices]))

    def _words(
        self, encoded: Any, index: int, language: str, task: str, tokens: list[int], duration: float
    ) -> tuple[Word, ...]:
        """Word times from cross-attention alignment (faster-whisper's), clamped into the window."""
        tokenizer = self._Tokenizer(self._fw.hf_tokenizer, self.multilingual, task=task, language=language)
        num_frames = min(N_FRAMES, int(duration * SAMPLE_RATE) // 160)
        (alignment,) = self._fw.find_alignment(
            tokenizer, [tokens], self._subset(encoded, [index]), num_frames
        )
        merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)  # "word," not "word" + ","
        words: list[Word] = []
        last = 0.0
        for w in (w for w in alignment if w["word"]):
            start = min(max(float(w["start"]), last), duration)
            end = min(max(float(w["end"]), start), duration)
            words.append(
                Word(word=w["word"], start=round(start, 3), end=round(end, 3), prob=float(w["probability"]))
            )
            last = end
        return tuple(words)

    def _languages_for(
        self, requests: list[TranscribeRequest], encoded: Any
    ) -> list[tuple[str, float | None]]:
        fixed: list[tuple[str, float | None]] = [(r.options.language or "", None) for r in requests]
        todo = [i for i, r in enumerate(requests) if r.options.language is None]
        if not todo:
            return fixed
        detected = self._model.detect_language(encoded)
        for i in todo:
            o = requests[i].options
            probs = {token[2:-2]: p for token, p in detected[i]}
            fixed[i] = choose_language(probs, o.language_options, o.language_hint)
        return fixed

    def _prompt(self, o: DecodeOptions, language: str) -> list[int]:
        tok = self._tok
        prompt: list[int] = []
        if o.prompt.strip():
            ids = tok.encode(" " + o.prompt.strip())
            prompt = [tok.sot_prev, *ids[-MAX_PREV_TOKENS:]]
        prompt.append(tok.sot)
        if self.multilingual:
            prompt += [
                tok.tokenizer.token_to_id(f"<|{language}|>"),
                tok.translate if o.task == "translate" else tok.transcribe,
            ]
        prompt.append(tok.no_timestamps)
        if o.prefix.strip():
            prompt += tok.encode(" " + o.prefix.strip())
        return prompt

    def _generate_with_fallback(
        self, encoded: Any, prompts: list[list[int]], o: DecodeOptions
    ) -> list[tuple[Segment, list[int]]]:
        def decode(pending: list[int], temperature: float) -> list[tuple[Segment, list[int]]]:
            view = encoded if len(pending) == len(prompts) else self._subset(encoded, pending)
            kwargs: dict[str, Any] = (
                {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
                if temperature > 0
                else {"beam_size": o.beam_width}
            )
            results = self._model.generate(
                view,
                [prompts[i] for i in pending],
                length_penalty=o.length_penalty,
                repetition_penalty=o.repetition_penalty,
                no_repeat_ngram_size=o.no_repeat_ngram_size,
                max_length=max(self._max_length(prompts[i], o.max_new_tokens) for i in pending),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_tokens=self._suppress,
                **kwargs,
            )
            out = []
            for i, res in zip(pending, results, strict=True):
                cap = self._forced(prompts[i]) + o.max_new_tokens  # its own cap in a mixed call
                tokens = [t for t in res.sequences_ids[0][:cap] if t < self._tok.eot]
                n = len(res.sequences_ids[0])
                text = self._tok.decode(tokens)
                seg = Segment(
                    start=0.0,
                    end=0.0,
                    text=text,
                    avg_logprob=float(res.scores[0] * (n**o.length_penalty) / (n + 1)),
                    no_speech_prob=float(res.no_speech_prob),
                    compression_ratio=compression_ratio(text.strip()),
                    temperature=temperature,
                )
                out.append((seg, tokens))
            return out

        return decode_with_fallback(len(prompts), o.temperatures, decode, lambda result: result[0])

    def _max_length(self, prompt: list[int], max_new_tokens: int) -> int:
        """CTranslate2's `max_length` for `max_new_tokens` after the prompt's prefix (forced text tokens)."""
        return ctranslate2_max_length(len(prompt), self._forced(prompt), max_new_tokens)

    def _forced(self, prompt: list[int]) -> int:
        """Prefix tokens after <|notimestamps|>: CTranslate2 returns them as the start of the text."""
        return len(prompt) - prompt.index(self._tok.no_timestamps) - 1

    def _suppressed_tokens(self) -> set[int]:
        tok = self._tok
        ids = set(tok.non_speech_tokens)
        ids.update([tok.transcribe, tok.translate, tok.sot, tok.sot_prev, tok.sot_lm, tok.no_speech])
        return ids
