"""Speculative finals with the real server and model: same text as the plain path, and a flush that finds
the final already decoded (it arrives sooner after the flush than its own decode took)."""

from __future__ import annotations

import asyncio
import json

import pytest

from client.kit.speech import join_utterances, load_audio, to_pcm16
from client.protocol import metadata, stream_frames, stream_pcm

IDS = ["ls_1089-134686-0001", "ls_1221-135766-0002", "ls_61-70968-0000", "lj_LJ002-0020"]


def meta(speculative: bool, **kw):
    m = metadata(**kw)
    m["streaming_params"]["speculative_finals"] = speculative
    m["include_timing_info"] = True
    return m


async def test_speculative_finals_have_the_plain_paths_text(server, speech):
    stream = join_utterances([speech[i] for i in IDS], pause_s=1.2)
    pcm = to_pcm16(stream.audio)
    on = await stream_pcm(server.url, meta(True), pcm, speed=2.0)
    off = await stream_pcm(server.url, meta(False), pcm, speed=2.0)
    assert on.finished and off.finished and not on.errors and not off.errors
    spans = [[(s["start_time"], s["end_time"]) for s in m["segments"]] for m in on.finals]
    assert [m["transcript"] for m in on.finals] == [m["transcript"] for m in off.finals]
    assert spans == [[(s["start_time"], s["end_time"]) for s in m["segments"]] for m in off.finals]
    assert len(on.finals) >= len(IDS)
    assert any(m["timing_info"]["speculative"] for m in on.finals)
    assert not any(m["timing_info"]["speculative"] for m in off.finals)


@pytest.mark.parametrize("speculative", [True, False])
async def test_a_flush_after_silence_finds_the_final_already_decoded(server, speech, speculative):
    """Speech, 250 ms of silence (under the 500 ms endpoint), a 1.5 s wait, then `finalize`.

    Speculative: the decode ran during the wait, so the final follows the flush sooner than its own decode
    took (model_s). Plain: the decode starts at the flush, so it cannot."""
    audio = load_audio(speech["ls_1221-135766-0002"].path)
    pcm = to_pcm16(audio) + bytes(int(0.25 * 16000) * 2)

    async def frames():
        for i in range(0, len(pcm), 1024):
            yield pcm[i : i + 1024]
        await asyncio.sleep(1.5)
        yield json.dumps({"type": "finalize"})
        await asyncio.sleep(3.0)  # the final arrives before end_audio could make one

    m = meta(speculative, min_silence_ms=500)
    m["streaming_params"]["pause_final_after_s"] = 0  # 4.4 s of speech: no final at a pause before the flush
    res = await stream_frames(server.url, m, frames())
    assert res.finished and not res.errors
    (flush_t, _), final = res.controls_sent[0], next(r for r in res.received if r.message.get("is_final"))
    after_flush = final.t - flush_t
    timing = final.message["timing_info"]
    assert timing["speculative"] is speculative
    assert "HESTER" in final.message["transcript"].upper()
    if speculative:
        assert after_flush < timing["model_s"], (after_flush, timing)
    else:
        assert after_flush >= timing["model_s"], (after_flush, timing)
