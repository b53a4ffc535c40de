"""Audio signal processing: bytes -> 16 kHz samples, Silero VAD (and its unfolded graph), log-mel features."""
