"""Glue for Triton's python backend: the `whisper` model's engine and the ensemble's VAD trimming."""
