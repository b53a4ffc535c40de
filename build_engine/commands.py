"""The convert and build command lines, as pure functions of one typed options object.

Kept free of TensorRT-LLM imports so the flags can be reviewed and tested anywhere. The flags follow
TensorRT-LLM's Whisper example (examples/models/core/whisper, releases <= 1.2.x), with two deliberate changes
in the defaults, both configurable:

- decoder `--max_seq_len 448` instead of the example's 114. 114 positions minus a 14-token prompt leaves ~100
  new tokens: fast speech in a full 30 s window (200+ words a minute is ~130 text tokens, plus timestamp
  tokens) gets cut off mid-sentence. 448 is Whisper's whole decoder context (n_text_ctx), so no valid
  request is refused. The paged KV cache only holds blocks for tokens actually generated, so the larger
  bound costs little memory; the scheduler still caps `max_new_tokens` per request.
- decoder `--max_input_len 224` instead of 14: 14 fits only the sot sequence; previous-text prompts
  (`<|startofprev|>` + up to 223 tokens, as whisper conditions on them) and a prefix need room.

No `--gather_generation_logits` for the decoder: an engine built with it returns full-vocabulary logits
from *every* call (`ModelRunnerCpp.generate` asks for them whenever `model_config.compute_generation_logits`
is set: ~0.66 GB per 16-window greedy decode, 2.7 GB with 4 beams, next to a KV cache given 90 % of free
memory). The engine only needs logits in its one-step first call (no-speech probability, language
detection), and the executor returns them to a request that asks, given the runtime flag
`from_dir(gather_generation_logits=True)`.

The encoder gets `--max_num_tokens` = max_batch_size x 3000: the default (8192) lets at most two 30 s windows
through one encoder pass, whatever the batch size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["fp16", "int8", "int4"]

N_TEXT_CTX = 448  # Whisper decoder positions
N_AUDIO_FRAMES = 3000  # mel frames of a 30 s window: the encoder's input length


@dataclass(frozen=True)
class BuildOptions:
    model_name: str = "large-v3"
    precision: Precision = "fp16"  # fp16, or int8 / int4 weight-only quantisation (activations stay fp16)
    max_batch_size: int = 16
    max_beam_width: int = 4
    max_seq_len: int = N_TEXT_CTX  # decoder prompt + output tokens
    decoder_max_input_len: int = 224  # decoder prompt tokens
    gather_generation_logits: bool = False  # not needed: the runtime flag lets one call ask for logits
    encoder_full_batch: bool = True  # encoder --max_num_tokens = max_batch_size * 3000 (a full batch)
    disable_xqa: bool = False  # some projects add --enable_xqa disable (XQA kernel issues on some GPUs)
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8", "int4"):
            raise ValueError(f"precision must be fp16, int8 or int4, not {self.precision!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if not 1 <= self.max_beam_width <= 8:
            raise ValueError("max_beam_width must be in 1..8")
        if not 4 <= self.decoder_max_input_len < self.max_seq_len:
            raise ValueError("decoder_max_input_len must be >= 4 (the sot sequence) and < max_seq_len")
        if self.max_seq_len > N_TEXT_CTX:
            raise ValueError(
                f"max_seq_len {self.max_seq_len} exceeds Whisper's {N_TEXT_CTX} decoder positions"
            )

    @classmethod
    def documented(cls, max_batch_size: int = 8, precision: Precision = "fp16") -> BuildOptions:
        """Exactly the flags of TensorRT-LLM's Whisper README (max_seq_len 114, max_input_len 14)."""
        return cls(
            precision=precision,
            max_batch_size=max_batch_size,
            max_beam_width=4,
            max_seq_len=114,
            decoder_max_input_len=14,
            gather_generation_logits=False,
            encoder_full_batch=False,
        )

    @property
    def tag(self) -> str:
        """A directory name that says what was built."""
        return f"whisper_{self.model_name.replace('-', '_')}_{self.precision}_b{self.max_batch_size}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def convert_argv(
    opts: BuildOptions, script: Path, model_dir: Path, checkpoint_dir: Path, python: str = "python3"
) -> list[str]:
    """convert_checkpoint.py: reads `model_dir/<model_name>.pt`, writes `checkpoint_dir/{encoder,decoder}`."""
    argv = [
        python,
        str(script),
        "--model_dir",
        str(model_dir),
        "--model_name",
        opts.model_name,
        "--dtype",
        opts.dtype,
        "--output_dir",
        str(checkpoint_dir),
    ]
    if opts.precision != "fp16":
        argv += ["--use_weight_only", "--weight_only_precision", opts.precision]
    return argv


def encoder_build_argv(opts: BuildOptions, checkpoint_dir: Path, engine_dir: Path) -> list[str]:
    argv = [
        "trtllm-build",
        "--checkpoint_dir",
        str(checkpoint_dir / "encoder"),
        "--output_dir",
        str(engine_dir / "encoder"),
        "--moe_plugin",
        "disable",
        "--max_batch_size",
        str(opts.max_batch_size),
        "--gemm_plugin",
        "disable",
        "--bert_attention_plugin",
        opts.dtype,
        "--max_input_len",
        str(N_AUDIO_FRAMES),
        "--max_seq_len",
        str(N_AUDIO_FRAMES),
    ]
    if opts.encoder_full_batch:
        argv += ["--max_num_tokens", str(opts.max_batch_size * N_AUDIO_FRAMES)]
    return argv


def decoder_build_argv(opts: BuildOptions, checkpoint_dir: Path, engine_dir: Path) -> list[str]:
    argv = [
        "trtllm-build",
        "--checkpoint_dir",
        str(checkpoint_dir / "decoder"),
        "--output_dir",
        str(engine_dir / "decoder"),
        "--moe_plugin",
        "disable",
        "--max_beam_width",
        str(opts.max_beam_width),
        "--max_batch_size",
        str(opts.max_batch_size),
        "--max_seq_len",
        str(opts.max_seq_len),
        "--max_input_len",
        str(opts.decoder_max_input_len),
        "--max_encoder_input_len",
        str(N_AUDIO_FRAMES),
        "--gemm_plugin",
        opts.dtype,
        "--bert_attention_plugin",
        opts.dtype,
        "--gpt_attention_plugin",
        opts.dtype,
    ]
    if opts.gather_generation_logits:
        argv.append("--gather_generation_logits")
    if opts.disable_xqa:
        argv += ["--enable_xqa", "disable"]
    return argv


def all_commands(
    opts: BuildOptions, script: Path, model_dir: Path, checkpoint_dir: Path, engine_dir: Path
) -> dict[str, list[str]]:
    return {
        "convert": convert_argv(opts, script, model_dir, checkpoint_dir),
        "build_encoder": encoder_build_argv(opts, checkpoint_dir, engine_dir),
        "build_decoder": decoder_build_argv(opts, checkpoint_dir, engine_dir),
    }
