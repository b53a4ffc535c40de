"""A CPU stand-in faithful to TensorRT-LLM 1.1.0's `ModelRunnerCpp`, for CI: `TensorRTLLMEngine` runs on it.

`TensorRTLLMEngine` gets its runner class from one seam (`tensorrt_llm.runner_class`, or the environment
variable WHISPER_STREAM_TRTLLM_RUNNER=faithful, which the Triton `whisper` model honours too); everything else
it does is the production code path. This module reproduces what that code path sees of the real runner:

- `from_dir(engine_dir, *, ...)`: the keyword-only signature of 1.1.0, reading `encoder/config.json` and
  `decoder/config.json` (`pretrained_config` + `build_config`) the way the engine directory of `trtllm-build`
  lays them out; `max_batch_size` / `max_beam_width` may not exceed the build's (asserted, as upstream), and
  for an encoder-decoder model `max_seq_len` is the decoder's built `max_seq_len`, whatever `max_output_len`
  says. `gather_generation_logits` is the *runtime* executor flag; the `gather_generation_logits` property is
  the *build* flag (`model_config.compute_generation_logits`), as upstream.
- `generate(batch_input_ids, *, encoder_input_features, encoder_output_lengths, max_new_tokens, end_id,
  pad_id, return_dict, output_sequence_lengths, output_generation_logits, output_log_probs,
  output_cum_log_probs, **sampling kwargs)` with upstream's `_check_inputs` limits and output dict:
  * `output_ids` (batch, num_sequences, max_seq_len) int32: each sequence is the decoder prompt echoed, then
    the generated ids without the end token (the executor excludes end_id from its output, TensorRT-LLM
    issue #2190), padded with end_id up to the runner's max_seq_len;
  * `sequence_lengths` (batch, num_sequences) int32: prompt + generated, before padding;
  * `log_probs` (batch, num_sequences, longest) float32, generated tokens only, only with
    output_log_probs;
  * `cum_log_probs` (batch, num_sequences) float32: zeros unless log-probs were requested too: the executor
    only fills cumulative log-probs when `OutputConfig.return_log_probs` is set, and the runner's
    `output_cum_log_probs` does not set it (the defect this project's engine once had);
  * `generation_logits` (batch, num_sequences, steps, vocab) float32 when the engine was built with
    `--gather_generation_logits` or the call asks `output_generation_logits=True`; the latter needs the
    executor flag (`from_dir(gather_generation_logits=True)`) or the build flag, else the request fails.
  Upstream lines matched (tensorrt_llm/runtime/model_runner_cpp.py, TensorRT-LLM 1.1.0 era, read at commit
  03832911): `from_dir` (max_seq_len for is_enc_dec, the max_batch_size / max_beam_width asserts,
  `ExecutorConfig(gather_generation_logits=...)`, `ParallelConfig(device_ids=...)`), `_check_inputs`,
  `generate` (`OutputConfig(return_generation_logits=self.gather_generation_logits or
  output_generation_logits, return_log_probs=output_log_probs)`), `_get_num_sequences`, `_fill_output`
  (the output_ids fill and end_id padding to `self.max_seq_len`, sequence_lengths from the unpadded lists, the
  generation_logits, log_probs and cum_log_probs tensors and their shapes).

The model behind it is real: the default CTranslate2 Whisper model (PyPI), named in the fake engine
directory that `make_engine_dir` writes (its config gives the mel bins and vocabulary, as a real build's
does). Differences from the real executor, not hidden:

- CTranslate2 generates the tokens. It applies Whisper's timestamp rules when the prompt has no
  `<|notimestamps|>` (the executor does not); suppress_tokens / suppress_blank are switched off (as in the
  executor).
- CTranslate2 masks the logits after a prompt ending in `<|startoftranscript|>` with its timestamp rules, so
  for that one step (the engine's language / no-speech step) the generation logits are rebuilt from
  CTranslate2's own language probabilities and no-speech probability: language tokens carry log p(lang), the
  `<|nospeech|>` token log(p / (1 - p)), every other token -inf. A softmax over the language tokens gives
  CTranslate2's language distribution and a softmax over the vocabulary its no-speech probability, exactly;
  the generated token is the argmax. Such prompts decode one step only here.
- Beam search: CTranslate2 returns per-step logits only for greedy / sampled decoding, so a beam's per-token
  log-probs are its total log-prob (score x length^length_penalty) spread evenly over its tokens: sums and
  means are exact, single values are not. Generation logits with beams are refused.
- Outputs live on the backend's device (`device`, "cpu" here; the real runner returns CUDA tensors).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STAND_IN_KEY = "whisper_stream_stand_in"  # the decoder config section naming the model behind the stand-in
N_AUDIO_FRAMES = 3000


def _config(path: Path) -> dict[str, Any]:
    raw = json.loads(path.read_text())
    return {
        **raw.get("pretrained_config", {}),
        **raw.get("build_config", {}),
        STAND_IN_KEY: raw.get(STAND_IN_KEY),
    }


def make_engine_dir(
    out: str | Path,
    model: str | None = None,
    *,
    max_batch_size: int = 8,
    max_beam_width: int = 4,
    max_seq_len: int = 448,
    max_input_len: int = 224,
    gather_generation_logits: bool = False,
    backend: str = "ctranslate2",
    compute_type: str = "int8",
    n_mels: int | None = None,
    vocab_size: int | None = None,
    backend_options: dict[str, Any] | None = None,
) -> Path:
    """A fake TensorRT-LLM engine directory (encoder/, decoder/ config.json, no .engine file) naming a model.

    For the CTranslate2 backend the mel bins and vocabulary are read from the model (default: the project's
    default CPU model), as a real build records its checkpoint's. The encoder's build_config carries
    `max_num_tokens` = max_batch_size x 3000 (what build_engine now builds with).
    """
    out = Path(out)
    opts = dict(backend_options or {})
    if backend == "ctranslate2":
        from whisper_stream.engines.model_source import resolve_model

        model_dir = Path(resolve_model(model))
        vocab = json.loads((model_dir / "vocabulary.json").read_text())
        vocab_size = vocab_size or len(vocab)
        if n_mels is None:
            pre = model_dir / "preprocessor_config.json"
            n_mels = int(json.loads(pre.read_text())["feature_size"]) if pre.is_file() else 80
        opts.update(model=str(model_dir), compute_type=compute_type)
    if n_mels is None or vocab_size is None:
        raise ValueError("n_mels and vocab_size are needed for this backend")
    from whisper_stream.engines.whisper_tokens import SpecialTokens

    num_languages = SpecialTokens.from_vocab_size(vocab_size).num_languages
    encoder = {
        "pretrained_config": {
            "architecture": "WhisperEncoder",
            "dtype": "float16",
            "n_mels": n_mels,
            "num_languages": num_languages,
        },
        "build_config": {
            "max_batch_size": max_batch_size,
            "max_input_len": N_AUDIO_FRAMES,
            "max_seq_len": N_AUDIO_FRAMES,
            "max_num_tokens": max_batch_size * N_AUDIO_FRAMES,
        },
    }
    decoder = {
        "pretrained_config": {"architecture": "DecoderModel", "dtype": "float16", "vocab_size": vocab_size},
        "build_config": {
            "max_batch_size": max_batch_size,
            "max_beam_width": max_beam_width,
            "max_seq_len": max_seq_len,
            "max_input_len": max_input_len,
            "max_encoder_input_len": N_AUDIO_FRAMES,
            "gather_generation_logits": gather_generation_logits,
        },
        STAND_IN_KEY: {"backend": backend, **opts},
    }
    for name, cfg in (("encoder", encoder), ("decoder", decoder)):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


# -- what one request of the executor returns -----------------------------------------------------------


@dataclass
class Beam:
    tokens: list[int]  # generated ids, end token excluded
    log_probs: list[float]  # one per generated token
    cum_log_prob: float
    logits: list[np.ndarray] | None = None  # one (vocab,) array per step


@dataclass
class Result:
    """executor.Result, the parts the runner reads (output_token_ids echo the prompt)."""

    output_token_ids: list[list[int]]
    log_probs: list[list[float]] | None
    cum_log_probs: list[float] | None
    generation_logits: Any = None  # torch (num_sequences, steps, vocab) for non-streaming
    sequence_index: int = 0
    is_final: bool = True


@dataclass
class Response:
    request_id: int
    result: Result | None = None
    error_msg: str = ""

    def has_error(self) -> bool:
        return bool(self.error_msg)


@dataclass
class Executor:
    """What the engine touches of trtllm.Executor: shutdown(), and whether this rank may enqueue."""

    shut_down: bool = False
    responses: list[Response] = field(default_factory=list)

    def can_enqueue_requests(self) -> bool:
        return not self.shut_down

    def shutdown(self) -> None:
        self.shut_down = True


# -- backends: the model that generates ------------------------------------------------------------------


class CTranslate2Backend:
    """Real Whisper weights on the CPU through CTranslate2 (the project's default model)."""

    device = "cpu"

    def __init__(self, model: str, compute_type: str = "int8", threads: int | None = None, **_: Any) -> None:
        import ctranslate2

        self._ct2 = ctranslate2
        threads = threads if threads is not None else int(os.environ.get("WHISPER_STREAM_CPU_THREADS", "0"))
        self.model = ctranslate2.models.Whisper(
            model, device="cpu", compute_type=compute_type, intra_threads=threads
        )

    def generate(
        self,
        features: np.ndarray,  # (batch, n_mels, frames) float32
        prompts: list[list[int]],
        *,
        special: Any,
        **kw: Any,
    ) -> list[list[Beam]]:
        # CTranslate2 wants <|startoftranscript|> at one position in a generate() batch: group by it.
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p.index(special.sot), []).append(i)
        out: list[list[Beam] | None] = [None] * len(prompts)
        for idx in groups.values():
            got = self._generate(features[idx], [prompts[i] for i in idx], special=special, **kw)
            for i, beams in zip(idx, got, strict=True):
                out[i] = beams
        return out  # type: ignore[return-value]

    def _generate(
        self,
        features: np.ndarray,
        prompts: list[list[int]],
        *,
        special: Any,
        vocab_size: int,
        beam_width: int,
        max_new_tokens: int,
        temperature: float | None,
        length_penalty: float,
        repetition_penalty: float,
        no_repeat_ngram_size: int,
        want_logits: bool,
    ) -> list[list[Beam]]:
        from whisper_stream.engines.whisper_tokens import ctranslate2_max_length, forced_prefix_length

        encoded = self.model.encode(self._ct2.StorageView.from_array(np.ascontiguousarray(features)))
        out: list[list[Beam] | None] = [None] * len(prompts)
        first_step = [i for i, p in enumerate(prompts) if p[-1] == special.sot]
        rest = [i for i in range(len(prompts)) if prompts[i][-1] != special.sot]
        if first_step:
            if max_new_tokens != 1 or beam_width != 1:
                raise NotImplementedError(
                    "the CTranslate2 stand-in decodes a prompt ending in <|startoftranscript|> one greedy "
                    "step only"
                )
            sub = self._subset(encoded, first_step)
            langs = self.model.detect_language(sub)
            ns = self.model.generate(
                sub,
                [prompts[i] for i in first_step],
                beam_size=1,
                max_length=max(len(prompts[i]) for i in first_step) + 1,
                return_no_speech_prob=True,
                suppress_blank=False,
                suppress_tokens=[],
            )
            for k, i in enumerate(first_step):
                z = np.full(vocab_size, -np.inf, dtype=np.float32)
                for token, p in langs[k]:
                    z[special.language_token(token[2:-2])] = math.log(max(p, 1e-30))
                p_ns = min(max(float(ns[k].no_speech_prob), 1e-12), 1 - 1e-7)
                z[special.no_speech] = math.log(p_ns / (1 - p_ns))
                top = int(np.argmax(z))
                lp = float(z[top] - np.logaddexp.reduce(z.astype(np.float64)))
                out[i] = [Beam([top], [lp], lp, [z] if want_logits else None)]
        if rest:
            if want_logits and beam_width > 1:
                raise NotImplementedError(
                    "the CTranslate2 stand-in returns generation logits for beam width 1"
                )
            sub = encoded if len(rest) == len(prompts) else self._subset(encoded, rest)
            sampled = temperature is not None and temperature > 0
            kwargs: dict[str, Any] = (
                {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": float(temperature)}
                if sampled
                else {"beam_size": beam_width, "num_hypotheses": beam_width}
            )
            # the executor takes a prefix as prompt and returns only what follows it; CTranslate2 forces it
            # and returns it first: it is cut off below, and does not count against max_new_tokens
            forced = {i: forced_prefix_length(prompts[i], special) for i in rest}
            results = self.model.generate(
                sub,
                [prompts[i] for i in rest],
                max_length=max(
                    ctranslate2_max_length(len(prompts[i]), forced[i], max_new_tokens) for i in rest
                ),
                return_scores=True,
                return_logits_vocab=beam_width == 1,
                suppress_blank=False,
                suppress_tokens=[],
                length_penalty=length_penalty,
                repetition_penalty=repetition_penalty,
                no_repeat_ngram_size=no_repeat_ngram_size,
                **kwargs,
            )
            for i, res in zip(rest, results, strict=True):
                beams = []
                f = forced[i]
                for h, seq in enumerate(res.sequences_ids):
                    tokens = list(seq)[f : f + max_new_tokens]
                    if beam_width == 1:
                        steps = [np.asarray(s, dtype=np.float32) for s in res.logits[h]][f:]
                        lps = [float(_log_softmax(steps[j])[t]) for j, t in enumerate(tokens)]
                        ended = len(tokens) == len(seq) - f and len(steps) > len(tokens)  # end token scored
                        cum = sum(lps) + (
                            float(_log_softmax(steps[len(tokens)])[special.eot]) if ended else 0.0
                        )
                        logits = steps[: len(tokens) + ended] if want_logits else None
                    else:
                        n = len(seq)
                        cum = float(res.scores[h]) * (max(n, 1) ** length_penalty)
                        lps = [cum / n] * len(tokens) if n else []
                        logits = None
                    beams.append(Beam(tokens, lps, cum, logits))
                out[i] = beams
        return out  # type: ignore[return-value]

    def _subset(self, encoded: Any, idx: list[int]) -> Any:
        return self._ct2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[idx]))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return z - np.logaddexp.reduce(z)


BACKENDS: dict[str, Any] = {"ctranslate2": CTranslate2Backend}


def backend_class(name: str) -> Any:
    """A registered backend, or "module:Class" imported (so a server process can load e.g. gpu_check's)."""
    if name in BACKENDS:
        return BACKENDS[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown stand-in backend {name!r}: one of {sorted(BACKENDS)} or 'module:Class'")
    import importlib

    return getattr(importlib.import_module(module), attr)


# -- the runner ------------------------------------------------------------------------------------------


class ModelRunnerCpp:
    """Same construction, `generate()` and output dict as tensorrt_llm.runtime.ModelRunnerCpp (1.1.0)."""

    def __init__(
        self,
        executor: Executor,
        backend: Any,
        max_batch_size: int,
        max_input_len: int,
        max_seq_len: int,
        max_beam_width: int,
        vocab_size: int,
        build_gather_generation_logits: bool,
        executor_gather_generation_logits: bool,
        device_ids: list[int] | None,
    ) -> None:
        from whisper_stream.engines.whisper_tokens import SpecialTokens

        self.executor = executor
        self.backend = backend
        self.device = backend.device
        self.max_batch_size = max_batch_size
        self.max_input_len = max_input_len
        self.max_seq_len = max_seq_len
        self.max_beam_width = max_beam_width
        self.vocab_size = vocab_size
        self._build_logits = build_gather_generation_logits
        self.executor_gather_generation_logits = executor_gather_generation_logits
        self.device_ids = device_ids
        self.special = SpecialTokens.from_vocab_size(vocab_size)
        self.calls: list[dict[str, Any]] = []  # what each generate() was asked, for tests
        self._next_id = 1

    @classmethod
    def from_dir(
        cls,
        engine_dir: str,
        *,
        lora_dir: str | None = None,
        rank: int = 0,
        max_batch_size: int | None = None,
        max_input_len: int | None = None,
        max_output_len: int | None = None,
        max_beam_width: int | None = None,
        max_attention_window_size: list[int] | None = None,
        sink_token_length: int | None = None,
        kv_cache_free_gpu_memory_fraction: float | None = None,
        cross_kv_cache_fraction: float | None = None,
        medusa_choices: list[list[int]] | None = None,
        eagle_choices: list[list[int]] | None = None,
        eagle_posterior_threshold: float | None = None,
        eagle_use_dynamic_tree: bool = False,
        eagle_dynamic_tree_max_top_k: int | None = None,
        lookahead_config: list[int] | None = None,
        debug_mode: bool = False,
        lora_ckpt_source: str = "hf",
        use_gpu_direct_storage: bool = False,
        gpu_weights_percent: float = 1,
        max_tokens_in_paged_kv_cache: int | None = None,
        kv_cache_enable_block_reuse: bool = False,
        enable_chunked_context: bool = False,
        is_enc_dec: bool = False,
        multi_block_mode: bool = True,
        enable_context_fmha_fp32_acc: bool | None = None,
        cuda_graph_mode: bool | None = None,
        logits_processor_map: dict[str, Any] | None = None,
        device_ids: list[int] | None = None,
        is_orchestrator_mode: bool = False,
        use_runtime_defaults: bool = True,
        gather_generation_logits: bool = False,
        use_variable_beam_width_search: bool = False,
        mm_embedding_offloading: bool = False,
    ) -> ModelRunnerCpp:
        if not is_enc_dec:
            raise NotImplementedError("the stand-in runs Whisper engine directories (is_enc_dec=True) only")
        if logits_processor_map or medusa_choices or eagle_choices or lookahead_config or lora_dir:
            raise NotImplementedError("the stand-in has no logits processors, speculative decoding or LoRA")
        enc = _config(Path(engine_dir) / "encoder" / "config.json")
        dec = _config(Path(engine_dir) / "decoder" / "config.json")
        stand_in = dict(dec[STAND_IN_KEY] or {})
        if not stand_in:
            raise ValueError(f"{engine_dir}: not a stand-in engine directory (no {STAND_IN_KEY} section)")
        if max_input_len is None:
            max_input_len = int(enc["max_input_len"])
        if max_batch_size is None:
            max_batch_size = int(dec["max_batch_size"])
        else:
            assert max_batch_size <= int(dec["max_batch_size"])
        max_seq_len = int(dec["max_seq_len"])  # upstream: is_enc_dec ignores max_output_len
        if max_beam_width is None:
            max_beam_width = int(dec["max_beam_width"])
        else:
            assert max_beam_width <= int(dec["max_beam_width"])
        backend = backend_class(stand_in.pop("backend"))(**stand_in, device_ids=device_ids)
        return cls(
            Executor(),
            backend,
            max_batch_size=max_batch_size,
            max_input_len=max_input_len,
            max_seq_len=max_seq_len,
            max_beam_width=max_beam_width,
            vocab_size=int(dec["vocab_size"]),
            build_gather_generation_logits=bool(dec.get("gather_generation_logits", False)),
            executor_gather_generation_logits=gather_generation_logits,
            device_ids=device_ids,
        )

    @property
    def gather_generation_logits(self) -> bool:
        """The build flag (upstream: model_config.compute_generation_logits), not the from_dir argument."""
        return self._build_logits

    @property
    def gather_context_logits(self) -> bool:
        return False

    def _check_inputs(self, batch_input_ids: list[list[int]], beam_width: int, max_new_tokens: int) -> None:
        # Upstream's checks with encoder_input_features (no encoder_input_ids): the decoder prompts are held
        # against max_input_len and max_seq_len.
        if len(batch_input_ids) > self.max_batch_size:
            raise RuntimeError(
                f"Input batch size ({len(batch_input_ids)}) exceeds the engine or specified limit "
                f"({self.max_batch_size})"
            )
        max_length = max(len(x) for x in batch_input_ids)
        if max_length > self.max_input_len:
            raise RuntimeError(
                f"Maximum input length ({max_length}) exceeds the engine or specified limit "
                f"({self.max_input_len})"
            )
        if max_length + max_new_tokens > self.max_seq_len:
            raise RuntimeError(
                f"Maximum input length ({max_length}) + maximum new tokens ({max_new_tokens}) exceeds the "
                f"engine or specified limit ({self.max_seq_len})"
            )
        if beam_width > self.max_beam_width:
            raise RuntimeError(
                f"Num beams ({beam_width}) exceeds the engine or specified limit ({self.max_beam_width})"
            )

    def generate(
        self,
        batch_input_ids: list[Any],
        *,
        position_ids: list[Any] | None = None,
        encoder_input_ids: list[Any] | None = None,
        encoder_input_features: list[Any] | None = None,
        encoder_output_lengths: list[int] | None = None,
        cross_attention_masks: list[Any] | None = None,
        mrope_params: Any = None,
        sampling_config: Any = None,
        lora_uids: list | None = None,
        lookahead_config: list[int] | None = None,
        streaming: bool = False,
        stopping_criteria: Any = None,
        logits_processor_names: list[str] | None = None,
        max_new_tokens: int = 1,
        end_id: int | None = None,
        pad_id: int | None = None,
        bad_words_list: list[list[int]] | None = None,
        stop_words_list: list[list[int]] | None = None,
        return_dict: bool = False,
        output_sequence_lengths: bool = False,
        output_generation_logits: bool = False,
        output_log_probs: bool = False,
        output_cum_log_probs: bool = False,
        prompt_table: Any = None,
        prompt_tasks: str | None = None,
        input_token_extra_ids: list[list[int]] | None = None,
        return_all_generated_tokens: bool = False,
        language_adapter_uids: list[int] | None = None,
        mm_embedding_offloading: bool = False,
        **kwargs: Any,
    ) -> Any:
        import torch

        if stopping_criteria is not None:
            raise RuntimeError("Stopping criteria is not supported in C++ session.")
        if streaming or sampling_config is not None or encoder_input_ids is not None:
            raise NotImplementedError(
                "the stand-in takes encoder features and sampling kwargs, non-streaming"
            )
        if not self.executor.can_enqueue_requests():
            return []
        prompts = [[int(t) for t in a.tolist()] for a in batch_input_ids]
        beam_width = int(kwargs.get("num_beams") or 1)
        self._check_inputs(prompts, beam_width, max_new_tokens)
        want_logits = self.gather_generation_logits or output_generation_logits
        self.calls.append(
            {
                "batch": len(prompts),
                "prompts": prompts,
                "max_new_tokens": max_new_tokens,
                "num_beams": beam_width,
                "output_generation_logits": output_generation_logits,
                "return_generation_logits": want_logits,
                "output_log_probs": output_log_probs,
                "output_cum_log_probs": output_cum_log_probs,
                "encoder_frames": [int(f.shape[0]) for f in encoder_input_features or []],
                "encoder_output_lengths": list(encoder_output_lengths or []),
                "kwargs": dict(kwargs),
            }
        )
        request_ids = list(range(self._next_id, self._next_id + len(prompts)))
        self._next_id += len(prompts)
        if want_logits and not (self._build_logits or self.executor_gather_generation_logits):
            responses = [
                Response(
                    rid,
                    error_msg="returnGenerationLogits needs gather_generation_logits in the ExecutorConfig "
                    "or an engine built with --gather_generation_logits",
                )
                for rid in request_ids
            ]
        else:
            responses = self._run(
                request_ids,
                prompts,
                encoder_input_features or [],
                max_new_tokens,
                beam_width,
                want_logits,
                output_log_probs,
                kwargs,
            )
        return self._fill_output(
            responses=responses,
            request_ids=request_ids,
            batch_input_ids=batch_input_ids,
            end_id=end_id,
            beam_width=beam_width,
            num_sequences=int(kwargs.get("num_return_sequences") or beam_width),
            return_dict=return_dict,
            output_sequence_lengths=output_sequence_lengths,
            want_logits=want_logits,
            output_log_probs=output_log_probs,
            output_cum_log_probs=output_cum_log_probs,
            torch=torch,
        )

    def _run(
        self,
        request_ids: list[int],
        prompts: list[list[int]],
        features: list[Any],
        max_new_tokens: int,
        beam_width: int,
        want_logits: bool,
        output_log_probs: bool,
        kwargs: dict[str, Any],
    ) -> list[Response]:
        import torch

        # Encoder input: (frames, n_mels) per request, as the executor takes it; grouped by frame count.
        feats = [f.detach().to("cpu", torch.float32).numpy().T for f in features]
        by_len: dict[int, list[int]] = {}
        for i, f in enumerate(feats):
            by_len.setdefault(f.shape[1], []).append(i)
        beams: list[list[Beam] | None] = [None] * len(prompts)
        temperature = kwargs.get("temperature")
        top_k = kwargs.get("top_k")
        sampled = temperature is not None and temperature > 0 and top_k != 1 and beam_width == 1
        for idx in by_len.values():
            got = self.backend.generate(
                np.stack([feats[i] for i in idx]),
                [prompts[i] for i in idx],
                special=self.special,
                vocab_size=self.vocab_size,
                beam_width=beam_width,
                max_new_tokens=max_new_tokens,
                temperature=temperature if sampled else None,
                length_penalty=float(kwargs.get("length_penalty") or 1.0),
                repetition_penalty=float(kwargs.get("repetition_penalty") or 1.0),
                no_repeat_ngram_size=int(kwargs.get("no_repeat_ngram_size") or 0),
                want_logits=want_logits,
            )
            for i, b in zip(idx, got, strict=True):
                beams[i] = b
        responses = []
        for rid, prompt, bs in zip(request_ids, prompts, beams, strict=True):
            assert bs is not None
            logits = None
            if want_logits:
                steps = max(len(b.logits or []) for b in bs)
                logits = torch.zeros((len(bs), steps, self.vocab_size), dtype=torch.float32)
                for k, b in enumerate(bs):
                    for s, z in enumerate(b.logits or []):
                        logits[k, s] = torch.from_numpy(z)
            responses.append(
                Response(
                    rid,
                    Result(
                        output_token_ids=[prompt + b.tokens for b in bs],
                        log_probs=[b.log_probs for b in bs] if output_log_probs else None,
                        cum_log_probs=[b.cum_log_prob for b in bs] if output_log_probs else None,
                        generation_logits=logits,
                    ),
                )
            )
        return responses

    def _fill_output(
        self,
        *,
        responses: list[Response],
        request_ids: list[int],
        batch_input_ids: list[Any],
        end_id: int | None,
        beam_width: int,
        num_sequences: int,
        return_dict: bool,
        output_sequence_lengths: bool,
        want_logits: bool,
        output_log_probs: bool,
        output_cum_log_probs: bool,
        torch: Any,
    ) -> Any:
        device = torch.device(self.device)
        batch_size = len(batch_input_ids)
        is_beam_search = beam_width > 1
        output_ids: list[list[list[int]]] = [[[] for _ in range(num_sequences)] for _ in request_ids]
        for response in responses:
            if response.has_error():
                raise RuntimeError(response.error_msg)
            result = response.result
            assert result is not None
            b = request_ids.index(response.request_id)
            if is_beam_search:
                for beam, tokens in enumerate(result.output_token_ids[:num_sequences]):
                    output_ids[b][beam] += tokens
            else:
                output_ids[b][result.sequence_index] += result.output_token_ids[0]
        sequence_lengths = [[len(t) for t in beams] for beams in output_ids]
        for beams in output_ids:
            for tokens in beams:
                tokens += [end_id] * (self.max_seq_len - len(tokens))
        ids = torch.tensor(output_ids, dtype=torch.int32, device=device)
        if not return_dict:
            return ids
        outputs: dict[str, Any] = {"output_ids": ids}
        if output_sequence_lengths:
            outputs["sequence_lengths"] = torch.tensor(sequence_lengths, dtype=torch.int32, device=device)
        if want_logits:
            longest = max(r.result.generation_logits.size(1) for r in responses)
            gen = torch.zeros((batch_size, num_sequences, longest, self.vocab_size), dtype=torch.float32)
            for r in responses:
                logits = r.result.generation_logits
                b = request_ids.index(r.request_id)
                if is_beam_search:
                    gen[b, :, : logits.size(1)] = logits[:num_sequences]
                else:
                    gen[b, r.result.sequence_index, : logits.size(1)] = logits[0]
            outputs["generation_logits"] = gen.to(device)
        if output_log_probs:
            longest = max(len(lp) for r in responses for lp in r.result.log_probs)
            log_probs = torch.zeros((batch_size, num_sequences, longest), dtype=torch.float32)
            for r in responses:
                b = request_ids.index(r.request_id)
                for k, lp in enumerate(r.result.log_probs[:num_sequences]):
                    log_probs[b, k, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
            outputs["log_probs"] = log_probs.to(device)
        if output_cum_log_probs:
            cum = torch.zeros((batch_size, num_sequences), dtype=torch.float32)
            for r in responses:
                if r.result.cum_log_probs is None:  # only filled when log-probs were requested
                    continue
                b = request_ids.index(r.request_id)
                values = torch.tensor(r.result.cum_log_probs[:num_sequences], dtype=torch.float32)
                if is_beam_search:
                    cum[b, :] = values
                else:
                    cum[b, r.result.sequence_index] = values[0]
            outputs["cum_log_probs"] = cum.to(device)
        return outputs
