"""Whisper -> TensorRT-LLM engines: download, convert, build, manifest and verify (run in NVIDIA's container).

`python -m build_engine --help` lists the steps; `make engine` runs them all. See build_engine/README.md.
"""
