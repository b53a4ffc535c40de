"""The client tools against the real server (subprocess on a free loopback port, the default CPU model).

Kept short (a few seconds of real speech each) because the server transcribes on a small shared CPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest

from client import mic
from client.bench import audio as bench_audio
from client.bench import cli as bench
from client.display import TranscriptPrinter
from client.kit.local_server import ROOT
from client.kit.speech import load_audio, normalizer, to_pcm16, wer
from client.protocol import Received, default_url, finals_text, metadata
from client.stream_file import JsonlRecorder, stream_file
from client.stream_file import main as stream_file_main

WIZARD = "ls_61-70968-0000"  # "He began a confused complaint against the wizard ..." (4.9 s)


class WavInputStream:
    """Stands in for `sounddevice.RawInputStream`: plays PCM into the callback from a thread, in real time.

    Like a microphone it keeps delivering (silence) after the recording until stopped; `on_played` fires once
    the recording and `tail_s` of silence have been delivered, which is where the test presses "Ctrl-C".
    """

    def __init__(
        self,
        pcm: bytes,
        *,
        samplerate: int,
        blocksize: int,
        channels: int,
        dtype: str,
        callback: Any,
        device: Any = None,
        tail_s: float = 1.0,
        on_played: Any = None,
    ) -> None:
        self.opened_with = {
            "samplerate": samplerate,
            "blocksize": blocksize,
            "channels": channels,
            "dtype": dtype,
        }
        self.pcm, self.callback, self.tail_s, self.on_played = pcm, callback, tail_s, on_played
        self.block_bytes = blocksize * channels * 2
        self.block_s = blocksize / samplerate
        self.blocks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        played = len(self.pcm) / self.block_bytes * self.block_s + self.tail_s
        t0 = time.monotonic()
        while not self._stop.is_set():
            i = self.blocks * self.block_bytes
            block = self.pcm[i : i + self.block_bytes].ljust(self.block_bytes, b"\0")
            delay = t0 + (self.blocks + 1) * self.block_s - time.monotonic()  # a block exists once recorded
            if delay > 0:
                time.sleep(delay)
            self.callback(memoryview(block), len(block) // 2, None, None)
            self.blocks += 1
            if self.on_played and self.blocks * self.block_s >= played:
                self.on_played()
                self.on_played = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def close(self) -> None:
        pass


async def test_mic_client_with_a_virtual_microphone(server, speech):
    pcm = to_pcm16(load_audio(speech[WIZARD].path))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    devices: list[WavInputStream] = []

    def factory(**kwargs: Any) -> WavInputStream:
        dev = WavInputStream(pcm, on_played=lambda: loop.call_soon_threadsafe(stop.set), **kwargs)
        devices.append(dev)
        return dev

    out = io.StringIO()
    meta = metadata(partials=True, partial_interval_s=1.0)
    started = time.monotonic()
    result = await mic.run_mic(
        server.url, meta, stream_factory=factory, stop=stop, on_message=TranscriptPrinter(out, tty=False)
    )
    assert time.monotonic() - started >= len(pcm) / 32000  # paced by the device, not faster
    (dev,) = devices
    assert dev.opened_with == {"samplerate": 16000, "blocksize": 512, "channels": 1, "dtype": "int16"}
    # every frame is one 512-sample block, sent as it was captured; all captured audio was sent
    steps = np.diff([0.0] + [a for _, a in result.audio_sent_s])
    assert np.allclose(steps, 0.032)
    assert len(result.audio_sent_s) == dev.blocks
    # Ctrl-C: end_audio acknowledged, the last final, finished
    assert result.finished and not result.errors and result.close_code == 1000
    kinds = [r.message.get("type") for r in result.received]
    assert kinds[-1] == "end_audio" and "transcription" in kinds
    assert "wizard" in result.text.lower()
    printed = out.getvalue().splitlines()
    finals = [line for line in printed if not line.startswith("[partial]")]
    assert any("wizard" in line.lower() for line in finals), printed


def test_mic_without_an_audio_device_gives_a_message_not_a_traceback(capsys):
    def no_device(**kwargs: Any) -> Any:
        raise OSError("Error querying device -1")

    code = mic.main(["--url", "ws://127.0.0.1:9/v1/websocket"], stream_factory=no_device)
    err = capsys.readouterr().err
    assert code == 2
    assert "no usable input device" in err and "--list-devices" in err and "Traceback" not in err


def test_mic_list_devices_says_there_is_no_device_instead_of_a_blank_line(capsys):
    code = mic.main(["--list-devices"], query_devices=lambda: "")  # PortAudio's table with no device
    out, err = capsys.readouterr()
    assert code == 2 and not out.strip(), out
    assert "no audio devices" in err and "PortAudio" in err, err


def test_mic_list_devices_without_portaudio_says_so(capsys, monkeypatch):
    """Wherever the test runs: importing sounddevice raises what it raises without PortAudio."""
    import builtins

    real_import = builtins.__import__

    def no_portaudio(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_portaudio)
    code = mic.main(["--list-devices"])
    out, err = capsys.readouterr()
    assert code == 2 and not out.strip(), out
    assert "install PortAudio" in err and "Traceback" not in err, err


def test_terminal_printer_rewrites_partials_in_place():
    out = io.StringIO()
    printer = TranscriptPrinter(out, tty=True)
    part = {"type": "transcription", "is_final": False, "segments": [{"text": "hello"}]}
    final = {"type": "transcription", "is_final": True, "segments": [{"text": "Hello world."}]}
    printer(Received(0.1, part))
    printer(Received(0.2, {**part, "segments": [{"text": "hello wor"}]}))
    printer(Received(0.3, final))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("Hello world.\n")
    assert text.count("\r\x1b[K") == 3  # each partial replaces the last; the final clears the line first


def _write_stereo_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """The recording as a 22.05 kHz stereo WAV: the streamer must convert it to 16 kHz mono."""
    t_src = np.arange(len(audio)) / 16000
    t_dst = np.arange(int(len(audio) / 16000 * rate)) / rate
    mono = np.interp(t_dst, t_src, audio)
    stereo = (np.stack([mono, 0.5 * mono], axis=1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(stereo.tobytes())


async def test_file_streamer_converts_paces_and_logs_every_message(server, speech, tmp_path):
    src = tmp_path / "wizard_22k_stereo.wav"
    _write_stereo_wav(src, load_audio(speech[WIZARD].path), 22050)
    log = tmp_path / "messages.jsonl"
    with log.open("w") as fh:
        result = await stream_file(src, server.url, speed=4.0, on_message=JsonlRecorder(fh, str(src)))
    assert result.finished and not result.errors
    assert result.audio_sent_s[-1][1] == pytest.approx(4.905, abs=0.05)  # 16 kHz mono seconds, not 22.05 kHz
    assert result.audio_sent_s[-1][0] >= 4.905 / 4 - 0.1  # paced at 4x real time
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == len(result.received) >= 3
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows) and all(r["t"] > 0 for r in rows)
    assert {r["file"] for r in rows} == {str(src)}
    assert rows[-1]["message"]["body"]["status"] == "finished"
    assert "wizard" in finals_text(r["message"] for r in rows).lower()


def test_file_streamer_skips_a_non_audio_file_in_one_line_and_fails_the_run(server, speech, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not audio\n")
    code = stream_file_main(["--url", server.url, "--speed", "0", str(notes), str(speech[WIZARD].path)])
    out, err = capsys.readouterr()
    assert code == 1
    problems = [line for line in err.splitlines() if line.strip() and ": connected to " not in line]
    assert problems == [line for line in err.splitlines() if line.startswith(f"{notes}: not audio")], err
    assert "Traceback" not in err and "wizard" in out.lower(), (out, err)  # the next file still streamed
    assert "Errno" not in err and "(Invalid data found when processing input)" in err, err  # FFmpeg's words


def test_file_streamer_reports_an_empty_wav_and_fails(server, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    with wave.open(str(empty), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    code = stream_file_main(["--url", server.url, str(empty)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{empty}: no audio in it (0 samples)" in err and "connected" not in err, err


def test_file_streamer_says_its_output_closed_not_that_it_cannot_connect(server, speech):
    """`... | head -1`: the closed pipe is ours, the server was reached."""
    cmd = [sys.executable, "-m", "client.stream_file", "--url", server.url, "--speed", "0"]
    proc = subprocess.Popen(
        [*cmd, str(speech[WIZARD].path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the first final is printed (the tool needs seconds to start and stream)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "output closed (broken pipe)" in err and "cannot connect" not in err and "Traceback" not in err, (
        err
    )
    assert "Exception ignored" not in err, err  # no second error when Python flushes stdout at exit


def test_file_streamer_shows_the_servers_explanation_of_a_refusal(server, speech, capsys):
    url = server.url.replace("/v1/websocket", "/no/such/path")
    code = stream_file_main(["--url", url, "--speed", "0", str(speech[WIZARD].path)])
    err = capsys.readouterr().err
    assert code == 1
    assert "HTTP 404: use /v1/websocket" in err and "Traceback" not in err, err


def test_benchmark_against_the_real_server(server, speech, tmp_path, capsys):
    ids = ["lj_LJ002-0020", "lj_LJ002-0035", WIZARD]  # 1.5 s, 1.6 s, 4.9 s
    out = tmp_path / "bench"
    code = bench.main(
        [
            "--url",
            server.url,
            "--label",
            "local",
            "--concurrency",
            "1,2",
            "--ids",
            ",".join(ids),
            "--utterances-per-stream",
            "2",
            "--pause-s",
            "2.5",  # streams long enough that a final delayed by the slow shared CPU still lands inside
            "--no-partials",  # the slow shared CPU keeps its time for the finals being measured
            "--stagger-s",
            "0.1",
            "--rest-s",
            "0",
            "--repeats",
            "2",
            "--no-offline-wer",  # the external server's model is not known to the client
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads((out / "bench.json").read_text())
    # repetitions outermost, then N, then the two modes; the same utterances at every N
    assert [(r["repetition"], r["concurrency"], r["mode"]) for r in report["runs"]] == [
        (rep, n, mode) for rep in (0, 1) for n in (1, 2) for mode in ("server", "flush")
    ]
    assert {u["id"] for r in report["runs"] for s in r["streams"] for u in s["utterances"]} == set(ids[:2])
    assert report["machine"]["loadavg_start"] and report["streams"][0]["finalize_after_frames"]
    flush_runs = [r for r in report["runs"] if r["mode"] == "flush"]
    assert all(s["flushes_sent"] >= 2 for r in flush_runs for s in r["streams"])  # one per utterance at least
    assert all(s["flushes_sent"] == 0 for r in report["runs"] if r["mode"] == "server" for s in r["streams"])
    for a in report["aggregate"]:
        assert a["repetitions"] == 2 and a["utterances"] == 2 * a["concurrency"] * 2
        assert a["matched"] == a["utterances"]
        assert a["latency_p50_s"]["min"] <= a["latency_p50_s"]["median"] <= a["latency_p50_s"]["max"]
    assert report["targets"][0]["url"] == server.url and "cpu" in report["machine"]
    assert "EnglishTextNormalizer" in report["normalizer"]
    norm = normalizer("en")
    for run in report["runs"]:
        s = run["summary"]
        assert s["stream_errors"] == 0 and s["rtfx"] > 0
        refs, hyps = [], []
        for stream in run["streams"]:
            assert stream["finished"] and stream["messages"] > 0 and stream["lag"]
            for u in stream["utterances"]:
                assert u["latency_s"] is not None, u
                assert 0 < u["latency_s"] < stream["audio_s"], u
                refs.append(norm(u["reference"]))
                hyps.append(norm(u["hypothesis"]))
            # the hypotheses are exactly the finals' text, split between the utterances
            joined = " ".join(u["hypothesis"] for u in stream["utterances"] if u["hypothesis"])
            assert joined == " ".join(f["text"] for f in stream["finals"] if f["text"])
        # the reported WER is jiwer's on the same (normalised) final text
        assert s["wer"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
        assert s["wer"] < 0.35
        assert s["latency_p50_s"] <= s["latency_p95_s"] <= s["latency_max_s"]
    assert "TTFS p50" in printed and "flush" in printed
    for name in (
        "latency_distribution.png",
        "ttfs_cdf.png",
        "latency_vs_concurrency.png",
        "lag_over_time.png",
    ):
        from PIL import Image

        with Image.open(out / name) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_benchmark_runs_every_protocol_side_by_side_each_with_its_own_flush(server, speech, tmp_path):
    """`--protocol baseten,deepgram,openai`: the same streams over each protocol against one server, in
    flush mode with each protocol's own flush (finalize, Finalize, input_audio_buffer.commit)."""
    out = tmp_path / "bench"
    argv = ["--url", server.url, "--protocol", "baseten,deepgram,openai", "--modes", "flush"]
    argv += ["--concurrency", "1", "--repeats", "1", "--ids", "lj_LJ002-0020,lj_LJ002-0035"]
    argv += ["--utterances-per-stream", "2", "--pause-s", "2.5", "--no-partials", "--rest-s", "0"]
    assert bench.main([*argv, "--no-offline-wer", "--no-plots", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert [t["label"] for t in report["targets"]] == ["baseten", "deepgram", "openai"]
    for run in report["runs"]:
        (stream,) = run["streams"]
        assert stream["finished"] and stream["flushes_sent"] >= 2, run["label"]  # one per utterance at least
        assert run["summary"]["finals_matched"] == 2 and run["summary"]["wer"] < 0.35, run["label"]
    assert {c["label"] for c in report["comparison"]} == {"deepgram", "openai"}


def test_audio_front_end_benchmark_measures_every_encoding(tmp_path, capsys):
    """`make bench-audio` runs from a fresh clone (it once imported a name the data toolkit no longer had)."""
    out = tmp_path / "audio.json"
    assert bench_audio.main(["--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["encoding"], r["sample_rate"]) for r in rows] == bench_audio.CASES
    assert all(0 < r["decode_ms_per_s"] < r["total_ms_per_s"] and r["vad_ms_per_s"] > 0 for r in rows)
    assert "silero vad" in capsys.readouterr().out


def test_default_url_is_the_env_url_else_the_servers_port_variable(monkeypatch):
    monkeypatch.delenv("WHISPER_STREAM_URL", raising=False)
    monkeypatch.delenv("WHISPER_STREAM_PORT", raising=False)
    assert default_url() == "ws://127.0.0.1:8000/v1/websocket"
    monkeypatch.setenv("WHISPER_STREAM_PORT", "8123")  # what `whisper-stream serve` reads its port from
    assert default_url() == "ws://127.0.0.1:8123/v1/websocket"
    monkeypatch.setenv("WHISPER_STREAM_URL", "wss://example.test/v1/websocket")
    assert default_url() == "wss://example.test/v1/websocket"


def test_file_streamer_follows_the_servers_port_and_says_where_it_connected(
    server, speech, monkeypatch, capsys
):
    monkeypatch.delenv("WHISPER_STREAM_URL", raising=False)
    monkeypatch.setenv("WHISPER_STREAM_PORT", str(server.port))
    code = stream_file_main(["--speed", "0", str(speech[WIZARD].path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"connected to {server.url}" in err and "wizard" in out.lower(), (out, err)


def test_mic_follows_the_servers_port_and_says_where_it_connected(server, speech, monkeypatch, capsys):
    monkeypatch.delenv("WHISPER_STREAM_URL", raising=False)
    monkeypatch.setenv("WHISPER_STREAM_PORT", str(server.port))
    pcm = to_pcm16(load_audio(speech[WIZARD].path)[:16000])
    code = mic.main(
        ["--duration", "1", "--no-partials"], stream_factory=lambda **kw: WavInputStream(pcm, **kw)
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"connected to {server.url}" in err, err


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_try_streams_jfk_to_the_port_make_serve_used(server, speech):
    """The README's try-it block: `make serve PORT=N`, then `make try PORT=N` prints the finals."""
    prefix = Path(sys.prefix)  # this interpreter's environment, taken as installed (-o: never reinstalled)
    cmd = ["make", "-s", "try", f"PORT={server.port}", f"VENV={prefix}", "-o", f"{prefix}/bin/.installed"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"connected to {server.url}" in run.stderr, run.stderr
    assert wer([speech["jfk"].text], [run.stdout]) < 0.15, run.stdout
