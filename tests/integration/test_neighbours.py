"""A stream's transcript does not depend on its neighbours: each request decodes with its own options and
context, in the engine and through the server, and one failing request fails alone."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from client.kit.speech import join_utterances, load_audio, to_pcm16
from client.protocol import metadata, stream_pcm
from whisper_stream.engines.ctranslate2 import CTranslate2Engine
from whisper_stream.engines.interface import DecodeOptions, TranscribeRequest


@pytest.fixture(scope="module")
def engine() -> CTranslate2Engine:
    return CTranslate2Engine(max_batch_size=8)


def test_each_request_decodes_with_its_own_options_and_context(engine, speech):
    wizard = load_audio(speech["ls_61-70968-0000"].path)  # 4.9 s: the 10 s context bucket
    long = load_audio(speech["ls_1221-135766-0001"].path)  # 16.7 s: the 20 s bucket
    short_cap = DecodeOptions(max_new_tokens=3, temperatures=(0.0, 0.2, 0.4))
    prompted = DecodeOptions(prompt="The Wizard of Oz, a story")
    calls: list[dict] = []
    model = engine._model

    class Spy:
        """CTranslate2's Whisper, its generate calls recorded (the extension's attributes are read-only)."""

        def __getattr__(self, name: str):
            return getattr(model, name)

        def generate(self, features, prompts, **kw):
            calls.append({"n": len(prompts), "frames": features.shape[1], "max_length": kw["max_length"]})
            return model.generate(features, prompts, **kw)

    alone = engine.transcribe_sync([TranscribeRequest(wizard)])[0]
    engine._model = Spy()
    try:
        requests = [TranscribeRequest(long, short_cap), TranscribeRequest(wizard)]
        batch = engine.transcribe_sync([*requests, TranscribeRequest(wizard, prompted)])
    finally:
        engine._model = model
    assert batch[1] == alone  # same audio and options: the same result, segment for segment
    assert len(batch[0].text.split()) <= 3  # its own cap, not the neighbours' 400 tokens
    assert "wizard" in batch[2].text.lower()
    # the capped request decoded apart from the others, with its own length limit and a 20 s context;
    # the prompted one apart again (<|startoftranscript|> sits elsewhere), both over the 10 s context
    capped = [c for c in calls if c["frames"] == 1000]  # encoder output frames: 2000 mel frames / 2
    assert capped and all(c["n"] == 1 for c in calls), calls
    assert any(c["max_length"] <= 3 + 8 for c in calls), calls


def test_max_new_tokens_is_the_exact_cap_with_and_without_a_prefix(engine, speech):
    """CTranslate2 halves its `max_length`: a cap of 10 new tokens once gave 7. Each request in one call gets
    exactly its own number of new tokens after its prefix (16.7 s of speech: ~50 tokens, none cut short)."""
    long = load_audio(speech["ls_1221-135766-0001"].path)
    tok = engine._tok
    full = engine.transcribe_sync([TranscribeRequest(long)])[0].text
    ids = tok.encode(full)
    caps = [DecodeOptions(max_new_tokens=n, temperatures=(0.0,)) for n in (10, 30)]
    prefix = tok.decode(ids[:4]).strip()  # the transcript's own first 4 tokens, forced
    prefixed = DecodeOptions(prefix=prefix, max_new_tokens=5, temperatures=(0.0,))
    results = engine.transcribe_sync([TranscribeRequest(long, o) for o in [*caps, prefixed]])
    assert [r.text for r in results] == [tok.decode(ids[:10]), tok.decode(ids[:30]), tok.decode(ids[:9])]


def test_a_neighbours_prefix_changes_neither_text_nor_score(engine, speech):
    """Same options but a long prefix beside it: decoded in its own call, so the shorter request's beam search
    and log-prob never see the neighbour's length limit."""
    clip = load_audio(speech["lj_LJ002-0020"].path)
    mine = DecodeOptions(max_new_tokens=4, beam_width=5, temperatures=(0.0,), language=None)
    theirs = replace(mine, prefix="and so it was that many many people came here to see it all")
    (alone,) = engine.transcribe_sync([TranscribeRequest(clip, mine)])
    beside, _ = engine.transcribe_sync([TranscribeRequest(clip, mine), TranscribeRequest(clip, theirs)])
    assert (beside.text, beside.segments[0].avg_logprob) == (alone.text, alone.segments[0].avg_logprob)


async def test_finals_are_identical_alone_and_beside_other_streams(server, speech):
    mine = to_pcm16(join_utterances([speech["ls_61-70968-0000"], speech["lj_LJ002-0020"]]).audio)
    alone = await stream_pcm(server.url, metadata(), mine, speed=0)
    others = [
        (
            metadata(prompt="Hester Prynne " * 40, whisper_sampling_params={"max_new_tokens": 8}),
            speech["ls_1221-135766-0002"],
        ),
        (
            metadata(whisper_sampling_params={"beam_width": 2, "sampling_temperatures": [0.0, 0.4]}),
            speech["ls_1221-135766-0001"],
        ),
        (metadata(language="auto"), speech["mfa_sv_u0016003"]),
    ]
    together = await asyncio.gather(
        stream_pcm(server.url, metadata(), mine, speed=0),
        *(stream_pcm(server.url, meta, to_pcm16(load_audio(u.path)), speed=0) for meta, u in others),
    )
    assert together[0].finished and all(r.finished and r.finals for r in together)
    assert [m["transcript"] for m in together[0].finals] == [m["transcript"] for m in alone.finals]
    assert [s["log_prob"] for m in together[0].finals for s in m["segments"]] == [
        s["log_prob"] for m in alone.finals for s in m["segments"]
    ]
