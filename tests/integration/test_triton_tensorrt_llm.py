"""The Triton `whisper` model running TensorRTLLMEngine (engine=tensorrt_llm) on a real CPU Triton server.

WHISPER_STREAM_ENGINE_DIR points at a stand-in engine directory and WHISPER_STREAM_TRTLLM_RUNNER=faithful
makes the model's python stub run the engine through the CPU runner faithful to ModelRunnerCpp; everything
else is the production model file. Real speech; the transcript must equal the CPU engine's; a request with an
unknown language fails alone, not the request Triton batched with it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the TensorRT-LLM engine's code path needs torch")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the triton extra is not installed")

from client.kit.speech import load_audio, load_manifest  # noqa: E402
from triton_launcher import Ports, TritonServer  # noqa: E402
from whisper_stream.engines.interface import (  # noqa: E402
    DecodeOptions,
    TranscribeRequest,
    options_to_json,
    result_from_json,
)

ROOT = Path(__file__).resolve().parents[2]
CLIP = "ls_1221-135766-0002"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    from testing.trtllm_runner import make_engine_dir

    work = tmp_path_factory.mktemp("triton_trtllm")
    engine_dir = make_engine_dir(work / "engine", max_batch_size=4)
    repo = work / "repository"
    shutil.copytree(ROOT / "model_repository" / "whisper", repo / "whisper")
    config = repo / "whisper" / "config.pbtxt"
    text = config.read_text()
    auto = 'parameters { key: "engine" value { string_value: "auto" } }'
    assert auto in text
    config.write_text(text.replace(auto, auto.replace('"auto"', '"tensorrt_llm"')))
    saved = {k: os.environ.get(k) for k in ("WHISPER_STREAM_ENGINE_DIR", "WHISPER_STREAM_TRTLLM_RUNNER")}
    os.environ.update(WHISPER_STREAM_ENGINE_DIR=str(engine_dir), WHISPER_STREAM_TRTLLM_RUNNER="faithful")
    server = TritonServer(repository=repo, ports=Ports.free())
    try:
        server.start()
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.cleanup()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _infer(server: TritonServer, audio: np.ndarray, options: DecodeOptions):
    inputs = [
        grpcclient.InferInput("AUDIO", [1, len(audio)], "FP32"),
        grpcclient.InferInput("OFFSET", [1, 1], "FP32"),
        grpcclient.InferInput("HAS_SPEECH", [1, 1], "BOOL"),
        grpcclient.InferInput("OPTIONS", [1, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(audio[None, :].astype(np.float32))
    inputs[1].set_data_from_numpy(np.zeros((1, 1), np.float32))
    inputs[2].set_data_from_numpy(np.ones((1, 1), bool))
    inputs[3].set_data_from_numpy(np.array([[options_to_json(options).encode()]], dtype=np.object_))
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        try:
            response = client.infer("whisper", inputs, client_timeout=300)
        except Exception as exc:  # the per-request error is the answer under test
            return exc
    return result_from_json(response.as_numpy("RESULT").reshape(-1)[0].decode())


def test_whisper_model_on_the_tensorrt_llm_engine(triton: TritonServer) -> None:
    from whisper_stream.engines.ctranslate2 import CTranslate2Engine

    audio = load_audio({u.id: u for u in load_manifest()}[CLIP].path)
    asks = [DecodeOptions(), DecodeOptions(language="xx"), DecodeOptions(language=None)]
    with ThreadPoolExecutor(len(asks)) as pool:  # in flight together: Triton may batch them
        good, bad, detected = pool.map(lambda o: _infer(triton, audio, o), asks)
    (want,) = CTranslate2Engine(adaptive_context=False).transcribe_sync([TranscribeRequest(audio)])
    assert not isinstance(good, Exception) and good.text == want.text and good.language_prob is None
    assert isinstance(bad, Exception) and "'xx'" in str(bad)
    assert not isinstance(detected, Exception) and detected.language == "en" and detected.language_prob > 0.9
    seg = good.segments[0]
    assert seg.avg_logprob < 0 and 0 < seg.no_speech_prob < 0.1  # the guards' signals came through Triton
