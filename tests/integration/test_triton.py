"""Against a real Triton server (2.51, the CPU build bundled in nvidia-pytriton) serving `model_repository/`.

One Triton for the module, on free loopback ports; the restart tests kill it (SIGKILL, a crash) and restart
it on the same ports. The websocket tests run `python -m whisper_stream serve --engine triton` against it
(ws://.../v1/websocket, GET /health 200 when ready, 503 otherwise). Speech is real (data/); the model
is the default Whisper base (CTranslate2 int8) on the CPU. Under two minutes on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from whisper_stream.engines.interface import (
    DecodeOptions,
    EngineUnavailable,
    TranscribeRequest,
    TranscribeResult,
    options_to_json,
    result_from_json,
)

if importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None:
    # The dev install (`make test`) includes the triton extra: a missing server is a broken setup, not a skip.
    raise RuntimeError("the Triton tests need the triton extra: pip install -e '.[triton]'")

import tritonclient.grpc as grpcclient  # noqa: E402

from client.kit import speech  # noqa: E402
from client.kit.speech import Utterance, load_manifest, wer  # noqa: E402
from client.protocol import finals_text  # noqa: E402
from triton_launcher import Ports, TritonServer, free_ports  # noqa: E402
from whisper_stream.core.endpointer import VadOptions  # noqa: E402
from whisper_stream.engines.triton import TritonEngine  # noqa: E402
from whisper_stream.triton.ensemble_vad import vad_options_to_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ENSEMBLE = "whisper_ensemble"
SR = 16_000
# Short LibriSpeech/TIMIT utterances: enough words for a meaningful WER, cheap on two cores.
ENGLISH = ["ls_1221-135766-0002", "ls_61-70968-0000", "lj_LJ002-0035", "ds_LDC93S1"]
MAX_WER = 0.25  # Whisper base int8 scores ~10 % on these sources; a broken pipeline scores far worse


# -- data ------------------------------------------------------------------------------------------------


@functools.cache
def manifest() -> dict[str, Utterance]:
    return {u.id: u for u in load_manifest()}


def load_audio(clip_id: str) -> np.ndarray:
    return speech.load_audio(manifest()[clip_id].path)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


# -- Triton ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonServer]:
    server = TritonServer(repository=ROOT / "model_repository", ports=Ports.free())
    server.start()
    try:
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.cleanup()


def restart(server: TritonServer) -> None:
    if not server.running:
        server.start()
    server.wait_ready(timeout=300)


def infer(server: TritonServer, audio: np.ndarray, options: DecodeOptions) -> grpcclient.InferResult:
    inputs = [
        grpcclient.InferInput("AUDIO", [1, len(audio)], "FP32"),
        grpcclient.InferInput("OPTIONS", [1, 1], "BYTES"),
        grpcclient.InferInput("VAD_OPTIONS", [1, 1], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(audio[None, :])
    inputs[1].set_data_from_numpy(np.array([[options_to_json(options).encode()]], dtype=np.object_))
    inputs[2].set_data_from_numpy(
        np.array([[vad_options_to_json(VadOptions(speech_pad_ms=100)).encode()]], dtype=np.object_)
    )
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        return client.infer(ENSEMBLE, inputs, client_timeout=120)


def batch_sizes(server: TritonServer, model: str) -> dict[int, int]:
    """Executions per batch size so far, from Triton's own statistics."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return {
        int(b["batch_size"]): int(b["compute_infer"]["count"])
        for s in stats["model_stats"]
        for b in s.get("batch_stats", [])
    }


def batched_since(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {
        size: n - before.get(size, 0) for size, n in after.items() if size > 1 and n > before.get(size, 0)
    }


# -- the ensemble, called directly -----------------------------------------------------------------------


def _result(response: grpcclient.InferResult) -> TranscribeResult:
    return result_from_json(response.as_numpy("RESULT").reshape(-1)[0].decode())


def test_ensemble_transcribes_real_speech(triton: TritonServer) -> None:
    references, hypotheses = [], []
    for clip in ENGLISH[:3]:
        window = np.concatenate([load_audio(clip), silence(0.8)])
        response = infer(triton, window, DecodeOptions(language="en"))
        result = _result(response)
        references.append(manifest()[clip].text)
        hypotheses.append(result.text)
        assert response.as_numpy("TEXT").reshape(-1)[0].decode() == result.text
        assert result.segments[-1].end <= len(window) / SR + 0.01
        assert result.language == "en" and result.language_prob is None
    assert wer(references, hypotheses) <= MAX_WER, hypotheses


def test_ensemble_times_are_relative_to_the_window_sent(triton: TritonServer) -> None:
    """Whisper sees trimmed audio; 1.5 s more leading silence moves the segment 1.5 s later, not 0 s."""
    speech = load_audio("ls_1221-135766-0002")
    plain = _result(infer(triton, speech, DecodeOptions()))
    padded = _result(infer(triton, np.concatenate([silence(1.5), speech]), DecodeOptions()))
    assert plain.text == padded.text
    assert abs(padded.segments[0].start - plain.segments[0].start - 1.5) <= 0.05, (plain, padded)


def test_ensemble_detects_the_language(triton: TritonServer) -> None:
    response = infer(triton, load_audio("ds_ru"), DecodeOptions(language=None))
    assert response.as_numpy("LANGUAGE").reshape(-1)[0].decode() == "ru"
    assert response.as_numpy("LANGUAGE_PROB").reshape(-1)[0] > 0.5


def test_silence_short_circuits_before_whisper(triton: TritonServer) -> None:
    noise = (0.001 * np.random.default_rng(0).standard_normal(2 * SR)).astype(np.float32)
    response = infer(triton, noise, DecodeOptions(language=None))
    result = _result(response)
    # An engine call with language=None would have detected a language; the short-circuit returns none.
    assert result.segments == () and result.language == "" and result.language_prob is None


# -- the Triton engine -----------------------------------------------------------------------------------


async def test_engine_requests_in_flight_together_are_batched_by_triton(triton: TritonServer) -> None:
    before = batch_sizes(triton, "whisper")
    engine = TritonEngine(url=triton.grpc_url, max_batch_size=8)
    try:
        assert await engine.ready()
        clips = ENGLISH + ENGLISH[:2]  # 6 windows: the first execution runs alone, the rest queue and batch
        requests = [TranscribeRequest(load_audio(c), DecodeOptions(language="en")) for c in clips]
        results = await engine.transcribe(requests)
    finally:
        await engine.close()
    assert wer([manifest()[c].text for c in clips], [r.text for r in results]) <= MAX_WER
    batched = batched_since(before, batch_sizes(triton, "whisper"))
    assert batched, f"no whisper execution batched more than one request: {batch_sizes(triton, 'whisper')}"


async def test_engine_reports_a_missing_triton_quickly() -> None:
    engine = TritonEngine(url=f"127.0.0.1:{free_ports(1)[0]}", timeout_s=10)
    try:
        assert not await engine.ready()
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="Triton at 127.0.0.1"):
            await engine.transcribe([TranscribeRequest(silence(1.0))])
        assert time.monotonic() - started < 5
    finally:
        await engine.close()


async def test_engine_fails_clearly_when_triton_dies_and_recovers_after_restart(triton: TritonServer) -> None:
    engine = TritonEngine(url=triton.grpc_url, timeout_s=30)
    long_window = load_audio("ls_1221-135766-0001")  # 16.7 s: still being transcribed when Triton dies
    try:
        assert await engine.ready()
        in_flight = asyncio.create_task(engine.transcribe([TranscribeRequest(long_window)] * 4))
        await asyncio.sleep(0.5)
        triton.stop(graceful=False)
        with pytest.raises(EngineUnavailable, match="unavailable"):
            await asyncio.wait_for(in_flight, 20)
        assert not await engine.ready()
        with pytest.raises(EngineUnavailable):
            await engine.transcribe([TranscribeRequest(long_window)])

        await asyncio.to_thread(restart, triton)
        deadline = time.monotonic() + 10
        while not await engine.ready():  # the same engine object reconnects
            assert time.monotonic() < deadline, "engine did not reconnect after Triton restarted"
            await asyncio.sleep(0.2)
        [result] = await engine.transcribe([TranscribeRequest(load_audio("ls_61-70968-0000"))])
        assert wer([manifest()["ls_61-70968-0000"].text], [result.text]) <= MAX_WER
    finally:
        await engine.close()
        await asyncio.to_thread(restart, triton)


# -- websocket -> server -> Triton -----------------------------------------------------------------------


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.fixture(scope="module")
def ws_server(triton: TritonServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """`python -m whisper_stream serve --engine triton` on a free port, ready (GET /health = 200)."""
    port = free_ports(1)[0]
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        sys.executable, "-m", "whisper_stream", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--engine", "triton", "--triton-url", triton.grpc_url,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while health(port) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


METADATA = {
    "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
    "streaming_params": {"encoding": "pcm_s16le", "sample_rate": 16000, "enable_partial_transcripts": False},
    "whisper_params": {"audio_language": "en"},
}


def pcm_frames(audio: np.ndarray, samples: int = 512) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % samples, "<i2")])
    return [pcm[i : i + samples].tobytes() for i in range(0, len(pcm), samples)]


async def stream(
    port: int,
    audio: np.ndarray,
    pace_s: float = 0.0,
    meta: dict[str, Any] | None = None,
    before_end: asyncio.Barrier | None = None,
) -> list[dict[str, Any]]:
    """One stream: metadata, PCM frames, end_audio; returns every message until end_audio finished.

    With `before_end`, each stream first waits until the server has processed all its audio (a health_check
    answered after the frames), then for the other streams, so their end_audio flush finals reach Triton
    together instead of spaced by each stream's VAD backlog."""
    from websockets.asyncio.client import connect

    messages: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{port}/v1/websocket", max_size=None) as ws:
        await ws.send(json.dumps(meta or METADATA))

        caught_up = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                messages.append(message)
                if message.get("type") == "health_check":
                    caught_up.set()
                if message.get("type") == "end_audio" and message.get("body", {}).get("status") == "finished":
                    return

        receiver = asyncio.create_task(receive())
        for frame in pcm_frames(audio):
            await ws.send(frame)
            if pace_s:
                await asyncio.sleep(pace_s)
        if before_end is not None:
            await ws.send(json.dumps({"type": "health_check"}))
            await asyncio.wait_for(caught_up.wait(), 60)
            await before_end.wait()
        await ws.send(json.dumps({"type": "end_audio"}))
        await asyncio.wait_for(receiver, 120)
    return messages


async def test_streams_through_the_server_and_triton(triton: TritonServer, ws_server: int) -> None:
    before = batch_sizes(triton, "whisper")
    clips = ENGLISH[:3]
    audios = [np.concatenate([silence(0.5), load_audio(c)]) for c in clips]
    # Endpointing that never fires inside a clip: each stream's speech is flushed by end_audio, and the
    # barrier sends the three end_audio together, so their finals meet in Triton's queue.
    # Speculative finals off: each stream's final would otherwise be decoded alone at its first silent frame.
    meta = {
        **METADATA,
        "streaming_vad_config": {"threshold": 0.5, "min_silence_duration_ms": 3000},
        "streaming_params": {**METADATA["streaming_params"], "speculative_finals": False},
    }
    barrier = asyncio.Barrier(len(audios))
    results = await asyncio.gather(*(stream(ws_server, a, meta=meta, before_end=barrier) for a in audios))
    hypotheses = [finals_text(messages) for messages in results]
    for messages in results:
        assert not [m for m in messages if m.get("type") == "error"], messages
    assert wer([manifest()[c].text for c in clips], hypotheses) <= MAX_WER, hypotheses
    # Several streams at once: Triton batched requests from different streams in one execution.
    assert batched_since(before, batch_sizes(triton, "whisper")), batch_sizes(triton, "whisper")


async def test_server_survives_a_triton_restart(triton: TritonServer, ws_server: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    speech = load_audio("ls_1089-134686-0001")
    messages: list[dict[str, Any]] = []
    try:
        async with connect(f"ws://127.0.0.1:{ws_server}/v1/websocket", max_size=None) as ws:
            await ws.send(json.dumps(METADATA))

            async def until_error() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for raw in ws:
                        messages.append(json.loads(raw))
                        if messages[-1].get("type") == "error":
                            return

            receiver = asyncio.create_task(until_error())
            frames = pcm_frames(np.concatenate([speech, silence(0.2)]))
            with contextlib.suppress(ConnectionClosed):  # the server may close after its error frame
                for frame in frames[: len(frames) // 2]:
                    await ws.send(frame)
                triton.stop(graceful=False)  # mid-stream
                for frame in frames[len(frames) // 2 :] + pcm_frames(silence(1.0)):
                    await ws.send(frame)
                await ws.send(json.dumps({"type": "end_audio"}))
            await asyncio.wait_for(receiver, 30)  # an error, not a hang
        errors = [m for m in messages if m.get("type") == "error"]
        assert errors, messages
        body = errors[0]["body"]
        assert "triton" in body["message"].lower() or "unavailable" in body["message"].lower(), body
        assert body["error_type"] in ("TRANSCRIPTION_ERROR", "STREAM_ERROR"), body

        deadline = time.monotonic() + 15
        while health(ws_server) != 503:  # the server is up and says it cannot serve
            assert time.monotonic() < deadline, "server did not report not-ready without Triton"
            await asyncio.sleep(0.3)
    finally:
        await asyncio.to_thread(restart, triton)

    deadline = time.monotonic() + 30
    while health(ws_server) != 200:
        assert time.monotonic() < deadline, "server did not become ready again after Triton came back"
        await asyncio.sleep(0.3)
    recovered = await stream(ws_server, np.concatenate([speech, silence(1.0)]))
    assert wer([manifest()["ls_1089-134686-0001"].text], [finals_text(recovered)]) <= MAX_WER, recovered
