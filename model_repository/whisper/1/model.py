"""Triton adapter: tensors <-> `whisper_stream.triton.ensemble_vad.transcribe_speech` with the configured
engine."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from whisper_stream.engines.interface import options_from_json, result_to_json
from whisper_stream.triton.ensemble_vad import SpeechWindow, transcribe_speech
from whisper_stream.triton.whisper_model import (
    close_engine,
    config_parameters,
    create_engine,
    option_errors,
    transcribe_blocking,
)


def _input(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)


def _text(request, name: str) -> str:
    value = _input(request, name)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _string_tensor(name: str, value: str) -> "pb_utils.Tensor":
    return pb_utils.Tensor(name, np.array([[value.encode("utf-8")]], dtype=np.object_))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.engine = create_engine(
            config_parameters(config),
            args["model_instance_kind"],
            max(1, int(config["max_batch_size"])),
            device_id=int(args.get("model_instance_device_id") or 0),
        )

    def execute(self, requests):
        responses = [None] * len(requests)
        windows, options, indices = [], [], []
        for i, request in enumerate(requests):
            try:
                decoded = options_from_json(_text(request, "OPTIONS"))
            except (ValueError, TypeError) as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad OPTIONS: {exc}"))
                continue
            (problem,) = option_errors(self.engine, [decoded])
            if problem is not None:  # this request only: the rest of the batch still runs
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"bad OPTIONS: {problem}")
                )
                continue
            options.append(decoded)
            windows.append(
                SpeechWindow(
                    audio=_input(request, "AUDIO").astype(np.float32, copy=False),
                    offset_s=float(_input(request, "OFFSET")[0]),
                    has_speech=bool(_input(request, "HAS_SPEECH")[0]),
                )
            )
            indices.append(i)
        try:
            results = transcribe_speech(self._transcribe, windows, options)
        except Exception as exc:  # the whole batch failed: every request says why
            error = pb_utils.TritonError(f"whisper engine failed: {type(exc).__name__}: {exc}")
            return [r or pb_utils.InferenceResponse(error=error) for r in responses]
        for i, result in zip(indices, results, strict=True):
            prob = -1.0 if result.language_prob is None else result.language_prob
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    _string_tensor("RESULT", result_to_json(result)),
                    _string_tensor("TEXT", result.text),
                    _string_tensor("LANGUAGE", result.language),
                    pb_utils.Tensor("LANGUAGE_PROB", np.array([[prob]], dtype=np.float32)),
                ]
            )
        return responses

    def _transcribe(self, batch):
        return transcribe_blocking(self.engine, batch)

    def finalize(self):
        close_engine(self.engine)
