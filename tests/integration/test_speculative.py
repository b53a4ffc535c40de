"""Speculative finals with the real server and model: same text as the plain path, and a flush that finds
the final already decoded (it arrives sooner after the flush than its own decode took), where the plain path
has decoded nothing before the flush."""

from __future__ import annotations

import asyncio
import json

import pytest

from client.bench.server import scrape
from client.kit.speech import join_utterances, load_audio, to_pcm16
from client.protocol import Received, metadata, stream_frames, stream_pcm
from tests.integration.test_admission_and_drain import WAIT_S, until

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


async def engine_calls(server) -> float:
    """Engine calls the server has completed (its /metrics): the tests of one session run one at a time."""
    return (await asyncio.to_thread(scrape, server)).get("whisper_stream_engine_calls_total{outcome=ok}", 0.0)


@pytest.mark.parametrize("speculative", [True, False])
async def test_a_flush_after_silence_finds_the_final_already_decoded(server, speech, speculative):
    """Speech, 250 ms of silence (under the 500 ms endpoint), then `finalize`.

    Speculative: `finalize` goes once the server has completed an engine call (the final's decode, started
    at the silence), so the final follows the flush sooner than its own decode took (model_s). Plain, the
    control: no engine call in the same 1.5 s before the flush (one would be a speculative decode)."""
    audio = load_audio(speech["ls_1221-135766-0002"].path)
    pcm = to_pcm16(audio) + bytes(int(0.25 * 16000) * 2)
    calls = [await engine_calls(server)]
    final = asyncio.Event()

    async def frames():
        for i in range(0, len(pcm), 1024):
            yield pcm[i : i + 1024]
        if speculative:
            await until(lambda: _more_calls(server, calls[0]), "the speculative decode")
        else:
            await asyncio.sleep(1.5)  # time for a decode, which must not happen
        calls.append(await engine_calls(server))
        yield json.dumps({"type": "finalize"})
        await asyncio.wait_for(final.wait(), WAIT_S)  # the flush's final, before end_audio

    def on_message(received: Received) -> None:
        if received.message.get("is_final"):
            final.set()

    m = meta(speculative, min_silence_ms=500)
    m["streaming_params"]["pause_final_after_s"] = 0  # 4.4 s of speech: no final at a pause before the flush
    res = await stream_frames(server.url, m, frames(), on_message=on_message)
    assert res.finished and not res.errors
    (flush_t, _), final_msg = res.controls_sent[0], next(r for r in res.received if r.message.get("is_final"))
    after_flush = final_msg.t - flush_t
    timing = final_msg.message["timing_info"]
    assert timing["speculative"] is speculative
    assert "HESTER" in final_msg.message["transcript"].upper()
    if speculative:
        assert calls[1] > calls[0] and after_flush < timing["model_s"], (calls, after_flush, timing)
    else:
        assert calls[1] == calls[0], calls  # nothing decoded before the flush


async def _more_calls(server, than: float) -> bool:
    return await engine_calls(server) > than
