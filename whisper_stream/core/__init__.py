"""The streaming core, sans-I/O and wire-neutral: where finals begin and end (`segmenter`), the requests in
flight (`inflight`), the session that orchestrates them, and the neutral results (`events`)."""
