"""Stand-ins for the parts this machine lacks, used by the tests and `make gpu-check` only.

Never imported by the server: pip does not install this package (pyproject's packages leave it out) and the
Truss bundle does not carry it, so no production configuration can select a stand-in. From a repository
checkout, `WHISPER_STREAM_TRTLLM_RUNNER=faithful` makes the TensorRT-LLM engine drive `trtllm_runner`.
"""
