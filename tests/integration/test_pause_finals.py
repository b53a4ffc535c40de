"""Pause finals with the real server, Silero and Whisper: a 16.7 s recording (no pause reaches the 300 ms
endpoint) is closed at its short pauses once a final holds 3 s, loses no words, and Deepgram clients still get
one `speech_final` for the utterance."""

from __future__ import annotations

from client.kit.speech import join_utterances, to_pcm16, wer
from client.protocol import metadata, stream_pcm
from tests.integration.test_deepgram import SPEED, finals_text, run

LONG = "ls_1221-135766-0001"  # 16.7 s, pauses of 64-160 ms inside


def meta(after_s: float | None) -> dict:
    m = metadata()
    if after_s is not None:
        m["streaming_params"]["pause_final_after_s"] = after_s
    return m


async def test_a_long_utterance_ends_in_pieces_at_its_pauses_with_the_same_words(server, speech):
    stream = join_utterances([speech[LONG]], pause_s=1.5, trim=True)
    pcm = to_pcm16(stream.audio)
    on = await stream_pcm(server.url, meta(None), pcm, speed=SPEED)  # the default: 3 s
    off = await stream_pcm(server.url, meta(0.0), pcm, speed=SPEED)
    assert on.finished and off.finished and not on.errors and not off.errors
    assert len(off.finals) == 1 and len(on.finals) >= 2, [m["transcript"] for m in on.finals]
    windows = [(m["segments"][0]["start_time"], m["segments"][-1]["end_time"]) for m in on.finals]
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        assert start == end  # contiguous: no audio lost or sent twice
    assert all(b - a >= 3.0 for a, b in windows[:-1])  # no piece closed before it held 3 s
    assert windows[-1][1] - windows[-1][0] < 10.0  # the final covering the end holds only the last part
    assert off.finals[0]["audio_length_sec"] > 15.0
    reference = speech[LONG].text
    on_wer, off_wer = wer([reference], [on.text]), wer([reference], [off.text])
    print(f"WER pause finals {on_wer:.3f} vs off {off_wer:.3f}: {[m['transcript'] for m in on.finals]}")
    assert on_wer <= off_wer + 0.02


async def test_deepgram_gets_pieces_as_is_final_and_one_speech_final(server, speech):
    stream = join_utterances([speech[LONG]], pause_s=1.5, trim=True)
    got, _ = await run(server, to_pcm16(stream.audio))
    finals = [m for _, m in got if getattr(m, "type", "") == "Results" and m.is_final]
    assert len(finals) >= 2, finals_text(got)
    assert [m.speech_final for m in finals].count(True) == 1 and finals[-1].speech_final
    assert wer([speech[LONG].text], [finals_text(got)]) < 0.1
