"""build_engine without a GPU: generated commands, checkpoint hash checks, resumable download, manifest, CLI
dry run, and the verify harness run for real against the CPU engine."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shlex
from pathlib import Path

import pytest

from build_engine import __main__ as cli
from build_engine.checkpoint import (
    MODEL_URLS,
    ChecksumError,
    download,
    expected_sha256,
    prepare_checkpoint,
    verify,
)
from build_engine.commands import (
    BuildOptions,
    all_commands,
    convert_argv,
    decoder_build_argv,
    encoder_build_argv,
)
from build_engine.manifest import REQUIRED, make_manifest, missing_fields, read_manifest, write_manifest

CK, OUT = Path("DIR"), Path("OUT")

# The flags as REFERENCE.md section 4 (TensorRT-LLM's Whisper README) documents them, B = 8.
DOC_ENCODER = (
    "trtllm-build --checkpoint_dir DIR/encoder --output_dir OUT/encoder --moe_plugin disable "
    "--max_batch_size 8 --gemm_plugin disable --bert_attention_plugin float16 "
    "--max_input_len 3000 --max_seq_len 3000"
)
DOC_DECODER = (
    "trtllm-build --checkpoint_dir DIR/decoder --output_dir OUT/decoder --moe_plugin disable "
    "--max_beam_width 4 --max_batch_size 8 --max_seq_len 114 --max_input_len 14 --max_encoder_input_len 3000 "
    "--gemm_plugin float16 --bert_attention_plugin float16 --gpt_attention_plugin float16"
)


def _flags(argv: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, tok in enumerate(argv):
        if tok.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[tok] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_documented_preset_reproduces_the_documented_commands() -> None:
    opts = BuildOptions.documented(max_batch_size=8)
    assert shlex.join(encoder_build_argv(opts, CK, OUT)) == DOC_ENCODER
    assert shlex.join(decoder_build_argv(opts, CK, OUT)) == DOC_DECODER
    conv = convert_argv(opts, Path("convert_checkpoint.py"), Path("assets"), CK)
    assert _flags(conv) == {
        "--model_dir": "assets",
        "--model_name": "large-v3",
        "--dtype": "float16",
        "--output_dir": "DIR",
    }


def test_defaults_keep_documented_flags_and_raise_the_output_limit() -> None:
    opts = BuildOptions(max_batch_size=8)
    enc, dec = _flags(encoder_build_argv(opts, CK, OUT)), _flags(decoder_build_argv(opts, CK, OUT))
    doc = _flags(shlex.split(DOC_DECODER))
    assert enc == {**_flags(shlex.split(DOC_ENCODER)), "--max_num_tokens": "24000"}  # 8 windows x 3000 frames
    changed = {"--max_seq_len": "448", "--max_input_len": "224"}
    assert dec == {**doc, **changed}
    assert decoder_build_argv(BuildOptions(disable_xqa=True), CK, OUT)[-2:] == ["--enable_xqa", "disable"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_only_precisions(precision: str) -> None:
    conv = convert_argv(BuildOptions(precision=precision), Path("c.py"), Path("a"), CK)  # type: ignore[arg-type]
    flags = _flags(conv)
    assert "--use_weight_only" in flags and flags["--weight_only_precision"] == precision
    assert "--use_weight_only" not in convert_argv(BuildOptions(), Path("c.py"), Path("a"), CK)


@pytest.mark.parametrize(
    "kwargs",
    [{"precision": "fp8"}, {"max_seq_len": 449}, {"decoder_max_input_len": 448}, {"max_batch_size": 0}],
)
def test_invalid_options_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BuildOptions(**kwargs)


def test_expected_hash_comes_from_the_url() -> None:
    assert expected_sha256(MODEL_URLS["large-v3"]) == (
        "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb"
    )
    with pytest.raises(ValueError):
        expected_sha256("https://example.com/model.pt")


def test_corrupted_checkpoint_is_refused(tmp_path: Path) -> None:
    good = b"whisper weights" * 1000
    path = tmp_path / "large-v3.pt"
    path.write_bytes(good)
    digest = hashlib.sha256(good).hexdigest()
    assert verify(path, digest) == digest
    corrupted = bytearray(good)
    corrupted[1234] ^= 0x01
    path.write_bytes(bytes(corrupted))
    with pytest.raises(ChecksumError):
        verify(path, digest)
    # a local file that is not OpenAI's large-v3 is refused before anything links to it
    model_dir = tmp_path / "assets"
    with pytest.raises(ChecksumError):
        prepare_checkpoint(str(path), "large-v3", model_dir, progress=False)
    assert not (model_dir / "large-v3.pt").exists()
    assert cli.main(["convert", "--checkpoint", str(path), "--work-dir", str(tmp_path), "--no-progress"]) == 2
    target, got = prepare_checkpoint(
        str(path), "large-v3", model_dir, sha256=hashlib.sha256(path.read_bytes()).hexdigest(), progress=False
    )
    assert target.is_symlink() and target.resolve() == path and got is not None


class _Resp(io.BytesIO):
    def __init__(self, body: bytes, status: int) -> None:
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}


def _server(payload: bytes, honour_range: bool = True):
    seen: list[str | None] = []

    def opener(req):
        rng = req.get_header("Range")
        seen.append(rng)
        if rng and honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            return _Resp(payload[start:], 206)
        return _Resp(payload, 200)

    return opener, seen


def test_download_resumes_with_range_and_verifies(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 5000
    digest = hashlib.sha256(payload).hexdigest()
    url = f"https://host/models/{digest}/large-v3.pt"
    dest = tmp_path / "large-v3.pt"
    (tmp_path / "large-v3.pt.part").write_bytes(payload[:300_000])
    opener, seen = _server(payload)
    assert download(url, dest, progress=False, opener=opener) == dest
    assert seen == ["bytes=300000-"]
    assert dest.read_bytes() == payload and not (tmp_path / "large-v3.pt.part").exists()

    # a server that ignores Range: start over rather than append the whole file to the part
    dest2 = tmp_path / "b" / "large-v3.pt"
    dest2.parent.mkdir()
    (dest2.parent / "large-v3.pt.part").write_bytes(payload[:1000])
    opener, seen = _server(payload, honour_range=False)
    download(url, dest2, progress=False, opener=opener)
    assert dest2.read_bytes() == payload

    # corrupted bytes on the wire: refused, nothing left to resume from
    dest3 = tmp_path / "c" / "large-v3.pt"
    bad = bytearray(payload)
    bad[-1] ^= 0xFF
    opener, _ = _server(bytes(bad))
    with pytest.raises(ChecksumError):
        download(url, dest3, progress=False, opener=opener)
    assert not dest3.exists() and not dest3.with_name("large-v3.pt.part").exists()


def test_manifest_is_complete(tmp_path: Path) -> None:
    opts = BuildOptions()
    engines = tmp_path / "engines"
    for part in ("encoder", "decoder"):
        (engines / part).mkdir(parents=True)
        (engines / part / "rank0.engine").write_bytes(b"x")
    cmds = all_commands(opts, Path("convert_checkpoint.py"), tmp_path, tmp_path / "ck", engines)
    env = {
        "tensorrt_llm_version": "1.1.0",
        "tensorrt_version": "10.13.0",
        "gpu_name": "NVIDIA H100 80GB HBM3",
    }
    m = make_manifest(opts, "e5b1" * 16, cmds, engines, 1000.0, 1600.0, env)
    assert missing_fields(m) == []
    assert set(REQUIRED) <= set(m)
    assert m["engines"] == ["decoder/rank0.engine", "encoder/rank0.engine"]
    assert m["options"]["max_seq_len"] == 448 and m["build_seconds"] == 600.0
    assert m["commands"]["build_decoder"][0] == "trtllm-build"
    write_manifest(engines, m)
    assert read_manifest(engines) == m
    with pytest.raises(ValueError, match="gpu_name"):
        write_manifest(engines, {**m, "gpu_name": None})


def test_cli_dry_run_prints_every_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["all", "--dry-run", "--work-dir", str(tmp_path), "--precision", "int8", "--max-batch-size", "4"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    assert len(lines) == 3
    assert "--weight_only_precision int8" in lines[0]
    assert "--max_batch_size 4" in lines[1] and "--max_seq_len 448" in lines[2]
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_llm") is not None,
    reason="TensorRT-LLM is installed here: tests/gpu/test_tensorrt_llm.py covers the engine",
)
def test_tensorrt_llm_engine_says_why_it_cannot_start(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch not installed")
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    with pytest.raises(RuntimeError, match="TensorRT-LLM"):
        TensorRTLLMEngine(tmp_path)


def test_verify_harness_on_the_cpu_engine() -> None:
    pytest.importorskip("jiwer", reason="jiwer not installed")
    pytest.importorskip("whisper_normalizer", reason="whisper-normalizer not installed")
    from build_engine import verify as v
    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    engine = CTranslate2Engine(max_batch_size=2)  # the default model: part of the dev install
    items = v.load_items(ids=["ls_1221-135766-0002", "jfk"])
    assert [i.scored for i in items] == [True, False]  # jfk's reference is another recogniser's output
    printed: list[str] = []
    summary = v.run_sync(engine, items, printer=printed.append)
    assert summary["files"] == 2 and summary["audio_seconds"] == pytest.approx(4.825 + 11.0, abs=0.01)
    assert 0 < summary["rtf"] < 5
    assert summary["error_rates"]["en"] < 0.3  # one scored file: "Hester Prynne" is the usual miss
    assert any(line.startswith("RTF ") for line in printed)
    assert v.wer(["Hello, World!"], ["hello world"], "en") == 0.0
    assert v.wer(["你好世界"], ["你好"], "zh") == 0.5


def test_decoder_is_built_without_generation_logits() -> None:
    """Defect: --gather_generation_logits made every decode return full-vocabulary logits; the runtime flag
    (from_dir) is what the engine's one-step call needs."""
    for opts in (BuildOptions(), BuildOptions(max_beam_width=1), BuildOptions.documented()):
        assert "--gather_generation_logits" not in decoder_build_argv(opts, CK, OUT)
    assert "--gather_generation_logits" in decoder_build_argv(
        BuildOptions(gather_generation_logits=True), CK, OUT
    )
    assert not cli.options_from_args(cli.parser().parse_args(["build"])).gather_generation_logits


def test_encoder_takes_a_whole_batch_of_30_s_windows_per_pass() -> None:
    """Defect: the default max_num_tokens (8192) let at most two 3000-frame windows through one pass."""
    for batch in (1, 16, 32):
        flags = _flags(encoder_build_argv(BuildOptions(max_batch_size=batch), CK, OUT))
        assert int(flags["--max_num_tokens"]) == batch * 3000


def test_build_without_hash_verification_still_writes_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: --no-verify-hash left checkpoint_sha256 None, so write_manifest failed after both builds."""
    example = tmp_path / "example"
    example.mkdir()
    (example / "convert_checkpoint.py").write_text("")
    work = tmp_path / "work"
    (work / "assets").mkdir(parents=True)
    checkpoint = work / "assets" / "large-v3.pt"
    checkpoint.write_bytes(b"not the real large-v3")
    ran: list[list[str]] = []

    def fake_build(argv: list[str], dry_run: bool) -> None:  # trtllm-build writes rank0.engine
        ran.append(argv)
        target = Path(argv[argv.index("--output_dir") + 1])
        target.mkdir(parents=True)
        (target / "rank0.engine").write_bytes(b"x")

    monkeypatch.setattr(cli, "_run", fake_build)
    env = {"tensorrt_llm_version": "1.1.0", "tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA H200"}
    monkeypatch.setattr(cli, "collect_environment", lambda: env)
    out = tmp_path / "engines"
    args = ["build", "--work-dir", str(work), "--output", str(out), "--example-dir", str(example)]
    assert cli.main([*args, "--no-verify-hash", "--no-progress"]) == 0
    assert [argv[0] for argv in ran] == ["trtllm-build", "trtllm-build"]
    m = read_manifest(out)
    assert m["checkpoint_sha256"] == hashlib.sha256(b"not the real large-v3").hexdigest()
    assert m["checkpoint_verified"] is False


def test_dockerfile_neither_imports_tensorrt_llm_nor_trips_over_pep_668() -> None:
    """Defect: `import tensorrt_llm` needs the CUDA driver (absent in docker build); the image's system
    Python refuses pip installs without PIP_BREAK_SYSTEM_PACKAGES."""
    text = (Path(__file__).resolve().parents[2] / "build_engine" / "Dockerfile").read_text()
    runs = text.split("\nRUN ")[1:]
    assert runs and not any("import tensorrt_llm" in r for r in runs)
    assert "importlib.metadata" in text and "PIP_BREAK_SYSTEM_PACKAGES=1" in text
    env_at = text.index("PIP_BREAK_SYSTEM_PACKAGES=1")
    assert all(text.index(f"pip install {w}") > env_at for w in ("--no-deps openai-whisper", "-e '.[model]'"))
