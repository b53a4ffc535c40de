"""The benchmark suite: `python -m client.bench` (latency and WER over a ramp of concurrent streams) and the
specialised benches, each `python -m client.bench.<name>` (server, audio, beam, pause, triton)."""
