"""The Baseten endpoint's messages on every recording in data/, against a recording made before the streaming
core was rewritten (tests/golden/baseten.json): the refactor keeps what Baseten clients see.

Compared: the acknowledgements in order and `finished` last; every final by its number (the segmentation's),
with its window (audio length within two VAD frames) and flags; the finals' text by word errors per
recording (see `MAX_WORD_ERRORS`: CTranslate2's numbers differ between CPUs and batch shapes). Volatile
fields (lag, timestamps, confidence and language probability) are left out.

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
# Finals' text against the recording's, per recording: at most this fraction of its words, or two words. Not
# exact even on one machine: how a stream's finals are batched with each other depends on timing, and a
# batch's padding moves CTranslate2's numbers (a short Swedish "Otto." reads "Ota!" in some runs); on a CPU
# without AVX-512 a Swedish clip reads "Huvuslekar börjar" for "Hushuslekar börja".
MAX_WORD_ERRORS = 0.2
# A final whose window is this short may decode to a word or two on one CPU and to nothing on another
MAX_EDGE_WORDS, MAX_EDGE_WINDOW_S = 2, 1.0


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
    # acknowledgements in order among themselves (when end_audio's acknowledgement leaves, relative to finals
    # still decoding, depends on the engine's speed), and `finished` last
    if got["messages"][-1:] != want["messages"][-1:]:
        problems.append(f"{name}: last message {got['messages'][-1:]} != {want['messages'][-1:]}")
    acks = [[m for m in side["messages"] if m["type"] != "transcription"] for side in (want, got)]
    if acks[0] != acks[1]:
        problems.append(f"{name}: acknowledgements {acks[1]} != {acks[0]}")
    # finals by number (the segmentation's, not the model's): each window and its flags as before; a final
    # only one side sent must be a short window's word or two (a decode on the edge of the empty-text filter)
    finals = [{m["transcription_num"]: dict(m) for m in side["messages"] if m["type"] == "transcription"}
              for side in (want, got)]  # fmt: skip
    for num in sorted(finals[0].keys() | finals[1].keys()):
        a, b = finals[0].get(num), finals[1].get(num)
        if a is None or b is None:
            only = a or b
            assert only is not None
            if (
                len(only["transcript"].split()) > MAX_EDGE_WORDS
                or only["audio_length_sec"] > MAX_EDGE_WINDOW_S
            ):
                problems.append(
                    f"{name}: final #{num} only {'in the recording' if b is None else 'now'}: {only}"
                )
            continue
        la, lb = a.pop("audio_length_sec"), b.pop("audio_length_sec")
        if abs(la - lb) > WINDOW_TOLERANCE_S:
            problems.append(f"{name} #{num}: audio_length_sec {lb} != {la}")
        ta, tb = a.pop("transcript"), b.pop("transcript")
        a.pop("segments"), b.pop("segments")
        if a != b:
            problems.append(f"{name} #{num}: {b} != {a}")
        finals[0][num]["transcript"], finals[1][num]["transcript"] = ta, tb
    texts = [" ".join(f["transcript"] for _, f in sorted(side.items())).strip() for side in finals]
    words = len(texts[0].split())
    if texts[0] and wer([texts[0]], [texts[1]], want["language"]) * words > max(2.0, MAX_WORD_ERRORS * words):
        problems.append(f"{name}: finals' text {texts[1]!r} != {texts[0]!r}")
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
