"""Whisper on TensorRT-LLM engines (built by `build_engine`), in-process through the C++ executor.

`ModelRunnerCpp` (TensorRT-LLM's Python binding of its C++ executor, in-flight batching, paged KV cache) runs
the encoder engine on our log-mel features and the decoder engine on our prompt ids, a whole batch at once.
TensorRT-LLM is imported in `__init__` only, so this module imports (and the package tests) anywhere. The
runner class comes through one seam, `runner_class()`: TensorRT-LLM's own, or with
WHISPER_STREAM_TRTLLM_RUNNER=faithful the CPU stand-in `testing.trtllm_runner` (same `from_dir`,
`generate()` and output layout, backed by the default CTranslate2 model) on which CI runs this engine end
to end; a repository checkout has it, an installed server does not.

- Features: one batched `torch.stft` on the runner's device
  (`whisper_stream.dsp.mel.batch_window_features_torch`, Whisper's exact definition), 128 bins for
  large-v3, each window's own frames then 0.0 frames up to 3000 (30 s), as whisper's `transcribe()`
  builds a window; passed as (frames, n_mels) fp16 with `encoder_output_lengths = frames // 2`.
- Prompt: `whisper_stream.engines.whisper_tokens` (previous text, sot, language, task, no-timestamps,
  prefix), cut to the decoder's built `max_input_len`.
- First step, for every request, one shared one-step call with `output_generation_logits=True`: the prompt up
  to `<|startoftranscript|>` (just `[sot]` where the language is detected). Its logits give Whisper's
  no-speech probability (`<|nospeech|>` after sot) for every request, and the language where
  `language=None` (softmax over the allowed language tokens, then `choose_language` with the stream's hint,
  as the CPU engine). Generation logits are asked for in that call only: the decoder is built without
  `--gather_generation_logits` (which would make *every* call return full-vocabulary logits) and the runner
  gets the runtime flag `gather_generation_logits=True`, which lets a request ask for them.
- Decode: `output_log_probs=True` (the executor fills cumulative log-probs only then); a window's
  `avg_logprob` is the mean log-prob of its generated tokens, so the no-speech / log-prob guards, the
  temperature fallback and `possible_hallucination` see the same signals as on the CPU engine.
- Segment timestamps (engine `timestamps=True`, or requests asking for word timestamps): decode without
  `<|notimestamps|>` and cut at timestamp tokens. Word-level times need cross-attention alignment, which the
  C++ runner does not expose: `check_options` refuses them.
- Temperature fallback as in the CPU engine (compression ratio / average log-prob), re-decoding only failures.
- Multi-GPU Triton (KIND_AUTO makes one instance per GPU): `device_id` selects the GPU
  (`torch.cuda.set_device` and `from_dir(device_ids=[device_id])`).

Differences from openai-whisper's decoder, not hidden: no suppress-tokens / suppress-blank logit filters and
no timestamp rules (the C++ sampler has no hook for them here), so timestamps come from the model unguided.
The executor encodes the audio again in each `generate` call: the first-step call costs one encoder pass
per batch on top of the decode (a logits post-processor reading the decode's own first step would save it;
not done until it can be measured on a GPU).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisper_stream.dsp.mel import N_FRAMES, batch_window_features_torch
from whisper_stream.engines.fallback import compression_ratio, decode_with_fallback
from whisper_stream.engines.interface import (
    SAMPLE_RATE,
    DecodeOptions,
    EngineUnavailable,
    Segment,
    TranscribeRequest,
    TranscribeResult,
    generation_key,
)
from whisper_stream.engines.language import choose_language
from whisper_stream.engines.whisper_tokens import (
    SpecialTokens,
    WhisperTokenizer,
    check_prefix_tokens,
    forced_prefix_length,
    split_segments,
)

log = logging.getLogger(__name__)

RUNNER_ENV = "WHISPER_STREAM_TRTLLM_RUNNER"  # "tensorrt_llm" (default) | "faithful" (the CPU stand-in)


def runner_class(name: str | None = None) -> Any:
    """The runner class the engine drives: the one seam between production and the CI stand-in."""
    name = (name or os.environ.get(RUNNER_ENV) or "tensorrt_llm").strip().lower()
    if name == "tensorrt_llm":
        from tensorrt_llm.runtime import ModelRunnerCpp

        return ModelRunnerCpp
    if name == "faithful":
        try:
            from testing.trtllm_runner import ModelRunnerCpp
        except ImportError:
            raise ValueError(
                f"{RUNNER_ENV}=faithful: the CPU stand-in is in the repository's testing/ package, for tests "
                "and gpu-check only; it is not installed with the server"
            ) from None
        return ModelRunnerCpp
    raise ValueError(f"{RUNNER_ENV}={name!r}: use tensorrt_llm or faithful")


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
        device_id: int = 0,
        runner: str | None = None,
    ) -> None:
        try:
            import torch

            runner_cls = runner_class(runner)
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
        self.device_id = device_id
        manifest = self.engine_dir / "manifest.json"
        self.model_name = model_name or (
            json.loads(manifest.read_text()).get("model_name", "whisper") if manifest.is_file() else "whisper"
        )
        if bool(dec.get("gather_generation_logits", False)):
            log.warning(
                "decoder built with --gather_generation_logits: every decode returns full-vocabulary logits "
                "(GPU memory and copies); rebuild without it, the runtime flag is enough"
            )
        # The executor makes its engines on the current device; one Triton instance per GPU needs its own.
        if torch.cuda.is_available():
            torch.cuda.set_device(device_id)
        self._runner = runner_cls.from_dir(
            engine_dir=str(self.engine_dir),
            is_enc_dec=True,
            max_batch_size=self.max_batch_size,
            max_input_len=N_FRAMES,
            max_beam_width=self.max_beam_width,
            kv_cache_free_gpu_memory_fraction=kv_cache_free_gpu_memory_fraction,
            cross_kv_cache_fraction=cross_kv_cache_fraction,
            device_ids=[device_id],
            # runtime flag only: lets the first-step call ask for logits, no other call returns them
            gather_generation_logits=True,
        )
        # ModelRunnerCpp always runs on CUDA (device_ids); the CPU stand-in says where its tensors live.
        device = getattr(self._runner, "device", "cuda")
        self.device = f"cuda:{device_id}" if device == "cuda" else device

    # -- Engine protocol ------------------------------------------------------------------------------

    async def transcribe(self, requests: Sequence[TranscribeRequest]) -> list[TranscribeResult]:
        return await asyncio.to_thread(self.transcribe_sync, requests)

    async def ready(self) -> bool:
        return self._runner is not None

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.to_thread(_shutdown, runner)

    def check_options(self, options: DecodeOptions) -> None:
        """Raise ValueError for options this engine cannot honour (called at stream start)."""
        for lang in ([options.language] if options.language else []) + list(options.language_options):
            self.special.language_token(lang)
        if options.prefix.strip():
            check_prefix_tokens(len(self.tokenizer.encode(" " + options.prefix.strip())))
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
        mel = batch_window_features_torch(
            [r.audio for r in requests], self.n_mels, N_FRAMES, self.device, self.assets_dir
        )
        feats = [m.T.to(torch.float16).contiguous() for m in mel]  # (frames, n_mels) per window
        first = self._first_step(requests, feats)
        results: list[TranscribeResult | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            lang, prob, _ = first[i]
            if r.options.language_detection_only:
                results[i] = TranscribeResult(segments=(), language=lang, language_prob=prob)
            else:
                groups[_generation_key(r.options, self.timestamps or r.options.word_timestamps)].append(i)
        for key, idx in groups.items():
            segs = self._decode_with_fallback(
                [requests[i] for i in idx], [feats[i] for i in idx], [first[i] for i in idx], key[-1]
            )
            for i, s in zip(idx, segs, strict=True):
                results[i] = TranscribeResult(segments=s, language=first[i][0], language_prob=first[i][1])
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
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()
        return out

    def _first_step(
        self, requests: list[TranscribeRequest], feats: list[Any]
    ) -> list[tuple[str, float | None, float]]:
        """(language, language_prob, no_speech_prob) per request, from one shared one-step call.

        Whisper's no-speech probability is the softmax of `<|nospeech|>` at the `<|startoftranscript|>`
        position, after any previous-text prompt; detection (language=None) uses `[sot]` alone, as
        whisper's detect_language does, and reads that step's language logits.
        """
        sp = self.special
        prompts = []
        for r in requests:
            o = r.options
            if o.language is None:
                prompts.append([sp.sot])
            else:
                full = self._prompt(o, o.language, False)
                prompts.append(full[: full.index(sp.sot) + 1])
        out = self._generate(prompts, feats, 1, num_beams=1, output_generation_logits=True)
        logits = out["generation_logits"][:, 0, 0, : sp.vocab_size].float().cpu().numpy().astype(np.float64)
        first: list[tuple[str, float | None, float]] = []
        lang_lo = sp.sot + 1
        for r, z in zip(requests, logits, strict=True):
            no_speech = float(np.exp(z[sp.no_speech] - np.logaddexp.reduce(z)))
            o = r.options
            if o.language is not None:
                first.append((o.language, None, no_speech))
                continue
            lz = z[lang_lo : lang_lo + sp.num_languages]
            p = np.exp(lz - np.logaddexp.reduce(lz))
            lang, prob = choose_language(
                dict(zip(sp.languages, p.tolist(), strict=True)), o.language_options, o.language_hint
            )
            first.append((lang, prob, no_speech))
        return first

    def _prompt(self, o: DecodeOptions, language: str, timestamps: bool) -> list[int]:
        return self.tokenizer.prompt(language, o.task, timestamps, o.prompt, o.prefix, self.max_prompt_len)

    def _decode_with_fallback(
        self,
        requests: list[TranscribeRequest],
        feats: list[Any],
        first: list[tuple[str, float | None, float]],
        timestamps: bool,
    ) -> list[tuple[Segment, ...]]:
        o = requests[0].options  # the group shares every option that reaches generate()
        prompts = [
            self._prompt(r.options, lang, timestamps) for r, (lang, _, _) in zip(requests, first, strict=True)
        ]

        def decode(pending: list[int], temperature: float) -> list[list[Segment]]:
            sampling: dict[str, Any] = (
                {"num_beams": 1, "temperature": temperature, "top_k": 0, "top_p": 1.0}
                if temperature > 0
                else {"num_beams": min(o.beam_width, self.max_beam_width)}
            )
            # each request's own cap (a long prompt leaves less of the decoder's length): the runner takes one
            # per call, so requests whose caps differ decode in separate calls, never cut to a neighbour's
            caps = {i: max(1, min(o.max_new_tokens, self.max_seq_len - len(prompts[i]))) for i in pending}
            got: dict[int, list[Segment]] = {}
            for cap in sorted(set(caps.values()), reverse=True):
                part = [i for i in pending if caps[i] == cap]
                out = self._generate(
                    [prompts[i] for i in part],
                    [feats[i] for i in part],
                    cap,
                    length_penalty=o.length_penalty,
                    repetition_penalty=o.repetition_penalty,
                    no_repeat_ngram_size=o.no_repeat_ngram_size or None,
                    output_log_probs=True,  # the executor fills (cum_)log_probs only when these are asked for
                    output_cum_log_probs=True,
                    **sampling,
                )
                ids = out["output_ids"][:, 0, :].cpu().tolist()
                lens = out["sequence_lengths"][:, 0].cpu().tolist()
                lps = out["log_probs"][:, 0, :].cpu().tolist()
                for k, i in enumerate(part):
                    generated = _strip_prompt(ids[k][: lens[k]], prompts[i])
                    n = next((j for j, t in enumerate(generated) if t == self.special.eot), len(generated))
                    text = _with_prefix(generated[:n], prompts[i], self.special)
                    logprob = average_logprob(lps[k], n)
                    got[i] = self._segments(text, requests[i], logprob, first[i][2], temperature)
            return [got[i] for i in pending]

        best = decode_with_fallback(len(requests), o.temperatures, decode, _joined)
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


def _generation_key(o: DecodeOptions, timestamps: bool) -> tuple[Any, ...]:
    """`generation_key` plus the timestamps flag, last (it decides the prompts of the group)."""
    return (*generation_key(o), timestamps)


def average_logprob(log_probs: Sequence[float], n: int) -> float:
    """Mean log-prob of the first n generated tokens (the executor returns none for the end token)."""
    return float(sum(log_probs[:n]) / n) if n > 0 else 0.0


def _shutdown(runner: Any) -> None:
    """ModelRunnerCpp 1.1.0 keeps its executor in `.executor`; newer runners keep it in `.session`."""
    for name in ("executor", "session"):
        target = getattr(runner, name, None)
        if target is not None and hasattr(target, "shutdown"):
            target.shutdown()
            return
    log.warning(
        "TensorRT-LLM runner %s has neither .executor nor .session to shut down", type(runner).__name__
    )


def _strip_prompt(tokens: list[int], prompt: list[int]) -> list[int]:
    """The executor returns prompt + generated ids unless told otherwise: keep only what was generated."""
    return tokens[len(prompt) :] if tokens[: len(prompt)] == prompt else tokens


def _with_prefix(generated: list[int], prompt: list[int], special: SpecialTokens) -> list[int]:
    """The transcript starts with the client's `prefix`: the executor took it as prompt and returns only
    what follows it (after a leading timestamp, with timestamps on), as CTranslate2 returns it first."""
    prefix = prompt[len(prompt) - forced_prefix_length(prompt, special) :]
    if generated and special.is_timestamp(generated[0]):
        return generated[:1] + prefix + generated[1:]
    return prefix + generated


def _joined(segs: list[Segment]) -> Segment:
    """One segment standing for a window's decode, for the fallback checks (they look at the whole text)."""
    text = "".join(s.text for s in segs)
    return Segment(
        start=0.0,
        end=0.0,
        text=text,
        avg_logprob=segs[0].avg_logprob if segs else 0.0,
        no_speech_prob=segs[0].no_speech_prob if segs else 0.0,
        compression_ratio=compression_ratio(text.strip()),
        temperature=segs[0].temperature if segs else 0.0,
    )
