"""Silero with its convolutions unfolded into GEMMs (vad_graph.py): the same numbers as the original on real
speech, bit-identical alone and in any batch, used by default, and never used when it would differ."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from client.kit.speech import load_audio
from whisper_stream.dsp import vad_graph
from whisper_stream.dsp.vad import FRAME, SileroModel, default_model_path, to_frames


@pytest.fixture(scope="module")
def original() -> SileroModel:
    return SileroModel(unfold=False)


@pytest.fixture(scope="module")
def unfolded() -> SileroModel:
    model = SileroModel()
    assert model.graph == "unfolded"  # else the comparisons below would compare the original with itself
    return model


def test_the_default_install_uses_the_unfolded_graph(unfolded, original):
    assert (unfolded.graph, original.graph) == ("unfolded", "original")


def test_unfolded_probabilities_are_the_originals_on_every_recording(speech, unfolded, original):
    for name, utterance in speech.items():  # every recording in data/
        audio = load_audio(utterance.path)
        want, got = original.probabilities(audio), unfolded.probabilities(audio)
        assert len(got) == len(want) > 30, name
        assert float(np.max(np.abs(got - want))) < 1e-4, name
        assert np.array_equal(got > 0.5, want > 0.5), name  # the same frames are speech


def test_a_stream_gets_the_same_bits_alone_and_in_any_batch(speech, unfolded):
    """A stream's VAD does not depend on its neighbours (issue #11, item 1), whatever the batch size."""
    frames = to_frames(load_audio(speech["ls_1089-134686-0001"].path))[:40]
    alone = unfolded.stream()(frames)
    rng = np.random.default_rng(3)
    for size in (2, 5, 17, 64):
        streams = [unfolded.stream() for _ in range(size)]
        neighbours = [
            (rng.standard_normal((40, FRAME)) * rng.uniform(1e-3, 0.5)).astype(np.float32)
            for _ in range(size - 1)
        ]
        inputs = [frames, *neighbours]
        assert np.array_equal(unfolded.run_streams(streams, inputs)[0], alone), size


def conv_model(
    channels: int, kernel: int, stride: int, pads: list[int], length: int, bias: bool = True, **attrs: object
) -> bytes:
    """A model of one 1-D convolution (4 output channels) over [batch, channels, length]."""
    rng = np.random.default_rng(kernel * 10 + stride)
    group = int(attrs.get("group", 1))  # type: ignore[call-overload]
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, channels // group, kernel)).astype(np.float32), "w")
    ]
    if bias:
        weights.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
    conv = helper.make_node(
        "Conv", ["x", "w", "b"][: len(weights) + 1], ["y"], name="conv", strides=[stride], pads=pads, **attrs
    )
    graph = helper.make_graph(
        [conv],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]).SerializeToString()


@pytest.mark.parametrize(
    ("kernel", "stride", "pads", "length"),
    [
        (3, 1, [1, 1], 4),  # Silero's encoder layers
        (3, 2, [1, 1], 4),
        (3, 2, [1, 1], 2),
        (256, 128, [0, 0], 640),  # its STFT
        (1, 1, [0, 0], 1),  # its decoder
        (2, 3, [0, 0], 10),  # a stride longer than the kernel: trailing input no output reads
        (5, 2, [2, 0], 9),
        (4, 4, [3, 0], 2),  # a left pad as wide as most of the window
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_unfolding_computes_the_convolution(tmp_path, kernel, stride, pads, length, bias):
    path = tmp_path / "conv.onnx"
    path.write_bytes(conv_model(6, kernel, stride, pads, length, bias=bias))
    x = np.random.default_rng(0).standard_normal((3, 6, length)).astype(np.float32)
    rewritten = vad_graph.conv_as_matmul(path, {"x": x})
    assert "Conv" not in {n.op_type for n in onnx.load_from_string(rewritten).graph.node}
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = ort.InferenceSession(rewritten).run(None, {"x": x[:2]})[0]  # any batch size
    np.testing.assert_allclose(got, want[:2], atol=1e-4)


@pytest.mark.parametrize(
    ("kernel", "stride", "pads", "length", "attrs", "why"),
    [
        (3, 1, [1, 1], 4, {"group": 2}, "grouped"),
        (3, 1, [1, 1], 4, {"dilations": [2]}, "dilated"),
        (3, 2, [0, 0], 4, {"auto_pad": "SAME_UPPER"}, "auto_pad"),
        (4, 4, [6, 0], 1, {}, "padding wider"),  # the one output step reads only the left pad
    ],
)
def test_a_convolution_it_cannot_unfold_is_refused(tmp_path, kernel, stride, pads, length, attrs, why):
    path = tmp_path / "refused.onnx"
    model = conv_model(6, kernel, stride, pads, length, **attrs)
    if "auto_pad" in attrs:  # explicit pads and auto_pad together are invalid: drop the pads
        proto = onnx.load_from_string(model)
        conv = proto.graph.node[0]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend(kept)
        model = proto.SerializeToString()
    path.write_bytes(model)
    with pytest.raises(ValueError, match=why):
        vad_graph.conv_as_matmul(path, {"x": np.zeros((1, 6, length), np.float32)})


def patched_rewrite(change):
    """`conv_as_matmul` with `change(weights)` applied to the decoder's unfolded weights."""
    rewrite = vad_graph.conv_as_matmul

    def rewritten(path, feeds):
        model = onnx.load_from_string(rewrite(path, feeds))
        then = next(a.g for a in model.graph.node[2].attribute if a.name == "then_branch")
        node = [n for n in then.node if n.output[0].endswith("/unfolded/weight")][-1]
        weight = numpy_helper.to_array(node.attribute[0].t).copy()
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(change(weight)))
        return model.SerializeToString()

    return rewritten


def with_nan(weight: np.ndarray) -> np.ndarray:
    weight.flat[0] = np.nan
    return weight


@pytest.mark.parametrize("change", [lambda w: w * 1.01, with_nan], ids=["1 % off", "NaN"])
def test_an_unfolded_graph_that_differs_is_not_used(monkeypatch, caplog, change):
    monkeypatch.setattr(vad_graph, "conv_as_matmul", patched_rewrite(change))
    with caplog.at_level(logging.WARNING):
        model = SileroModel()
    assert model.graph == "original"
    assert "differs" in caplog.text
    assert np.all(np.isfinite(model.probabilities(np.zeros(FRAME * 3, np.float32))))


def test_without_the_onnx_package_the_original_graph_serves(monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with caplog.at_level(logging.WARNING):
        model = SileroModel(default_model_path())
    assert model.graph == "original"
    assert "ModuleNotFoundError" in caplog.text or "ImportError" in caplog.text
    assert len(model.probabilities(np.zeros(FRAME * 3, np.float32))) == 3
