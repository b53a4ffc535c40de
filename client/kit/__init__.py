"""The kit the tests, benchmarks and engine checks share: real speech and WER (`speech`), a real server on a
free 127.0.0.1 port (`local_server`)."""
