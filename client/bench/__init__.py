"""The benchmark suite: `python -m client.bench` (latency and WER over a ramp of concurrent streams) and the
specialised benches, each `python -m client.bench.<name>` (server, audio, beam, pause, triton).

    workload.py  the streams (data set utterances, joined; where a client VAD sends finalize)
    runner.py    N streams against one server, scored; the whole ramp
    metrics.py   per-utterance metrics (TTFS, first partial, cadence, unstable words, lag)
    report.py    aggregates over repetitions, ratios between servers, the table
    plots.py     PNGs from the report
    wire.py      the Deepgram and OpenAI protocols, for comparing hosted endpoints
    cli.py       the command line of `python -m client.bench` (`whisper-stream-bench`)
"""
