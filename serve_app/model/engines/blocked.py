"""A voice's decoder on onnxruntime's channel-blocked (NCHWc) convolutions: the frame part cut
where the decoder starts (`split`), its 1-D convolutions made 1 x k 2-D ones (`decoder_in_2d`),
which onnxruntime's layout transformer hands to those kernels, and its tensors kept blocked
from one convolution to the next (`kept_blocked`): the element-wise operations between them
(LeakyRelu, the residual Adds, the residual blocks' average) do not care about the layout, but
the transformer keeps a tensor blocked only through Relu, Sigmoid, Tanh, Add, Mul and Concat
and would reorder it out and back in around each (engines.frames says what it saves)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

DECODER = "/dec/"  # piper's exports name the decoder's nodes after its module
NCHWC = "com.microsoft.nchwc"  # onnxruntime's channel-blocked operators
# Element-wise operators a decoder may hold between its convolutions: any layout will do.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid"}
# Channel counts a blocked tensor may have to stay blocked through element-wise operations:
# a multiple of every block size (8 with AVX2, 16 with AVX-512), so it holds no padding.
BLOCK_MULTIPLE = 16


def split(back: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto] | None:
    """The frame part cut where its decoder starts: (flow, decoder), each reading the first
    tensor with frames first; None if no decoder is named as piper's exports name it."""
    graph = back.graph
    decoder = [n for n in graph.node if n.name.startswith(DECODER)]
    if not decoder:
        return None
    made = {out for node in decoder for out in node.output}
    constants = {i.name for i in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    enters = list(
        dict.fromkeys(
            name
            for node in decoder
            for name in node.input
            if name and name not in made and name not in constants
        )
    )
    inputs = [i.name for i in graph.input]
    from_flow = [name for name in enters if name not in inputs]
    if len(from_flow) != 1:  # the flow's output, then anything the phoneme part carried
        return None
    # NOTE: declared a rank-3 float tensor of the decoder's first channels (as z_p is), so
    # onnxruntime knows its convolutions' input rank when it lays them out.
    first = next((n for n in decoder if from_flow[0] in n.input and n.op_type == "Conv"), None)
    weights = {i.name: i for i in graph.initializer}
    if first is None or first.input[1] not in weights:
        return None
    weight = weights[first.input[1]]
    back = onnx.ModelProto.FromString(back.SerializeToString())
    kept = [v for v in back.graph.value_info if v.name != from_flow[0]]
    del back.graph.value_info[:]
    back.graph.value_info.extend(kept)
    back.graph.value_info.append(
        helper.make_tensor_value_info(
            from_flow[0], onnx.TensorProto.FLOAT, ["batch", weight.dims[1], "frames"]
        )
    )
    extractor = Extractor(back)
    flow = extractor.extract_model(inputs, from_flow)
    decoder_model = extractor.extract_model(
        from_flow + [n for n in enters if n in inputs], [o.name for o in graph.output]
    )
    return flow, decoder_model


def decoder_in_2d(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `model` whose decoder nodes (named `DECODER`) compute on (N, C, 1, T): every
    convolution a 1 x k 2-D one, every tensor entering them unsqueezed, every one leaving them
    squeezed. None where the decoder holds an operator this cannot carry over (any but
    convolutions, `ELEMENTWISE` ones, and scalar constants)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    scalars = {name for name, t in inits.items() if int(np.prod(t.dims)) == 1} | {
        node.output[0]
        for node in graph.node
        if node.op_type == "Constant"
        and all(int(np.prod(a.t.dims)) == 1 for a in node.attribute if a.name == "value")
    }
    decoder = [n for n in graph.node if n.name.startswith(DECODER)]
    made = {out for node in decoder for out in node.output}
    for node in decoder:
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = inits.get(node.input[1])
            if weight is None or len(weight.dims) != 3:
                return None
        elif node.op_type == "Constant":
            if node.output[0] not in scalars:
                return None
        elif node.op_type not in ELEMENTWISE:
            return None
        elif any(i in inits and i not in scalars for i in node.input):
            return None  # NOTE: a constant tensor broadcasts by rank: (C, 1) is not (C, 1, 1)
    if any(out.name in made for out in graph.output):
        return None  # NOTE: piper's decoder ends in a reshape of its own; a bare one: left as is
    axis = "chorus_axis_2"
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axis))
    constant = set(inits) | scalars
    widened: dict[str, str] = {}
    converted: set[str] = set()
    nodes = []
    for node in graph.node:
        inside = node.name.startswith(DECODER)
        for k, name in enumerate(node.input):
            if not name or name in constant or (name in made) != (not inside):
                continue  # NOTE: inside, tensors made outside; outside, tensors made inside
            if name not in widened:
                op, suffix = ("Unsqueeze", "2d") if inside else ("Squeeze", "1d")
                widened[name] = f"{name}__{suffix}"
                nodes.append(helper.make_node(op, [name, axis], [widened[name]]))
            node.input[k] = widened[name]
        if inside and node.op_type in ("Conv", "ConvTranspose"):
            _conv_in_2d(node, inits, converted)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    # Shapes inferred for the 1-D decoder no longer hold.
    kept = [v for v in graph.value_info if v.name not in made]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return model


def _conv_in_2d(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], done: set[str]) -> None:
    weight = inits[node.input[1]]
    if weight.name not in done:
        arr = numpy_helper.to_array(weight)
        weight.CopyFrom(numpy_helper.from_array(arr[:, :, None, :], weight.name))
        done.add(weight.name)
    for attr in node.attribute:
        if attr.name in ("kernel_shape", "dilations", "strides"):
            values = [1, *attr.ints]
        elif attr.name == "output_padding":
            values = [0, *attr.ints]
        elif attr.name == "pads":
            values = [0, attr.ints[0], 0, attr.ints[1]]
        else:
            continue
        del attr.ints[:]
        attr.ints.extend(values)


def kept_blocked(model: onnx.ModelProto, framed: str) -> onnx.ModelProto:
    """`model` as onnxruntime optimized it, with its blocked tensors kept blocked through the
    element-wise operations between convolutions (module docstring): each such operation runs
    on the blocked tensors, an input that is not blocked is reordered in once, and a reorder
    back in of what was blocked is the blocked tensor itself. Reorders out are made only
    where a plain tensor is still read (unused nodes are dropped).

    Only operations whose inputs all have the frame axis of the input `framed` (or are
    scalars) are moved: a blocked tensor broadcast against another shape (a speaker's
    conditioning, one value per channel) would meet it in the wrong order."""
    graph = model.graph
    scalars = {i.name for i in graph.initializer if int(np.prod(i.dims)) == 1}
    with_frames = {framed}
    for node in graph.node:
        if any(i in with_frames for i in node.input):
            with_frames.update(node.output)
    blocked: dict[str, tuple[str, int]] = {}  # plain tensor -> (its blocked twin, channels)
    reordered: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def reorder_in(name: str) -> str:
        if name not in reordered:
            reordered[name] = f"{name}__blocked"
            nodes.append(helper.make_node("ReorderInput", [name], [reordered[name]], domain=NCHWC))
        return reordered[name]

    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.domain == NCHWC and node.op_type == "ReorderOutput":
            channels = attrs.get("channels", 0)
            if channels % BLOCK_MULTIPLE == 0 and not attrs.get("channels_last", 0):
                blocked[node.output[0]] = (node.input[0], channels)
        elif (
            node.domain == NCHWC
            and node.op_type == "ReorderInput"
            and node.input[0] in blocked
            and not attrs.get("channels_last", 0)
        ):
            twin = blocked[node.input[0]][0]
            node = helper.make_node("Identity", [twin], [node.output[0]])
        elif node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE:
            tensors = [i for i in node.input if i not in scalars]
            known = [blocked[i] for i in tensors if i in blocked]
            if known and all(i in with_frames for i in tensors):
                channels = known[0][1]
                feed = [
                    i if i in scalars else blocked[i][0] if i in blocked else reorder_in(i)
                    for i in node.input
                ]
                twin = f"{node.output[0]}__blocked"
                nodes.append(helper.make_node(node.op_type, feed, [twin], **attrs))
                blocked[node.output[0]] = (twin, channels)
                node = helper.make_node(
                    "ReorderOutput", [twin], [node.output[0]], domain=NCHWC, channels=channels
                )
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    return model


def _drop_unused(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def blocked_model(model: onnx.ModelProto, options: Callable[[], Any]) -> onnx.ModelProto:
    """`model` (its decoder in 2-D) as onnxruntime optimizes it for this machine (its block
    size), with its blocked tensors kept blocked (`kept_blocked`)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="chorus-decoder-") as folder:
        path = Path(folder) / "optimized.onnx"
        first = options()
        first.optimized_model_filepath = str(path)
        first.log_severity_level = 3  # its warning: the file is for this machine only
        ort.InferenceSession(model.SerializeToString(), first, ["CPUExecutionProvider"])
        optimized = onnx.load(str(path))
    return kept_blocked(optimized, model.graph.input[0].name)


def not_again(options: Any) -> Any:
    """`options` for a model `blocked_model` made: not optimized again (it is already)."""
    import onnxruntime as ort

    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options
