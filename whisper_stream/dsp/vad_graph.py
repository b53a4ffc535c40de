"""Silero's 1-D convolutions rewritten as one matrix product each, so a batch of streams costs a third.

ONNX Runtime's CPU convolution runs one batch item at a time, and Silero's are tiny (4 time steps or fewer
after its STFT): a batch of 40 streams is 40 small GEMMs per layer, 58 us a frame on the 2-core machine.
Unfolded (im2col) and multiplied as [batch x time, kernel x channels] @ [kernel x channels, out], each layer
is one GEMM over every stream and step: 18-19 us a frame, the same probabilities to ~1e-5, and, like the
original, bit-identical whether a stream runs alone or in any batch (`tests/unit/test_vad_graph.py`).

The rewrite is static: it reads the shapes each convolution sees for one input shape (from an ONNX Runtime
profile of a probe run) and serves exactly that shape, which is all `SileroModel` feeds. `SileroModel`
checks the rewritten graph against the original before it uses it, and keeps the original when the `onnx`
package is missing or anything differs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def conv_input_shapes(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """The input shape of every convolution that runs on `feeds`, by node name (one profiled call)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "probe")
        opts.log_severity_level = 3
        session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    suffix = "_kernel_time"  # (not the `_fence_before/after` events some builds record)
    return {
        e["name"].removesuffix(suffix): e["args"]["input_type_shape"][0]["float"]
        for e in events
        if e.get("cat") == "Node"
        and e["name"].endswith(suffix)
        and e["args"].get("op_name") in ("Conv", "FusedConv")
    }


def conv_as_matmul(path: str | os.PathLike[str], feeds: dict[str, np.ndarray]) -> bytes:
    """The model at `path` with each convolution that `feeds` runs replaced by its unfolded GEMM; raises
    ValueError on a convolution it cannot rewrite (grouped, dilated, 2-D, computed weights, `auto_pad` SAME_*,
    padding wider than the window it reads)."""
    import onnx

    data = Path(path).read_bytes()
    shapes = conv_input_shapes(data, feeds)
    model = onnx.load_from_string(data)
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    rewritten = _rewrite_graph(model.graph, shapes, weights)
    if rewritten != len(shapes):
        raise ValueError(f"rewrote {rewritten} of the {len(shapes)} convolutions that run")
    return model.SerializeToString()


def _rewrite_graph(graph: Any, shapes: dict[str, list[int]], weights: dict[str, np.ndarray]) -> int:
    """Rewrite in place, subgraphs (If branches) included; returns how many convolutions were rewritten."""
    import onnx

    weights = weights | {
        n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant" and n.attribute[0].name == "value"
    }
    count, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _rewrite_graph(attr.g, shapes, weights)
        if node.op_type == "Conv" and node.name in shapes:
            nodes += _unfolded(node, shapes[node.name], weights)
            count += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _ints(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _unfolded(node: Any, shape: list[int], weights: dict[str, np.ndarray]) -> list[Any]:
    """Conv [B, C, T] -> Transpose [B, T, C] -> Pad -> Reshape into stride-long chunks [B, T', s*C] ->
    m shifted slices concatenated [B, T_out, m*s*C] -> MatMul -> Add bias -> Transpose [B, out, T_out].

    A kernel K is widened to m*s (the next multiple of the stride s) with zero weights, so each output step
    is m whole chunks; the extra input positions it reads meet only those zeros."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.input[1] not in weights or len(shape) != 3:
        raise ValueError(f"{node.name}: not a 1-D convolution with constant weights")
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1])):
        raise ValueError(f"{node.name}: grouped or dilated")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise ValueError(f"{node.name}: auto_pad {attrs['auto_pad'].decode()}")
    w = weights[node.input[1]]
    c_out, c_in, k = w.shape
    (s,) = attrs.get("strides", [1])
    left, right = attrs.get("pads", [0, 0])
    t_out = (shape[2] + left + right - k) // s + 1
    m = -(-k // s)
    chunks = t_out + m - 1
    right += chunks * s - (shape[2] + left + right)  # < 0: input positions no output step reads
    if t_out < 1 or shape[2] + right < 0:
        raise ValueError(f"{node.name}: padding wider than the window it reads")
    unfolded = np.zeros((m * s, c_in, c_out), dtype=np.float32)
    unfolded[:k] = w.transpose(2, 1, 0)

    p = node.name + "/unfolded"
    out: list[Any] = []

    def const(name: str, value: Any) -> str:
        tensor = numpy_helper.from_array(value, p + name)
        out.append(helper.make_node("Constant", [], [p + name], value=tensor))
        return p + name

    def take(x: str, start: int, stop: int, name: str) -> str:  # x[:, start:stop]
        bounds = [const(f"{name}_from", _ints([start])), const(f"{name}_to", _ints([stop])), axis]
        return op("Slice", [x, *bounds], name)

    def op(kind: str, inputs: list[str], name: str, **kwargs: Any) -> str:
        out.append(helper.make_node(kind, inputs, [p + name], name=p + name, **kwargs))
        return p + name

    axis = const("/axis", _ints([1])) if right < 0 or m > 1 else ""
    x = op("Transpose", [node.input[0]], "/time_major", perm=[0, 2, 1])
    if right < 0:
        x, right = take(x, 0, shape[2] + right, "/kept"), 0
    if left or right:
        x = op("Pad", [x, const("/pads", _ints([0, left, 0, 0, right, 0]))], "/padded")
    x = op("Reshape", [x, const("/chunk_shape", _ints([0, chunks, s * c_in]))], "/chunks")
    if m > 1:
        x = op("Concat", [take(x, i, i + t_out, f"/shift{i}") for i in range(m)], "/columns", axis=2)
    x = op("MatMul", [x, const("/weight", unfolded.reshape(m * s * c_in, c_out))], "/product")
    if len(node.input) > 2 and node.input[2]:
        x = op("Add", [x, node.input[2]], "/biased")
    out.append(
        helper.make_node("Transpose", [x], [node.output[0]], name=p + "/channels_first", perm=[0, 2, 1])
    )
    return out
