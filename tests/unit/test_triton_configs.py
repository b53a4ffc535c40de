"""The Triton model repository, checked offline: every config parses as Triton's ModelConfig protobuf (which
rejects unknown fields), and the ensemble's wiring matches the models it chains. Cheap; catches most config
mistakes before a server is started."""

from __future__ import annotations

from pathlib import Path

import pytest

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
MODELS = sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt"))


def load(name: str):  # -> model_config_pb2.ModelConfig
    return text_format.Parse((REPOSITORY / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_repository_has_the_three_models() -> None:
    assert MODELS == ["vad", "whisper", "whisper_ensemble"]


@pytest.mark.parametrize("name", MODELS)
def test_config_parses_and_is_portable(name: str) -> None:
    config = load(name)
    assert config.name == name
    assert (REPOSITORY / name / "1").is_dir()
    kinds = {g.kind for g in config.instance_group}
    # KIND_GPU would not load on the CPU machines; KIND_AUTO/KIND_CPU load everywhere.
    assert model_config_pb2.ModelInstanceGroup.Kind.KIND_GPU not in kinds
    if config.backend == "python":
        assert (REPOSITORY / name / "1" / "model.py").is_file()
        assert config.HasField("dynamic_batching") and config.max_batch_size > 1
        ragged = [i.name for i in config.input if list(i.dims) == [-1]]
        assert ragged and all(i.allow_ragged_batch for i in config.input if i.name in ragged)


def test_whisper_chooses_its_engine_by_parameter() -> None:
    parameters = {k: v.string_value for k, v in load("whisper").parameters.items()}
    assert parameters["engine"] in ("auto", "ctranslate2", "tensorrt_llm")
    assert {"model", "compute_type", "cpu_threads", "engine_dir"} <= parameters.keys()
    kinds = {g.kind for g in load("whisper").instance_group}
    assert kinds == {model_config_pb2.ModelInstanceGroup.Kind.KIND_AUTO}


def test_ensemble_wiring_matches_the_models() -> None:
    ensemble = load("whisper_ensemble")
    assert ensemble.platform == "ensemble"
    produced = {i.name for i in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = load(step.model_name)
        assert ensemble.max_batch_size <= model.max_batch_size
        model_inputs = {i.name: i for i in model.input}
        model_outputs = {o.name for o in model.output}
        assert set(step.input_map) == set(model_inputs), step.model_name
        assert set(step.output_map) <= model_outputs, step.model_name
        for source in step.input_map.values():
            assert source in produced, f"{step.model_name} reads {source} before any step produces it"
        produced |= set(step.output_map.values())
    assert {o.name for o in ensemble.output} <= produced
    assert {o.name for o in ensemble.output} >= {"RESULT", "TEXT", "LANGUAGE", "LANGUAGE_PROB"}
    assert {i.name for i in ensemble.input} == {"AUDIO", "OPTIONS", "VAD_OPTIONS"}


def test_ports_come_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_launcher import Ports

    for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert Ports.from_env() == Ports(8010, 8011, 8012)
    monkeypatch.setenv("TRITON_HTTP_PORT", "9010")
    monkeypatch.setenv("TRITON_GRPC_PORT", "9011")
    monkeypatch.setenv("TRITON_METRICS_PORT", "9012")
    assert Ports.from_env() == Ports(9010, 9011, 9012)


def test_gpu_command_serves_this_repository_on_loopback_ports() -> None:
    from triton_launcher import Ports, docker_command

    command = docker_command(Ports(9010, 9011, 9012), image="img:tag", project=Path("/src"))
    assert command[:2] == ["docker", "run"] and "--gpus" in command and "img:tag" in command
    for port in (9010, 9011, 9012):
        assert f"127.0.0.1:{port}:{port}" in command
    assert "/src:/workspace/whisper-stream" in command
    assert "--model-repository=/workspace/whisper-stream/model_repository" in command
