"""Triton adapter: tensors <-> whisper_stream.triton.ensemble_vad.trim_windows (Silero VAD, batched)."""

import numpy as np
import triton_python_backend_utils as pb_utils

from whisper_stream.dsp.vad import SileroModel
from whisper_stream.triton.ensemble_vad import trim_windows, vad_options_from_json


def _text(request, name: str) -> str:
    value = pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        self.model = SileroModel(threads=1)

    def execute(self, requests):
        responses = [None] * len(requests)
        audios, options, indices = [], [], []
        for i, request in enumerate(requests):
            try:
                options.append(vad_options_from_json(_text(request, "VAD_OPTIONS")))
            except (ValueError, TypeError) as exc:
                responses[i] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"bad VAD_OPTIONS: {exc}")
                )
                continue
            audios.append(pb_utils.get_input_tensor_by_name(request, "AUDIO").as_numpy().reshape(-1))
            indices.append(i)
        for i, window in zip(indices, trim_windows(self.model, audios, options), strict=True):
            responses[i] = pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor("SPEECH_AUDIO", window.audio.reshape(1, -1)),
                    pb_utils.Tensor("OFFSET", np.array([[window.offset_s]], dtype=np.float32)),
                    pb_utils.Tensor("HAS_SPEECH", np.array([[window.has_speech]], dtype=bool)),
                ]
            )
        return responses
