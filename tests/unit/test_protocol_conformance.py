"""The conformance tables (docs/protocols.md, Deepgram and OpenAI), one case per row: every Deepgram
parameter and OpenAI Realtime session field is mapped onto the session's config, accepted without effect, or
refused with the protocol's own error. Plus the message shapes the SDKs parse."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.unit.fakes import LoudnessVad, fake_result, pcm, silence, tone
from whisper_stream.core.events import Transcribe
from whisper_stream.protocols import deepgram, openai_realtime
from whisper_stream.protocols.deepgram import ParamError, parse_params
from whisper_stream.serving.driver import Audio, EndAudio, Send
from whisper_stream.serving.runtime import Runtime
from whisper_stream.serving.scheduler import Scheduler
from whisper_stream.serving.stream_audio import StreamAudio
from whisper_stream.serving.transport import Close

BASE = "encoding=linear16&sample_rate=16000"


_AUDIO: dict = {}  # session -> its StreamAudio, as the driver keeps them


def on_frame(proto, frame, now: float) -> list:
    """`proto.on_frame`, its audio run through the session the way the stream driver runs it."""
    outs = []
    for session, action in proto.on_frame(frame, now):
        if isinstance(action, Audio):
            p = session.config.streaming_params
            audio = _AUDIO.setdefault(session, StreamAudio(p.encoding, p.sample_rate, LoudnessVad()))
            frames = audio.take_frames(action.data)
            outs += (
                [(session, a) for a in session.on_frames(frames, audio.vad(frames))] if len(frames) else []
            )
        elif isinstance(action, EndAudio):
            outs += [(session, a) for a in session.end_audio()]
        else:
            outs.append((session, action))
    return outs


def answered(session, request_id: int, result) -> list:
    """An engine result, as the driver hands it to the session."""
    return [(session, a) for a in session.on_result(request_id, result, None)]


def wire_of(proto, outs) -> list:
    """What the client receives of `outs`: the protocol's own messages and its renderings (no closes)."""
    wire: list = []
    for session, action in outs:
        if isinstance(action, Send):
            wire.append(action.message)
        elif not isinstance(action, Transcribe | Audio | EndAudio | Close) and not hasattr(
            action, "request_id"
        ):
            wire += [w for w in proto.render(session, action) if not isinstance(w, Close)]
    return wire


def runtime() -> Runtime:
    """The real Runtime over a fake engine and the loudness VAD (no model loads)."""
    engine = SimpleNamespace(
        model_name="base", name="ctranslate2", max_batch_size=8, max_inflight=1, check_options=lambda o: None
    )
    return Runtime(Scheduler(engine), SimpleNamespace(stream=LoudnessVad))  # type: ignore[arg-type]


# (query, check on the Options) for every mapped Deepgram parameter
MAPPED = [
    ("encoding=mulaw&sample_rate=8000", lambda o: o.config.streaming_params.encoding == "pcm_mulaw"),
    ("encoding=alaw", lambda o: o.config.streaming_params.sample_rate == 8000),
    (f"{BASE}&sample_rate=24000", lambda o: o.config.streaming_params.sample_rate == 24000),
    (f"{BASE}&channels=2&multichannel=true", lambda o: o.channels == 2),
    (f"{BASE}&language=en-US", lambda o: o.config.whisper_params.audio_language == "en"),
    (f"{BASE}&language=multi", lambda o: o.config.decode_options().language is None),
    (BASE, lambda o: o.config.decode_options().language is None),  # absent: detection
    (f"{BASE}&interim_results=true", lambda o: o.config.streaming_params.enable_partial_transcripts),
    (f"{BASE}&endpointing=25", lambda o: o.config.streaming_vad_config.min_silence_duration_ms == 300),
    (f"{BASE}&endpointing=800", lambda o: o.config.streaming_vad_config.min_silence_duration_ms == 800),
    (f"{BASE}&endpointing=false", lambda o: not o.endpointing),
    (f"{BASE}&utterance_end_ms=1500", lambda o: o.utterance_end_ms == 1500),
    (f"{BASE}&utterance_end_ms=200", lambda o: o.utterance_end_ms == 1000),
    (f"{BASE}&vad_events=true", lambda o: o.vad_events),
    (
        f"{BASE}&keyterm=Kubernetes&keyterm=pgvector",
        lambda o: o.config.whisper_params.prompt == "Kubernetes, pgvector",
    ),
    (f"{BASE}&keywords=Baseten:2", lambda o: o.config.whisper_params.prompt == "Baseten"),
    (f"{BASE}&punctuate=true", lambda o: o.punctuate),
    (f"{BASE}&smart_format=true", lambda o: o.punctuate),
    (BASE, lambda o: not o.punctuate),
    (f"{BASE}&model=nova-3-general", lambda o: o.model == "nova-3-general"),
    (f"{BASE}&tag=a&tag=b", lambda o: o.tags == ("a", "b")),
]


@pytest.mark.parametrize("query,check", MAPPED, ids=[q for q, _ in MAPPED])
def test_deepgram_mapped(query, check):
    assert check(parse_params(query))


def test_every_mapped_parameter_has_a_case():
    covered = {p.split("=")[0] for q, _ in MAPPED for p in q.split("&")}
    assert set(deepgram.MAPPED) <= covered


@pytest.mark.parametrize("name", sorted(set(deepgram.ACCEPTED) - set(deepgram.REFUSED)))
def test_deepgram_accepted_not_applied(name):
    options = parse_params(f"{BASE}&{name}=true")
    assert [w["parameter"] for w in options.warnings] == [name]


@pytest.mark.parametrize("name", sorted(n for n, v in deepgram.REFUSED.items() if v is not None))
def test_deepgram_harmless_value_accepted_other_refused(name):
    parse_params(f"{BASE}&{name}={deepgram.REFUSED[name]}")
    with pytest.raises(ParamError) as exc:
        parse_params(f"{BASE}&{name}=2" if name == "alternatives" else f"{BASE}&{name}=true")
    assert exc.value.param == name and name in str(exc.value)


REFUSED_QUERIES = [
    (f"{BASE}&diarize_model=v1", "diarize_model"),
    (f"{BASE}&search=foo", "search"),
    (f"{BASE}&replace=a:b", "replace"),
    (f"{BASE}&callback=https://x", "callback"),
    ("encoding=opus", "encoding"),
    ("encoding=flac", "encoding"),
    ("sample_rate=16000", "encoding"),  # no encoding: containerized audio is not decoded
    (f"{BASE}&channels=2", "channels"),  # without multichannel
    (f"{BASE}&channels=2&multichannel=false", "channels"),  # said explicitly: the same refusal, not a default
    (f"{BASE}&sample_rate=4000", "sample_rate"),
    (f"{BASE}&endpointing=soon", "endpointing"),
    (f"{BASE}&interim_results=maybe", "interim_results"),
    (f"{BASE}&no_such_option=1", "no_such_option"),
]


@pytest.mark.parametrize("query,param", REFUSED_QUERIES, ids=[q for q, _ in REFUSED_QUERIES])
def test_deepgram_refused(query, param):
    with pytest.raises(ParamError) as exc:
        parse_params(query)
    assert exc.value.param == param


def test_deepgram_handshake_error_shape():
    from whisper_stream.protocols import handshake

    status, body, headers = handshake("/v1/listen?encoding=linear16&diarize=true", runtime())
    assert (
        status == 400 and json.loads(body)["err_code"] == "INVALID_QUERY_PARAMETER" and "dg-error" in headers
    )
    assert handshake("/v1/listen?encoding=linear16", runtime()) is None
    assert handshake("/v1/realtime?intent=conversation", runtime())[0] == 400
    assert handshake("/v1/realtime?intent=transcription", runtime()) is None


@pytest.mark.parametrize(
    "query", ["language=日本", "language=%E6%97%A5%E6%9C%AC", "model=\u00e9\r\nx&diarize=true"]
)
def test_deepgram_refusal_header_is_ascii_on_one_line_whatever_the_input(query):
    from whisper_stream.protocols import handshake

    status, body, headers = handshake(f"/v1/listen?encoding=linear16&{query}", runtime())
    assert status == 400 and json.loads(body)["err_code"] == "INVALID_QUERY_PARAMETER"
    value = headers["dg-error"]
    assert value.isascii() and value.isprintable() and len(value) <= 200, value


def dg_run(query, audio, finalize=False):
    proto = deepgram.DeepgramProtocol(parse_params(query), runtime())
    outs = on_frame(proto, pcm(audio), 0.0)
    if finalize:
        outs += on_frame(proto, json.dumps({"type": "Finalize"}), 0.0)
    wire = []
    for session, action in outs:
        if isinstance(action, Transcribe):
            result = fake_result(action.request, text="Hello, world.")
            wire += wire_of(proto, answered(session, action.request_id, result))
        else:
            wire += wire_of(proto, [(session, action)])
    return proto, wire


def test_deepgram_results_shape_finalize_and_close_stream():
    proto, wire = dg_run(f"{BASE}&vad_events=true&punctuate=false", tone(1.0), finalize=True)
    assert [m["type"] for m in wire] == ["SpeechStarted", "Results"]
    results = wire[1]
    assert results["is_final"] and results["from_finalize"] and not results["speech_final"]
    assert results["channel"]["alternatives"][0]["transcript"] == "hello world"
    assert results["channel_index"] == [0, 1]
    outs = on_frame(proto, json.dumps({"type": "CloseStream"}), 0.0)
    (finished,) = [(s, a) for s, a in outs if type(a).__name__ == "Finished"]
    metadata, close = proto.render(*finished)
    assert metadata["type"] == "Metadata" and close.code == 1000 and proto.finished


def test_deepgram_finalize_while_the_endpoint_final_decodes_is_answered_by_that_final():
    """No empty from_finalize result overtakes the transcript still on its way (pipecat ends the turn on
    from_finalize): the outstanding final answers the flush."""
    proto = deepgram.DeepgramProtocol(parse_params(BASE), runtime())
    outs = on_frame(proto, pcm(np.concatenate([tone(1.0), silence(1.0)])), 0.0)  # the endpoint fired
    (final,) = [a for s, a in outs if isinstance(a, Transcribe)]
    assert wire_of(proto, on_frame(proto, json.dumps({"type": "Finalize"}), 0.0)) == []  # nothing ahead of it
    result = fake_result(final.request, text="Hello.")
    (results,) = wire_of(proto, answered(proto.sessions[0], final.request_id, result))
    assert results["channel"]["alternatives"][0]["transcript"] == "hello"  # punctuate is off by default
    assert results["from_finalize"] and results["speech_final"] and results["is_final"]


def test_deepgram_finalize_without_speech_answers_at_once_and_keepalive_is_silent():
    proto, wire = dg_run(BASE, silence(0.5), finalize=True)
    assert (
        len(wire) == 1
        and wire[0]["from_finalize"]
        and wire[0]["channel"]["alternatives"][0]["transcript"] == ""
    )
    assert on_frame(proto, json.dumps({"type": "KeepAlive"}), 0.0) == []
    error = on_frame(proto, "nonsense", 0.0)[0][1].message
    assert error["type"] == "Error" and error["variant"] == "SchemaError"


def test_deepgram_multichannel_labels_each_channel():
    import numpy as np

    stereo = np.stack([tone(1.0), silence(1.0)], axis=1).reshape(-1)  # speech on the left only
    proto = deepgram.DeepgramProtocol(parse_params(f"{BASE}&channels=2&multichannel=true"), runtime())
    outs = on_frame(proto, pcm(stereo), 0.0) + on_frame(proto, json.dumps({"type": "Finalize"}), 0.0)
    finals = [(s, a) for s, a in outs if isinstance(a, Transcribe)]
    assert len(finals) == 1 and finals[0][0] is proto.sessions[0]
    empty = [m for m in wire_of(proto, outs) if m["type"] == "Results"]
    assert [m["channel_index"] for m in empty] == [[1, 2]]


def test_deepgram_configure_keyterms():
    proto = deepgram.DeepgramProtocol(parse_params(BASE), runtime())
    ok = on_frame(proto, json.dumps({"type": "Configure", "keyterms": ["Whisper"], "language": "de"}), 0.0)
    assert ok[0][1].message == {
        "type": "ConfigureSuccess",
        "request_id": proto.request_id,
        "keyterms": ["Whisper"],
    }
    assert proto.sessions[0].config.whisper_params.prompt == "Whisper"
    assert proto.sessions[0].config.whisper_params.audio_language == "de"
    bad = on_frame(proto, json.dumps({"type": "Configure", "keyterms": "x"}), 0.0)
    assert bad[0][1].message["type"] == "ConfigureFailure"


@pytest.mark.parametrize(
    "fields",
    [
        {"features": {"punctuate": "false"}},  # was punctuation on: bool("false")
        {"features": {"punctuate": [0]}},
        {"endpointing": "500"},
        {"endpointing": None},
        {"endpointing": float("inf")},  # JSON's Infinity
        {"endpointing": True},
        {"endpointing": 10_001},
    ],
    ids=repr,
)
def test_deepgram_configure_refuses_what_is_not_its_type_instead_of_coercing(fields):
    proto = deepgram.DeepgramProtocol(parse_params(f"{BASE}&punctuate=false"), runtime())
    before = (proto.options, proto.sessions[0].config)
    (out,) = on_frame(proto, json.dumps({"type": "Configure", **fields}), 0.0)
    assert out[1].message["type"] == "ConfigureFailure", out[1].message
    assert (proto.options, proto.sessions[0].config) == before  # nothing changed


def test_deepgram_configure_takes_booleans_and_integers():
    proto = deepgram.DeepgramProtocol(parse_params(BASE), runtime())
    (out,) = on_frame(
        proto, json.dumps({"type": "Configure", "features": {"punctuate": True}, "endpointing": 800}), 0.0
    )
    assert out[1].message["type"] == "ConfigureSuccess" and proto.options.punctuate
    assert proto.sessions[0].config.streaming_vad_config.min_silence_duration_ms == 800
    (out,) = on_frame(
        proto, json.dumps({"type": "Configure", "features": {"punctuate": False}, "endpointing": False}), 0.0
    )
    assert out[1].message["type"] == "ConfigureSuccess" and not proto.options.punctuate
    assert not proto.options.endpointing


def oa_update(session):
    proto = openai_realtime.OpenAIRealtimeProtocol(runtime())
    out = on_frame(proto, json.dumps({"type": "session.update", "event_id": "e1", "session": session}), 0.0)
    return proto, out[0][1].message


OA_MAPPED = [
    (
        {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}},
        lambda c: c.streaming_params.sample_rate == 24000,
    ),
    (
        {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
        lambda c: c.streaming_params.encoding == "pcm_mulaw",
    ),
    (
        {"audio": {"input": {"format": {"type": "audio/pcma"}}}},
        lambda c: c.streaming_params.encoding == "pcm_alaw",
    ),
    (
        {"audio": {"input": {"transcription": {"language": "fr"}}}},
        lambda c: c.whisper_params.audio_language == "fr",
    ),
    (
        {"audio": {"input": {"transcription": {"language": None}}}},
        lambda c: c.whisper_params.audio_language == "auto",
    ),
    (
        {"audio": {"input": {"transcription": {"prompt": "Acme"}}}},
        lambda c: c.whisper_params.prompt == "Acme",
    ),
    ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, lambda c: True),
    (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}}},
        lambda c: c.streaming_vad_config.threshold == 0.7,
    ),
    (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 900}}}},
        lambda c: c.streaming_vad_config.min_silence_duration_ms == 900,
    ),
    (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 100}}}},
        lambda c: c.streaming_vad_config.speech_pad_ms == 100,
    ),
    ({"audio": {"input": {"noise_reduction": {"type": "near_field"}}}}, lambda c: True),
    ({"include": ["item.input_audio_transcription.logprobs"]}, lambda c: True),
]


@pytest.mark.parametrize("session,check", OA_MAPPED, ids=[json.dumps(s)[:60] for s, _ in OA_MAPPED])
def test_openai_session_fields_mapped(session, check):
    proto, answer = oa_update({"type": "transcription", **session})
    assert answer["type"] == "session.updated"
    assert check(proto.session.config)


def test_openai_turn_detection_null_means_client_commits():
    proto, answer = oa_update({"type": "transcription", "audio": {"input": {"turn_detection": None}}})
    assert answer["session"]["audio"]["input"]["turn_detection"] is None
    outs = on_frame(
        proto,
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": __import__("base64").b64encode(pcm(tone(1.0))).decode(),
            }
        ),
        0.0,
    )
    assert not any(isinstance(a, Transcribe) and a.kind == "final" for _, a in outs)


OA_REFUSED = [
    ({"type": "realtime"}, "session.type"),
    (
        {"type": "transcription", "audio": {"input": {"format": {"type": "audio/opus"}}}},
        "session.audio.input.format.type",
    ),
    (
        {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 96000}}}},
        "session.audio.input.format.rate",
    ),
    (
        {"type": "transcription", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
        "session.audio.input.turn_detection.type",
    ),
    (
        {
            "type": "transcription",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 3}}},
        },
        "session.audio.input.turn_detection",
    ),
    (
        {"type": "transcription", "audio": {"input": {"transcription": {"delay": "low"}}}},
        "session.audio.input.transcription.delay",
    ),
    ({"type": "transcription", "tools": []}, "session.tools"),
    # wrong types: named like any other bad value, not a server_error and a closed session
    (
        {"type": "transcription", "audio": {"input": {"turn_detection": {"threshold": None}}}},
        "session.audio.input.turn_detection.threshold",
    ),
    (
        {"type": "transcription", "audio": {"input": {"turn_detection": {"prefix_padding_ms": [1]}}}},
        "session.audio.input.turn_detection.prefix_padding_ms",
    ),
    (
        {"type": "transcription", "audio": {"input": {"turn_detection": {"silence_duration_ms": True}}}},
        "session.audio.input.turn_detection.silence_duration_ms",
    ),
    (
        {"type": "transcription", "audio": {"input": {"format": {"type": ["audio/pcm"]}}}},
        "session.audio.input.format.type",
    ),
    # valid JSON, not a number to compute with (1e999 is Infinity): once OverflowError, 1011 and a traceback
    (
        {
            "type": "transcription",
            "audio": {"input": {"turn_detection": {"prefix_padding_ms": float("inf")}}},
        },
        "session.audio.input.turn_detection.prefix_padding_ms",
    ),
    (
        {
            "type": "transcription",
            "audio": {"input": {"turn_detection": {"silence_duration_ms": float("nan")}}},
        },
        "session.audio.input.turn_detection.silence_duration_ms",
    ),
]


@pytest.mark.parametrize("session,param", OA_REFUSED, ids=[p for _, p in OA_REFUSED])
def test_openai_refused_with_error_event(session, param):
    _, answer = oa_update(session)
    assert answer["type"] == "error" and answer["error"]["param"] == param
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["event_id"] == "e1"


def test_openai_a_click_under_server_vad_is_still_committed_and_completed_empty():
    """As OpenAI's server VAD does: every speech_stopped is followed by its item's commit."""
    import base64

    proto = openai_realtime.OpenAIRealtimeProtocol(runtime())
    click = np.concatenate([silence(0.3), tone(0.08), silence(1.5)])  # too short to transcribe
    audio = base64.b64encode(pcm(click)).decode()
    outs = on_frame(proto, json.dumps({"type": "input_audio_buffer.append", "audio": audio}), 0.0)
    assert not [a for _, a in outs if isinstance(a, Transcribe)]
    events = wire_of(proto, outs)
    assert [e["type"] for e in events] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    ]
    assert len({e["item_id"] for e in events}) == 1 and events[-1]["transcript"] == ""


def test_openai_a_client_committed_turn_over_30_s_is_one_item():
    """turn_detection null: the client commits every turn. Whisper's 30 s window cuts a longer turn into
    finals, but the client sees one committed item, after its commit, completed with all the text."""
    import base64

    proto, _ = oa_update({"type": "transcription", "audio": {"input": {"turn_detection": None}}})
    texts = iter(["First part.", "second part."])
    wire, outs = [], []
    data = pcm(tone(66.0))  # 44 s at the session's 24 kHz
    for i in range(0, len(data), 48000):
        audio = base64.b64encode(data[i : i + 48000]).decode()
        outs += on_frame(proto, json.dumps({"type": "input_audio_buffer.append", "audio": audio}), 0.0)
    outs += on_frame(proto, json.dumps({"type": "input_audio_buffer.commit"}), 0.0)
    finals = [(session, a) for session, a in outs if isinstance(a, Transcribe) and a.kind == "final"]
    wire += wire_of(proto, outs)  # sent before any result comes back, as the driver does
    for session, action in finals:
        result = fake_result(action.request, text=next(texts))
        wire += wire_of(proto, answered(session, action.request_id, result))
    assert next(texts, None) is None  # two finals: one cut at 30 s, one at the commit
    committed = [m for m in wire if m["type"] == "input_audio_buffer.committed"]
    completed = [m for m in wire if m["type"].endswith("transcription.completed")]
    deltas = "".join(m["delta"] for m in wire if m["type"].endswith("transcription.delta"))
    assert len(committed) == 1 and len(completed) == 1
    assert completed[0]["item_id"] == committed[0]["item_id"]
    assert completed[0]["transcript"] == "First part. second part." == deltas


def test_openai_events_and_format_fixed_after_audio():
    import base64

    proto = openai_realtime.OpenAIRealtimeProtocol(runtime())
    assert proto.start(0.0)[0][1].message["type"] == "session.created"
    audio = base64.b64encode(pcm(tone(1.0))).decode()
    outs = on_frame(proto, json.dumps({"type": "input_audio_buffer.append", "audio": audio}), 0.0)
    started = wire_of(proto, outs)
    assert started[0]["type"] == "input_audio_buffer.speech_started"
    outs = on_frame(proto, json.dumps({"type": "input_audio_buffer.commit"}), 0.0)
    committed = wire_of(proto, outs)
    assert (
        committed[0]["type"] == "input_audio_buffer.committed"
        and committed[0]["item_id"] == started[0]["item_id"]
    )
    final = next(a for _, a in outs if isinstance(a, Transcribe))
    wire = wire_of(
        proto, answered(proto.session, final.request_id, fake_result(final.request, text="Hi there."))
    )
    assert wire[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert wire[-1]["transcript"] == "Hi there." and wire[-1]["item_id"] == started[0]["item_id"]
    _, answer = oa_update({"type": "transcription"})
    change = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    out = on_frame(proto, json.dumps({"type": "session.update", "session": change}), 0.0)
    assert out[0][1].message["error"]["param"] == "session.audio.input.format"
    cleared = on_frame(proto, json.dumps({"type": "input_audio_buffer.clear"}), 0.0)
    assert cleared[-1][1].message["type"] == "input_audio_buffer.cleared"


@pytest.mark.parametrize(
    "headers,ok",
    [
        ({"Authorization": "Token K"}, True),
        ({"Authorization": "Bearer K"}, True),
        ({"Authorization": "Api-Key K"}, True),
        ({"Authorization": "Token wrong"}, False),
        ({"Sec-WebSocket-Protocol": "token, K"}, True),
        ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.K"}, True),
        ({"Sec-WebSocket-Protocol": "realtime, openai-insecure-api-key.wrong"}, False),
    ],
)
def test_deepgram_and_openai_ways_to_pass_the_key(headers, ok):
    from websockets.datastructures import Headers
    from websockets.http11 import Request

    from whisper_stream.serving.auth import authorized, select_subprotocol

    assert authorized(Request("/v1/listen", Headers(headers)), "K") is ok
    offered = [p.strip() for p in headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    if offered:
        assert select_subprotocol(None, offered) == offered[0]


def test_openai_a_turn_cut_at_30_s_is_one_item_committed_then_completed_once():
    """A 30 s cut, then the turn ends in silence: one item, committed, then completed once with the text of
    its finals (speculative and pause finals are on here as on every protocol)."""
    import base64

    proto = openai_realtime.OpenAIRealtimeProtocol(runtime())
    params = proto.session.config.streaming_params
    assert params.speculative_finals and params.pause_final_after_s > 0
    wire: list[dict] = []

    def carry(outs) -> None:  # what the stream driver does: send, then answer finals as the engine would
        finals = []
        for session, action in outs:
            if isinstance(action, Transcribe) and action.kind != "partial":
                finals.append((session, action))
            else:
                wire.extend(wire_of(proto, [(session, action)]))
        for session, action in finals:
            carry(answered(session, action.request_id, fake_result(action.request, text="words")))

    # at 24 kHz: 0.3 s of silence, 29.5 s of speech (cut at 30 s with its padding, just after it ends), 2 s
    data = pcm(np.concatenate([silence(0.45), tone(44.25), silence(3.0)]))
    for i in range(0, len(data), 9600):
        audio = base64.b64encode(data[i : i + 9600]).decode()
        carry(on_frame(proto, json.dumps({"type": "input_audio_buffer.append", "audio": audio}), 0.0))
    committed = [m["item_id"] for m in wire if m["type"] == "input_audio_buffer.committed"]
    completed = [m["item_id"] for m in wire if m["type"].endswith("transcription.completed")]
    assert len(committed) == 1 and completed == committed  # the cut and the turn's rest: one item
    (done,) = [m for m in wire if m["type"].endswith("transcription.completed")]
    assert done["transcript"] == "words"  # the piece; the rest of the turn was silence (an empty final)
    for item in completed:
        types = [m["type"] for m in wire if m.get("item_id") == item]
        assert types.index("input_audio_buffer.committed") < types.index(
            "conversation.item.input_audio_transcription.completed"
        )
