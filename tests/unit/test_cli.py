"""`whisper-stream serve` flags come from ServerSettings: each with its help, default and env variable."""

from __future__ import annotations

import argparse

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from client.protocol import refusal
from whisper_stream.__main__ import add_settings_flags, build_settings
from whisper_stream.settings import ServerSettings


def _help() -> str:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser)
    return " ".join(parser.format_help().split())


def test_every_setting_is_a_flag_with_help_default_and_environment_variable():
    text = _help()
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert f"WHISPER_STREAM_{name.upper()}" in text, name
        assert field.description and " ".join(field.description.split()) in text, name
        assert f"default: {field.default}" in text, name
    # the two settings that had no flag before the flags were generated
    assert build_settings(["serve", "--partial-max-wait-s", "2.5"]).partial_max_wait_s == 2.5
    assert build_settings(["serve", "--triton-max-inflight", "3"]).triton_max_inflight == 3


def test_defaults_then_environment_then_flags(monkeypatch):
    assert build_settings(["serve"]).port == 8000
    monkeypatch.setenv("WHISPER_STREAM_PORT", "9001")
    monkeypatch.setenv("WHISPER_STREAM_FULL_CONTEXT", "true")
    monkeypatch.setenv("WHISPER_STREAM_LOG_LEVEL", "debug")
    s = build_settings(["serve"])
    assert (s.port, s.full_context, s.log_level) == (9001, True, "DEBUG")
    s = build_settings(["serve", "--port", "9002", "--no-full-context"])
    assert (s.port, s.full_context) == (9002, False)


@pytest.mark.parametrize(
    "argv, env, needle",
    [
        (["serve", "--port", "70000"], {}, "--port (WHISPER_STREAM_PORT)"),
        (["serve"], {"WHISPER_STREAM_MAX_STREAMS": "0"}, "--max-streams (WHISPER_STREAM_MAX_STREAMS)"),
        (["serve", "--engine", "onnx"], {}, "invalid choice"),
    ],
)
def test_invalid_settings_exit_2_with_one_line(argv, env, needle, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        build_settings(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_a_refused_handshake_shows_the_servers_explanation():
    response = Response(401, "Unauthorized", Headers(), b"missing or wrong API key\n")
    line = refusal(InvalidStatus(response))
    assert line == "the server refused the connection: HTTP 401: missing or wrong API key (check --api-key)"
