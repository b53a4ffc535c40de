"""`make gpu-check`: what one GPU (H100/H200, PyTorch, no network, TensorRT or weights) verifies in minutes.

    python -m build_engine.gpu_check [--device cuda] [--quick] [--out gpu-check-results]

Writes `OUT/gpu_check.json` and prints a short table. Four parts, each timed, each with its own peak GPU
memory, and each allowed to fail alone (its error is recorded, the others still run; the exit code is 1 when a
part failed or one of its checks did not hold):

1. `mel`: the engine's batched `torch.stft` log-mel on the device vs the numpy reference, on real speech from
   data/: max abs difference.
2. `compute`: large-v3-shaped Whisper in PyTorch eager (transformers' classes built from a config, random
   fp16 weights, nothing downloaded): encoder time for batches of 1/8/16/32 windows at 30 s (3000 frames)
   and at the adaptive lengths (1000 / 2000 frames), decoder step time for batches 1..64 with a cached
   cross-attention KV of 1500 positions, and from these an estimate of real-time streams per GPU (partials
   every 0.5 s; finals only). **PyTorch eager, not TensorRT-LLM**: a floor for what the GPU does, not the
   production engine's numbers.
3. `engine`: `TensorRTLLMEngine` driven through the faithful runner (`testing.trtllm_runner`) with
   a random-weight large-v3-shaped model on the device and forced token counts: time per batch after one
   untimed warm-up call, checked that every request got text and that mixed options are decoded one group
   per `generation_key`, and GPU memory (`torch.cuda.mem_get_info()` before and after).
4. `serve`: the whole server (`--engine tensorrt_llm`, the same faithful runner and random-weight model, made
   confident so no temperature fallback runs) under `client.bench`: TTFS with server endpointing and client
   flush at 1 / 16 / 64 real-time streams, finals only. The text is noise (WER means nothing); the timings
   are the server's scheduling and batching on a GPU with large-v3's eager cost, a floor for TensorRT-LLM.

`--quick` uses tiny shapes (2 layers, d_model 64) and few batches: the CPU smoke test (`--device cpu
--quick`) that CI can run. Needs torch and `transformers` (the `gpu-check` extra), for parts 1, 3 and 4
openai-whisper's assets (mel_filters.npz, multilingual.tiktoken: the `openai-whisper` package or
WHISPER_ASSETS_DIR) and tiktoken, and for part 4 the server's and the benchmark's dependencies (the `client`
extra; the Silero model from `silero-vad` or WHISPER_STREAM_VAD_MODEL). `make gpu-check` installs them into
the project's .venv, torch==2.13.0 only where no torch imports (the Makefile says why).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from whisper_stream.engines.interface import DecodeOptions, TranscribeResult, generation_key

LARGE_V3 = dict(
    d_model=1280,
    encoder_layers=32,
    decoder_layers=32,
    encoder_attention_heads=20,
    decoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_ffn_dim=5120,
    num_mel_bins=128,
    vocab_size=51866,
    max_target_positions=448,
)
TINY = dict(LARGE_V3, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128)  # fmt: skip
TORCH_RANDOM = "build_engine.gpu_check:TorchRandomBackend"  # the stand-in backend, importable by a server
SPEECH = ["ls_1221-135766-0002", "ls_61-70968-0000", "ls_1089-134686-0001", "lj_LJ002-0020"]
TOKENS_PER_WINDOW = 40  # text + special tokens decoded for a typical streaming window (~5 s of speech)


def _whisper_config(shape: dict[str, int], frames: int = 3000) -> Any:
    from transformers import WhisperConfig

    return WhisperConfig(**shape, max_source_positions=frames // 2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _time(fn: Any, device: str, repeat: int) -> float:
    fn()  # warm-up: kernels, allocator
    _sync(device)
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


# -- 1. log-mel ------------------------------------------------------------------------------------------


def check_mel(device: str) -> dict[str, Any]:
    from client.kit.speech import load_audio, load_manifest
    from whisper_stream.dsp import mel

    m = {u.id: u for u in load_manifest()}
    audios = [load_audio(m[i].path) for i in SPEECH]
    out: dict[str, Any] = {"clips": SPEECH}
    for n_mels in (80, 128):
        got = mel.batch_window_features_torch(audios, n_mels, mel.N_FRAMES, device).float().cpu().numpy()
        want = np.stack([mel.window_features(a, n_mels, mel.N_FRAMES) for a in audios])
        out[f"max_abs_diff_{n_mels}"] = float(np.abs(got - want).max())
    audios16 = (audios * 4)[:16]
    out["batch16_ms"] = 1000 * _time(
        lambda: mel.batch_window_features_torch(audios16, 128, 3000, device), device, 5
    )
    return out


# -- 2. large-v3-shaped compute in PyTorch eager ----------------------------------------------------------


def check_compute(device: str, quick: bool) -> dict[str, Any]:
    import torch
    from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

    shape = TINY if quick else LARGE_V3
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    batches = [1, 8] if quick else [1, 8, 16, 32]
    frames_list = [1000, 3000] if quick else [1000, 2000, 3000]
    repeat = 2 if quick else 5
    encoder: dict[str, float] = {}
    with torch.no_grad():
        for frames in frames_list:
            with torch.device(device):
                enc = WhisperEncoder(_whisper_config(shape, frames)).to(dtype).eval()
            for b in batches:
                x = torch.randn(b, shape["num_mel_bins"], frames, device=device, dtype=dtype)
                encoder[f"{frames}x{b}"] = _time(lambda enc=enc, x=x: enc(x), device, repeat)
            del enc
        with torch.device(device):
            dec = WhisperDecoder(_whisper_config(shape)).to(dtype).eval()
        step: dict[str, float] = {}
        for b in [1, 4] if quick else [1, 2, 4, 8, 16, 32, 64]:
            cross = torch.randn(b, 1500, shape["d_model"], device=device, dtype=dtype)
            prompt = torch.full((b, 4), 50258, device=device, dtype=torch.long)
            first = dec(input_ids=prompt, encoder_hidden_states=cross, use_cache=True)
            nxt = torch.full((b, 1), 440, device=device, dtype=torch.long)

            def one_step(dec=dec, nxt=nxt, cross=cross, cache=first.past_key_values) -> None:
                # the same cache each time: one new position after the prompt, cross-attention KV cached
                dec(input_ids=nxt, encoder_hidden_states=cross, past_key_values=cache, use_cache=True)
                cache.self_attention_cache.crop(-1)

            step[str(b)] = _time(one_step, device, repeat)
        del dec
    return {"shape": "tiny" if quick else "large-v3", "dtype": str(dtype), "encoder_s": encoder,
            "decoder_step_s": step, "estimate": estimate_streams(encoder, step)}  # fmt: skip


def estimate_streams(encoder: dict[str, float], step: dict[str, float]) -> dict[str, Any]:
    """Real-time streams one GPU sustains, from per-window cost at the largest measured batch.

    A window costs its share of one batched encoder pass plus TOKENS_PER_WINDOW decoder steps at that batch.
    Partials every 0.5 s: each stream sends 2 windows a second (10 s adaptive contexts: the 1000-frame
    encoder); finals only: one 30 s-context window per ~5 s utterance, 0.2 a second."""

    def per_window(frames: int) -> float | None:
        sizes = sorted(int(k.split("x")[1]) for k in encoder if k.startswith(f"{frames}x"))
        b = max((s for s in sizes if str(s) in step), default=None)
        if b is None:
            return None
        return encoder[f"{frames}x{b}"] / b + TOKENS_PER_WINDOW * step[str(b)] / b

    partial, final = per_window(1000), per_window(3000)
    return {
        "label": "PyTorch eager estimate, not TensorRT-LLM",
        "tokens_per_window": TOKENS_PER_WINDOW,
        "streams_partials_every_0.5s": math.floor(1 / (2 * partial)) if partial else None,
        "streams_finals_only": math.floor(1 / (0.2 * final)) if final else None,
    }


# -- 3. TensorRTLLMEngine through the faithful runner -----------------------------------------------------


class TorchRandomBackend:
    """A random-weight Whisper (transformers) generating a forced number of tokens, behind the stand-in."""

    def __init__(self, shape: str = "large-v3", forced_tokens: int = 24, device_ids: list[int] | None = None,
                 device: str = "cuda", confident: bool = False, **_: Any) -> None:  # fmt: skip
        import torch
        from transformers import WhisperForConditionalGeneration

        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self._torch_device = f"cuda:{(device_ids or [0])[0]}" if self.device == "cuda" else "cpu"
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        with torch.device(self._torch_device):
            model = WhisperForConditionalGeneration(
                _whisper_config(LARGE_V3 if shape == "large-v3" else TINY)
            )
        self.model = model.to(self.dtype).eval()
        self.forced = forced_tokens
        # random weights give log-probs near log(1 / vocab): the engine would walk every fallback
        # temperature. A sharpened softmax makes each argmax near-certain: one decode a final, as for speech.
        self.sharpen = 1000.0 if confident else 1.0
        self.windows = 0

    def generate(self, features: np.ndarray, prompts: list[list[int]], *, special: Any, max_new_tokens: int,
                 beam_width: int, want_logits: bool, **_: Any) -> list[list[Any]]:  # fmt: skip
        import torch

        from testing.trtllm_runner import Beam

        self.windows += len(prompts)
        with torch.no_grad():
            x = torch.from_numpy(features).to(self._torch_device, self.dtype)
            enc = self.model.model.encoder(x).last_hidden_state
            width = max(len(p) for p in prompts)  # left-pad prompts with their first token: shapes only
            ids = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=self._torch_device)
            n = 1 if prompts[0][-1] == special.sot else min(self.forced, max_new_tokens)
            out = self.model.model.decoder(input_ids=ids, encoder_hidden_states=enc, use_cache=True)
            tokens: list[list[int]] = [[] for _ in prompts]
            lps: list[list[float]] = [[] for _ in prompts]
            logits_kept: list[list[np.ndarray]] = [[] for _ in prompts]
            for s in range(n):
                logits = self.sharpen * self.model.proj_out(out.last_hidden_state[:, -1]).float()
                if n > 1:  # forced length of distinct text tokens: a random model loops on one token, which
                    # the engine's repetition guard rightly re-decodes at every fallback temperature
                    logits[:, special.eot :] = -math.inf
                    for k, seen in enumerate(tokens):
                        logits[k, seen] = -math.inf
                logp = torch.log_softmax(logits, -1)
                nxt = logits.argmax(-1)
                for k in range(len(prompts)):
                    tokens[k].append(int(nxt[k]))
                    lps[k].append(float(logp[k, nxt[k]]))
                    if want_logits:
                        logits_kept[k].append(logits[k].cpu().numpy())
                if s + 1 < n:
                    out = self.model.model.decoder(
                        input_ids=nxt[:, None],
                        encoder_hidden_states=enc,
                        past_key_values=out.past_key_values,
                        use_cache=True,
                    )
        return [
            [Beam(tokens[k], lps[k], sum(lps[k]), logits_kept[k] if want_logits else None)] * beam_width
            for k in range(len(prompts))
        ]


def all_answered(results: Sequence[object], n: int) -> bool:
    """Each of the n requests got its own result with text: the backend decodes a forced number of text
    tokens, so a missing, failed (RequestError) or empty answer means the engine lost a request."""
    return len(results) == n and all(isinstance(r, TranscribeResult) and r.text for r in results)


def time_batches(engine: Any, sizes: Sequence[int], make: Callable[[int], list[Any]], device: str) -> dict:
    """Wall time of one `transcribe_sync` per batch size, after one untimed call at the largest size: the
    first call pays for kernels, allocator and caches, which would otherwise be charged to batch 1."""
    t = time.perf_counter()
    engine.transcribe_sync(make(max(sizes)))
    _sync(device)
    out: dict[str, Any] = {"warmup_seconds": round(time.perf_counter() - t, 4), "batches": {}}
    for b in sizes:
        reqs = make(b)
        engine._runner.calls.clear()
        t = time.perf_counter()
        res = engine.transcribe_sync(reqs)
        _sync(device)
        out["batches"][str(b)] = {
            "seconds": round(time.perf_counter() - t, 4),
            "generate_calls": [c["batch"] for c in engine._runner.calls],
            "all_answered": all_answered(res, b),
        }
    return out


MIXED_OPTIONS = (
    DecodeOptions(),
    DecodeOptions(max_new_tokens=4),
    DecodeOptions(language=None),  # language is per request: decoded with the defaults, detected first
    DecodeOptions(),
)


def grouping_problem(calls: Sequence[dict[str, Any]], options: Sequence[DecodeOptions]) -> str | None:
    """None when the engine made one shared first-step call for all requests, then one decode per
    `generation_key` group (a confident model needs no fallback re-decode); else what it did instead."""
    want = sorted(Counter(generation_key(o) for o in options).values())
    got = [(c["batch"], c["max_new_tokens"]) for c in calls]
    if not got or got[0] != (len(options), 1):
        return f"first call {got[:1]}, expected one step for all {len(options)} requests"
    if sorted(b for b, _ in got[1:]) != want:
        return f"decode calls {got[1:]}, expected one per options group of sizes {want}"
    return None


def check_engine(device: str, quick: bool, work: Path) -> dict[str, Any]:
    import torch

    from testing import trtllm_runner as stand_in
    from whisper_stream.engines.interface import TranscribeRequest
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    cuda = device.startswith("cuda")
    free0 = torch.cuda.mem_get_info()[0] if cuda else None
    engine_dir = stand_in.make_engine_dir(
        work / "engine", backend=TORCH_RANDOM, n_mels=128, vocab_size=51866, max_batch_size=16,
        backend_options={"shape": "tiny" if quick else "large-v3", "forced_tokens": 8 if quick else 24,
                         "device": device, "confident": True},
    )  # fmt: skip
    engine = TensorRTLLMEngine(engine_dir, runner="faithful")
    free1 = torch.cuda.mem_get_info()[0] if cuda else None
    rng = np.random.default_rng(0)

    def noise(b: int) -> list[TranscribeRequest]:
        return [TranscribeRequest((rng.normal(0, 0.1, 16000 * 5)).astype(np.float32)) for _ in range(b)]

    out = time_batches(engine, [1, 4] if quick else [1, 8, 16, 32], noise, device)
    failed = [
        f"batch {b}: not every request answered" for b, v in out["batches"].items() if not v["all_answered"]
    ]
    engine._runner.calls.clear()
    engine.transcribe_sync([TranscribeRequest(np.zeros(16000, np.float32), o) for o in MIXED_OPTIONS])
    out["grouping_calls"] = [(c["batch"], c["max_new_tokens"]) for c in engine._runner.calls]
    if problem := grouping_problem(engine._runner.calls, MIXED_OPTIONS):
        failed.append(f"grouping: {problem}")
    out["failed"] = failed
    if cuda:
        free2 = torch.cuda.mem_get_info()[0]
        out["memory_gib"] = {
            "free_before": round(free0 / 2**30, 2),
            "free_after_load": round(free1 / 2**30, 2),
            "free_after_batches": round(free2 / 2**30, 2),
        }
    return out


# -- 4. the whole server under the benchmark -----------------------------------------------------------


def check_serve(device: str, quick: bool, work: Path) -> dict[str, Any]:
    from client.bench import cli as bench
    from client.kit.local_server import LocalServer
    from testing import trtllm_runner as stand_in
    from whisper_stream.engines.tensorrt_llm import RUNNER_ENV

    batch = 8 if quick else 64
    engine_dir = stand_in.make_engine_dir(
        work / "serve-engine", backend=TORCH_RANDOM, n_mels=128, vocab_size=51866, max_batch_size=batch,
        backend_options={"shape": "tiny" if quick else "large-v3", "forced_tokens": 24, "device": device,
                         "confident": True},
    )  # fmt: skip
    levels = "1,4" if quick else "1,16,64"
    out = work / "serve"
    server = LocalServer(
        "--engine", "tensorrt_llm", "--engine-dir", str(engine_dir), "--max-streams", "256",
        "--max-streams-per-client", "256", "--max-batch-size", str(batch), env={RUNNER_ENV: "faithful"},
        log=work / "serve.log",
    )  # fmt: skip
    with server:
        rc = bench.main(["--url", server.url, "--label", "gpu-eager", "--model", "large-v3 random (eager)",
                         "--concurrency", levels, "--modes", "server,flush", "--no-partials",
                         "--repeats", "1", "--utterances-per-stream", "2", "--stagger-s", "0.1",
                         "--no-offline-wer", "--no-plots", "--no-progress", "--out", str(out)])  # fmt: skip
    report = json.loads((out / "bench.json").read_text())
    keep = ("mode", "concurrency", "utterances", "matched", "pooled_p50_s", "pooled_p95_s", "pooled_max_s",
            "rtf_max", "stream_errors", "speculative_ratio")  # fmt: skip
    return {"bench_rc": rc, "levels": levels, "rows": [{k: r[k] for k in keep} for r in report["aggregate"]]}


# -- main --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m build_engine.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes: a CPU smoke test of the script")
    p.add_argument("--out", type=Path, default=Path("gpu-check-results"))
    p.add_argument("--parts", default="mel,compute,engine,serve")
    a = p.parse_args(argv)
    import torch

    a.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": a.device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": a.quick,
    }
    started = time.perf_counter()
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "mel": lambda: check_mel(a.device),
        "compute": lambda: check_compute(a.device, a.quick),
        "engine": lambda: check_engine(a.device, a.quick, a.out),
        "serve": lambda: check_serve(a.device, a.quick, a.out),
    }
    cuda = torch.cuda if torch.cuda.is_available() else None
    for part in a.parts.split(","):
        report[part] = run_part(parts[part], cuda)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (a.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 1 if any(failures(report.get(k, {})) for k in parts) else 0


def run_part(check: Callable[[], dict[str, Any]], cuda: Any | None) -> dict[str, Any]:
    """One part, timed, its error recorded instead of raised (the other parts still run), and its own peak
    GPU memory in this process: the statistic is reset first, or each part would report the largest before
    it. (The serve part's server is another process: its memory is not in this figure.)"""
    if cuda is not None:
        cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    try:
        result = check()
    except Exception as exc:  # one part failing must not hide the others' numbers
        result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    result["part_seconds"] = round(time.perf_counter() - t, 1)
    if cuda is not None:
        result["peak_allocated_gib"] = round(cuda.max_memory_allocated() / 2**30, 2)
        cuda.empty_cache()
    return result


def failures(part: dict[str, Any]) -> list[str]:
    """What went wrong in a part: its error, and any check it ran that did not hold."""
    return ([part["error"]] if "error" in part else []) + list(part.get("failed", []))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def table(r: dict[str, Any]) -> str:
    lines = [
        f"gpu-check {r['date']} on {r['gpu'] or r['device']} (torch {r['torch']}, {r['total_seconds']} s)"
    ]
    mel = r.get("mel")
    if mel is not None:
        lines.append(f"mel   max|gpu-cpu| 80: {mel.get('max_abs_diff_80')}  "
                     f"128: {mel.get('max_abs_diff_128')}  error: {mel.get('error', '-')}")  # fmt: skip
    c = r.get("compute", {})
    for k, v in c.get("encoder_s", {}).items():
        lines.append(f"enc   frames x batch {k:>9}: {1000 * v:8.1f} ms")
    for k, v in c.get("decoder_step_s", {}).items():
        lines.append(f"dec   step batch {k:>3}: {1000 * v:8.2f} ms")
    if c.get("estimate"):
        e = c["estimate"]
        lines.append(f"est   {e['label']}: partials/0.5 s {e['streams_partials_every_0.5s']} streams, "
                     f"finals only {e['streams_finals_only']} streams")  # fmt: skip
    if "error" in c:
        lines.append(f"compute error: {c['error']}")
    eng = r.get("engine", {})
    if "warmup_seconds" in eng:
        lines.append(f"eng   warm-up (untimed batch): {eng['warmup_seconds']:.3f} s")
    for k, v in eng.get("batches", {}).items():
        lines.append(f"eng   batch {k:>3}: {v['seconds']:.3f} s, generate calls {v['generate_calls']}, "
                     f"all answered: {v['all_answered']}")  # fmt: skip
    if "grouping_calls" in eng:
        lines.append(f"eng   options grouping (batch, max_new_tokens): {eng['grouping_calls']}")
    if "memory_gib" in eng:
        lines.append(f"mem   {eng['memory_gib']}")
    for name in ("mel", "compute", "engine", "serve"):
        if "peak_allocated_gib" in r.get(name, {}):
            lines.append(f"peak  {name}: {r[name]['peak_allocated_gib']} GiB allocated (this process)")
    for problem in eng.get("failed", []):
        lines.append(f"engine FAILED: {problem}")
    if "error" in eng:
        lines.append(f"engine error: {eng['error']}")
    srv = r.get("serve", {})
    for row in srv.get("rows", []):
        lines.append(f"serve {row['mode']:>6} N={row['concurrency']:>3}: TTFS p50 {_ms(row['pooled_p50_s'])} "
                     f"p95 {_ms(row['pooled_p95_s'])} max {_ms(row['pooled_max_s'])} ms, "
                     f"matched {row['matched']}/{row['utterances']}, "
                     f"errors {row['stream_errors']}")  # fmt: skip
    if "error" in srv:
        lines.append(f"serve error: {srv['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
