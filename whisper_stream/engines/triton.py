"""The Triton engine: every window goes to the `whisper_ensemble` (VAD preprocessing -> Whisper) over gRPC.

Each request of a batch is its own inference call, all in flight at once (asyncio.gather): Triton's dynamic
batcher then batches them with the requests of every other call and every other client, which a single
multi-item request could not do across callers. A down or restarting Triton raises EngineUnavailable (the
scheduler turns it into an error message for the streams; the server stays up and reports not-ready), and
the gRPC channel is rebuilt after a connection failure, so serving resumes as soon as Triton is back
instead of waiting out gRPC's reconnect backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from whisper_stream.core.endpointer import VadOptions
from whisper_stream.engines.interface import (
    DecodeOptions,
    EngineUnavailable,
    RequestError,
    TranscribeRequest,
    TranscribeResult,
    options_to_json,
    result_from_json,
)
from whisper_stream.engines.whisper_tokens import LANGUAGE_CODES
from whisper_stream.triton.ensemble_vad import vad_options_to_json

log = logging.getLogger(__name__)

DEFAULT_URL = "127.0.0.1:8011"
DEFAULT_MODEL = "whisper_ensemble"
STARTUP_PROBE_S = 2.0  # the one look at Triton at start-up, only to log whether it answers
# The session already endpointed these windows with the stream's own VAD state and settings: a second,
# stateless Silero pass in the ensemble dropped whole short finals and trimmed up to 2.5 s of disfluent speech
# (measured on the benchmark streams), so by default it keeps the window as sent (threshold 0 = no trimming).
# Callers without a session of their own pass real VAD options to get the ensemble's trimming and silence
# short-circuit.
DEFAULT_VAD = VadOptions(threshold=0.0, min_silence_duration_ms=300, speech_pad_ms=200)
# gRPC status codes that mean "Triton cannot serve now" rather than "this request is wrong".
_UNAVAILABLE = {
    "StatusCode.UNAVAILABLE",  # no connection: Triton down or restarting
    "StatusCode.DEADLINE_EXCEEDED",  # no answer within timeout_s: Triton hung or far behind
    "StatusCode.CANCELLED",  # the channel went away under the call
    "StatusCode.NOT_FOUND",  # model not loaded (yet)
}


class TritonError(RuntimeError):
    """Triton answered, but refused or failed this request (bad input, model error)."""


class ConnectionLost(EngineUnavailable):
    """No connection to Triton: the channel is rebuilt before the next call."""


class TritonEngine:
    name = "triton"

    def __init__(
        self,
        url: str = DEFAULT_URL,
        model_name: str = DEFAULT_MODEL,
        max_batch_size: int = 16,
        max_inflight: int = 4,
        vad: VadOptions = DEFAULT_VAD,
        timeout_s: float = 60.0,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.max_batch_size = max_batch_size
        self.max_inflight = max_inflight
        self.timeout_s = timeout_s
        self._vad_json = vad_options_to_json(vad).encode()
        self._client: Any = None  # tritonclient.grpc.aio.InferenceServerClient, made in the running loop

    # -- Engine protocol ------------------------------------------------------------------------------

    def check_options(self, options: DecodeOptions) -> None:
        """What is knowable on this side of Triton: language codes Whisper has. What only the engine behind
        the ensemble knows (e.g. word timestamps on TensorRT-LLM) fails that stream's requests alone."""
        for lang in ([options.language] if options.language else []) + list(options.language_options):
            if lang not in LANGUAGE_CODES:
                raise ValueError(f"language {lang!r} is not a Whisper language")

    async def transcribe(
        self, requests: Sequence[TranscribeRequest]
    ) -> list[TranscribeResult | RequestError]:
        if not requests:
            return []
        client = self._connect()
        results = await asyncio.gather(*(self._infer(client, r) for r in requests), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if any(isinstance(f, ConnectionLost) for f in failures):
            await self._drop(client)
        for failure in failures:  # the server is gone: every request fails the same way
            if isinstance(failure, (ConnectionLost, EngineUnavailable)):
                raise failure
        return [  # a request the model refused fails alone
            RequestError(str(r)) if isinstance(r, BaseException) else r  # type: ignore[misc]
            for r in results
        ]

    async def ready(self) -> bool:
        client = self._connect()
        try:
            return bool(
                await client.is_server_ready(client_timeout=2.0)
                and await client.is_model_ready(self.model_name, client_timeout=2.0)
            )
        except Exception as exc:  # any failure to ask is "not ready"
            log.debug("Triton at %s not ready: %s", self.url, exc)
            if _connection_lost(exc):  # not on a slow answer: that would cancel the calls in flight
                await self._drop(client)
            return False

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def log_startup(self) -> bool:
        """Say in one log line whether Triton answers now. The server starts either way (Triton may come up
        later), but without this line only a 503 from /health would tell that nothing can be transcribed."""
        from tritonclient.grpc import InferenceServerClient
        from tritonclient.utils import InferenceServerException

        client = InferenceServerClient(self.url)
        try:
            ready = client.is_server_ready(client_timeout=STARTUP_PROBE_S) and client.is_model_ready(
                self.model_name, client_timeout=STARTUP_PROBE_S
            )
            reason = "" if ready else f"model {self.model_name!r} is not ready"
        except Exception as exc:  # no connection, timeout, refused: all mean "not now"
            message = exc.message() if isinstance(exc, InferenceServerException) else str(exc)
            ready, reason = False, " ".join(str(message).split())[:200]
        finally:
            with contextlib.suppress(Exception):
                client.close()
        if ready:
            log.info("Triton at %s: model %s ready", self.url, self.model_name)
        else:
            log.warning(
                "Triton at %s does not answer (%s): streams get an error and /health 503 until it does; "
                "every request and health check tries again. Start it with `make triton`, or point "
                "--triton-url at yours",
                self.url,
                reason,
            )
        return ready

    # -- internals ------------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is None:
            from tritonclient.grpc.aio import InferenceServerClient

            self._client = InferenceServerClient(self.url)
        return self._client

    async def _drop(self, client: Any) -> None:
        """Forget a channel that failed; the next call opens a fresh one (prompt recovery after a restart)."""
        if self._client is client:
            self._client = None
            with contextlib.suppress(Exception):
                await client.close()

    def _inputs(self, request: TranscribeRequest) -> list[Any]:
        from tritonclient.grpc import InferInput

        audio = np.ascontiguousarray(request.audio, dtype=np.float32).reshape(1, -1)
        tensors = [
            InferInput("AUDIO", list(audio.shape), "FP32"),
            InferInput("OPTIONS", [1, 1], "BYTES"),
            InferInput("VAD_OPTIONS", [1, 1], "BYTES"),
        ]
        tensors[0].set_data_from_numpy(audio)
        tensors[1].set_data_from_numpy(
            np.array([[options_to_json(request.options).encode()]], dtype=np.object_)
        )
        tensors[2].set_data_from_numpy(np.array([[self._vad_json]], dtype=np.object_))
        return tensors

    async def _infer(self, client: Any, request: TranscribeRequest) -> TranscribeResult:
        from tritonclient.grpc import InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        try:
            response = await client.infer(
                self.model_name,
                self._inputs(request),
                outputs=[InferRequestedOutput("RESULT")],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            status = exc.status() or ""
            message = f"Triton at {self.url} is unavailable ({status or 'no connection'}): {exc.message()}"
            if _connection_lost(exc):
                raise ConnectionLost(message) from exc
            if status in _UNAVAILABLE:
                raise EngineUnavailable(message) from exc
            raise TritonError(f"Triton model {self.model_name!r} failed: {exc.message()}") from exc
        except OSError as exc:
            raise ConnectionLost(f"Triton at {self.url} is unavailable: {exc}") from exc
        raw = response.as_numpy("RESULT").reshape(-1)[0]
        return result_from_json(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))


def _connection_lost(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    code = status() if callable(status) else None
    return isinstance(exc, OSError) or (code is not None and code in ("StatusCode.UNAVAILABLE", ""))
