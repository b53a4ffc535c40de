"""The real GPU path: build large-v3 engines with build_engine and transcribe real speech through them.

Runs only where TensorRT-LLM and an NVIDIA GPU exist (inside build_engine/Dockerfile's image); skipped
elsewhere, with the reason. Slow: the first run downloads the 3 GB checkpoint (or uses WHISPER_CHECKPOINT)
and builds both engines (minutes). WHISPER_TRTLLM_ENGINE_DIR reuses engines that are already built.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


HAVE_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None
pytestmark = [
    pytest.mark.skipif(
        not (HAVE_TRTLLM and _gpu_present()),
        reason="needs TensorRT-LLM and an NVIDIA GPU (run in build_engine/Dockerfile's image on a GPU box)",
    ),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("WHISPER_TRTLLM_ENGINE_DIR"):
        return Path(os.environ["WHISPER_TRTLLM_ENGINE_DIR"])
    from build_engine.__main__ import main

    work = Path(os.environ.get("WHISPER_ENGINE_WORK_DIR") or tmp_path_factory.mktemp("engines"))
    out = work / "large_v3_test"
    args = ["build", "--work-dir", str(work), "--output", str(out), "--max-batch-size", "4", "--no-progress"]
    if os.environ.get("WHISPER_CHECKPOINT"):
        args += ["--checkpoint", os.environ["WHISPER_CHECKPOINT"]]
    assert main(["convert", *args[1:]]) == 0
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def engine(engine_dir: Path):
    from whisper_stream.engines.tensorrt_llm import TensorRTLLMEngine

    return TensorRTLLMEngine(engine_dir)


def test_manifest_describes_the_build(engine_dir: Path) -> None:
    from build_engine.manifest import missing_fields, read_manifest

    m = read_manifest(engine_dir)
    assert missing_fields(m) == []
    import tensorrt_llm

    assert m["tensorrt_llm_version"] == str(tensorrt_llm.__version__)


def test_english_transcripts_and_wer(engine) -> None:
    from build_engine import verify

    items = verify.load_items(languages=["en"], limit=8)
    summary = verify.run_sync(engine, items)
    assert summary["error_rates"]["en"] < 0.10
    assert summary["rtf"] < 0.5


async def test_restricted_language_detection_and_timestamps(engine) -> None:
    from client.kit.speech import BUNDLED_DATA, load_audio
    from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest

    sv = load_audio(BUNDLED_DATA / "speech/mfa_sv_u0016003.wav")
    es = load_audio(BUNDLED_DATA / "speech/mfa_mls_es_13697_11991_000000.wav")
    res = await engine.transcribe(
        [
            TranscribeRequest(sv, DecodeOptions(language=None, language_options=("no", "sv"))),
            TranscribeRequest(es, DecodeOptions(language=None, language_options=("es", "it"))),
            TranscribeRequest(sv, DecodeOptions(language="sv", word_timestamps=True)),
        ]
    )
    assert [r.language for r in res[:2]] == ["sv", "es"]
    assert all(r.language_prob is not None and r.language_prob > 0.5 for r in res[:2])
    assert res[2].language_prob is None and res[2].text
    seg = res[2].segments
    assert seg and 0.0 <= seg[0].start < seg[-1].end <= len(sv) / 16000 + 0.01
