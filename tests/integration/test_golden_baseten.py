"""The Baseten endpoint's messages on every recording in data/, against a recording made before the streaming
core was rewritten (tests/golden/baseten.json): the refactor keeps what Baseten clients see.

Compared: every message except partials, finals in order and acknowledgements in order, with their type,
flags, numbering and window (audio length within two VAD frames); the finals' text by word errors per
recording (see `MAX_WORD_ERRORS`; CTranslate2's kernels also differ between CPUs, so an exact text would
fail on another x86-64 for no fault of ours). Volatile fields (lag, timestamps, confidence and language
probability) are left out.

Re-record (only when a difference is understood and documented):
    python -m tests.integration.test_golden_baseten --record
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from client.kit.local_server import LocalServer
from client.kit.speech import load_audio, load_manifest, to_pcm16, wer
from client.protocol import metadata, stream_pcm

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "baseten.json"
FLUSHED = ("ls_1221-135766-0001", "ls_2412-153948-0000", "mfa_cold_corpus")  # a finalize mid-speech too
FRAME_BYTES = 1024  # 512 samples, as the documented clients send
WINDOW_TOLERANCE_S = 0.064  # two VAD frames: Silero's last digits may differ on other CPUs
# Finals' text against the recording's, per recording: at most this fraction of its words, or one word. Not
# exact even on one machine: how a stream's finals are batched with each other depends on timing, and a
# batch's padding moves CTranslate2's numbers (a short Swedish "Otto." reads "Ota!" in some runs).
MAX_WORD_ERRORS = 0.1


def _cases() -> list[tuple[str, Any, int | None]]:
    cases: list[tuple[str, Any, int | None]] = []
    for u in load_manifest():
        cases.append((u.id, u, None))
        if u.id in FLUSHED:
            frames = int(u.duration_s * 0.4 * 16000) // 512
            cases.append((f"{u.id}+finalize@{frames}", u, frames))
    return cases


def _shape(msg: dict[str, Any]) -> dict[str, Any]:
    """What must not change, of one message."""
    kind = msg.get("type")
    if kind == "transcription":
        return {
            "type": kind,
            "is_final": msg["is_final"],
            "transcription_num": msg["transcription_num"],
            "is_end_of_audio_flush": msg.get("is_end_of_audio_flush", False),
            "language_code": msg["language_code"],
            "audio_length_sec": msg["audio_length_sec"],
            "transcript": msg["transcript"],
            "segments": len(msg["segments"]),
        }
    if kind == "error":
        return {"type": kind, "error_type": msg["body"]["error_type"], "message": msg["body"]["message"]}
    return {"type": kind, "body": msg.get("body")}


async def _run(url: str, utterance: Any, finalize_after: int | None) -> dict[str, Any]:
    pcm = to_pcm16(load_audio(utterance.path))
    meta = metadata(language=utterance.language)
    controls = {finalize_after: json.dumps({"type": "finalize"})} if finalize_after is not None else None
    result = await stream_pcm(url, meta, pcm, speed=0, frame_bytes=FRAME_BYTES, after_frame=controls)
    shapes = [_shape(r.message) for r in result.received if r.message.get("is_final") is not False]
    return {"messages": shapes, "close": result.close_code, "language": utterance.language}


async def _record_all(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, utterance, finalize_after in _cases():
        out[name] = await _run(url, utterance, finalize_after)
    return out


def _compare(name: str, want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    problems = []
    if got["close"] != want["close"]:
        problems.append(f"{name}: close {got['close']} != {want['close']}")
    # finals in order; acknowledgements in order among themselves (when end_audio's acknowledgement leaves,
    # relative to finals still decoding, depends on the engine's speed), and `finished` last
    if got["messages"][-1:] != want["messages"][-1:]:
        problems.append(f"{name}: last message {got['messages'][-1:]} != {want['messages'][-1:]}")
    w = sorted(want["messages"], key=lambda m: m["type"] != "transcription")
    g = sorted(got["messages"], key=lambda m: m["type"] != "transcription")
    if len(w) != len(g):
        return problems + [f"{name}: {len(g)} messages != {len(w)}:\n  got  {g}\n  want {w}"]
    texts: list[tuple[str, str]] = []
    for i, (a, b) in enumerate(zip(w, g, strict=True)):
        a, b = dict(a), dict(b)
        if a.get("type") == "transcription" and b.get("type") == "transcription":
            texts.append((a.pop("transcript"), b.pop("transcript")))
            la, lb = a.pop("audio_length_sec"), b.pop("audio_length_sec")
            if abs(la - lb) > WINDOW_TOLERANCE_S:
                problems.append(f"{name} #{i}: audio_length_sec {lb} != {la}")
        if a != b:
            problems.append(f"{name} #{i}: {b} != {a}")
    refs = " ".join(t for t, _ in texts).strip()
    allowed = max(1.0, MAX_WORD_ERRORS * len(refs.split()))
    if refs and wer([refs], [" ".join(h for _, h in texts)], want["language"]) * len(refs.split()) > allowed:
        problems.append(f"{name}: finals' text {[h for _, h in texts]} != {[t for t, _ in texts]}")
    return problems


def test_the_baseten_endpoint_sends_what_it_sent_before_the_core_was_rewritten() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) == {name for name, _, _ in _cases()}, "data/ changed: re-record the golden file"
    with LocalServer("--max-streams", "8") as server:
        got = asyncio.run(_record_all(server.url))
    problems = [p for name in golden for p in _compare(name, golden[name], got[name])]
    assert not problems, "\n".join(problems)


if __name__ == "__main__":
    if "--record" not in sys.argv:
        sys.exit("usage: python -m tests.integration.test_golden_baseten --record")
    with LocalServer("--max-streams", "8") as srv:
        recorded = asyncio.run(_record_all(srv.url))
    GOLDEN.write_text(json.dumps(recorded, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(recorded)} cases into {GOLDEN}")
