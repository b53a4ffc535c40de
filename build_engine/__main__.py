"""`python -m build_engine {download,convert,build,verify,all}`: Whisper -> TensorRT-LLM engines.

Meant for NVIDIA's `tritonserver:<yy.mm>-trtllm-python-py3` container (build_engine/Dockerfile), whose
TensorRT-LLM still has the Whisper example. `--dry-run` prints the commands without running them (works
anywhere). Layout under --work-dir (default ./engines):
  assets/<model>.pt        checkpoint (verified SHA-256)
  checkpoints/<tag>/       convert_checkpoint.py output (encoder/, decoder/)
  <tag>/                   engines (encoder/, decoder/) + manifest.json  (or --output)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from build_engine.checkpoint import ChecksumError, prepare_checkpoint
from build_engine.commands import BuildOptions, all_commands
from build_engine.manifest import collect_environment, make_manifest, read_manifest, write_manifest

# Where TensorRT-LLM's Whisper example lives: our Dockerfile clones the release tag matching the container's
# TensorRT-LLM into /opt/TensorRT-LLM; releases <= 0.16 used examples/whisper.
EXAMPLE_DIRS = (
    "/opt/TensorRT-LLM/examples/models/core/whisper",
    "/opt/TensorRT-LLM/examples/whisper",
)


def find_convert_script(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else [os.environ.get("TRTLLM_WHISPER_EXAMPLE_DIR"), *EXAMPLE_DIRS]
    for c in candidates:
        if c and (Path(c) / "convert_checkpoint.py").is_file():
            return Path(c) / "convert_checkpoint.py"
    raise FileNotFoundError(
        "TensorRT-LLM's whisper convert_checkpoint.py not found; pass --example-dir or set "
        "TRTLLM_WHISPER_EXAMPLE_DIR (git clone -b <release matching tensorrt_llm.__version__> "
        "https://github.com/NVIDIA/TensorRT-LLM, examples/models/core/whisper)"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m build_engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("step", choices=["download", "convert", "build", "verify", "all"])
    p.add_argument("--model", default="large-v3", help="Whisper model name (default large-v3)")
    p.add_argument("--checkpoint", help="local .pt path or URL (default: OpenAI's URL for --model)")
    p.add_argument("--sha256", help="expected SHA-256 (default: the one in OpenAI's URL)")
    p.add_argument("--no-verify-hash", action="store_true", help="accept a local checkpoint unverified")
    p.add_argument(
        "--precision",
        choices=["fp16", "int8", "int4"],
        default="fp16",
        help="fp16, or int8/int4 weight-only quantisation",
    )
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-beam-width", type=int, default=4)
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=448,
        help="decoder prompt+output tokens; the example's 114 cuts off fast speech in 30 s",
    )
    p.add_argument("--decoder-max-input-len", type=int, default=224, help="decoder prompt tokens")
    p.add_argument(
        "--gather-generation-logits",
        action="store_true",
        help="build the decoder with --gather_generation_logits (not needed: every call then returns logits)",
    )
    p.add_argument("--disable-xqa", action="store_true", help="add --enable_xqa disable to the decoder build")
    p.add_argument(
        "--documented",
        action="store_true",
        help="use exactly the TensorRT-LLM README's flags (max_seq_len 114, max_input_len 14)",
    )
    p.add_argument("--work-dir", type=Path, default=Path("engines"))
    p.add_argument("--output", type=Path, help="engine directory (default WORK_DIR/<tag>)")
    p.add_argument("--example-dir", help="TensorRT-LLM examples/.../whisper directory")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="speech data folder with manifest.jsonl (default: $WHISPER_STREAM_DATA, else data/)",
    )
    p.add_argument("--verify-languages", default="en", help="comma list for verify, '' for all")
    p.add_argument("--verify-limit", type=int, default=None)
    p.add_argument("--dry-run", action="store_true", help="print commands, run nothing")
    p.add_argument("--no-progress", action="store_true")
    return p


def options_from_args(a: argparse.Namespace) -> BuildOptions:
    if a.documented:
        return BuildOptions.documented(max_batch_size=a.max_batch_size, precision=a.precision)
    return BuildOptions(
        model_name=a.model,
        precision=a.precision,
        max_batch_size=a.max_batch_size,
        max_beam_width=a.max_beam_width,
        max_seq_len=a.max_seq_len,
        decoder_max_input_len=a.decoder_max_input_len,
        gather_generation_logits=a.gather_generation_logits,
        disable_xqa=a.disable_xqa,
    )


def _run(argv: list[str], dry_run: bool) -> None:
    print("+", shlex.join(argv), flush=True)
    if not dry_run:
        subprocess.run(argv, check=True)


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    opts = options_from_args(a)
    work = a.work_dir.resolve()
    model_dir = work / "assets"
    ckpt_dir = work / "checkpoints" / opts.tag
    engine_dir = (a.output or work / opts.tag).resolve()
    steps = ["download", "convert", "build", "verify"] if a.step == "all" else [a.step]
    digest: str | None = None
    started = time.time()

    if "download" in steps or "convert" in steps:
        if a.dry_run:
            print(f"# checkpoint -> {model_dir / (opts.model_name + '.pt')} (SHA-256 verified)")
        else:
            try:
                _, digest = prepare_checkpoint(
                    a.checkpoint,
                    opts.model_name,
                    model_dir,
                    a.sha256,
                    not a.no_verify_hash,
                    not a.no_progress,
                )
            except ChecksumError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"checkpoint ok: {model_dir / (opts.model_name + '.pt')} sha256={digest}")

    if "convert" in steps or "build" in steps:
        try:
            script = find_convert_script(a.example_dir)
        except FileNotFoundError as e:
            if not a.dry_run:
                print(f"error: {e}", file=sys.stderr)
                return 2
            script = Path("EXAMPLE_DIR/convert_checkpoint.py")
        cmds = all_commands(opts, script, model_dir, ckpt_dir, engine_dir)
        if "convert" in steps:
            _run(cmds["convert"], a.dry_run)
        if "build" in steps:
            _run(cmds["build_encoder"], a.dry_run)
            _run(cmds["build_decoder"], a.dry_run)
            if not a.dry_run:
                if digest is None and (model_dir / f"{opts.model_name}.pt").exists():
                    _, digest = prepare_checkpoint(
                        str((model_dir / f"{opts.model_name}.pt").resolve()),
                        opts.model_name,
                        model_dir,
                        a.sha256,
                        not a.no_verify_hash,
                        not a.no_progress,
                    )
                manifest = make_manifest(
                    opts, digest, cmds, engine_dir, started, time.time(), collect_environment()
                )
                manifest["checkpoint_verified"] = not a.no_verify_hash
                path = write_manifest(engine_dir, manifest)
                print(f"manifest: {path}")

    if "verify" in steps:
        if a.dry_run:
            print(f"# verify {engine_dir} on {a.data or 'the speech data'}")
            return 0
        return verify_engines(engine_dir, model_dir, a)
    return 0


def verify_engines(engine_dir: Path, model_dir: Path, a: argparse.Namespace) -> int:
    from build_engine import verify
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    engine = TensorRTLLMEngine(engine_dir)
    langs = [x for x in a.verify_languages.split(",") if x]
    items = verify.load_items(a.data, languages=langs, limit=a.verify_limit)
    verify.run_sync(engine, items[: engine.max_batch_size])  # warm-up: first calls allocate and tune
    summary = verify.run_sync(engine, items)
    manifest = read_manifest(engine_dir)
    manifest["verification"] = {k: v for k, v in summary.items() if k != "results"}
    write_manifest(engine_dir, manifest)
    (engine_dir / "verify.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
