"""Where a Piper voice graph is cut: at the latent noise, between its phoneme part (text
encoder, duration predictor, alignment) and its frame part (flow, decoder).

Piper's export draws its noise inside the graph (two RandomNormalLike nodes). `find_cut`
names the tensors that cross between the two parts, so that the noise can be drawn outside
the graph (`engines.noise`) and fed in; `declare` gives the crossing tensors the types that
onnx's extractor needs to cut there.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class Cut:
    """Where a voice graph is cut: the tensors that cross between its two parts."""

    duration_noise: str | None  # the duration predictor's noise (None: no stochastic one)
    m_p: str  # each frame's prior mean (1, C, T)
    logs_p: str  # and log scale
    z_p: str  # the flow's input: m_p + noise * exp(logs_p) * noise_scale
    carried: tuple[str, ...]  # what else the frame part reads from the phoneme part
    output: str


def find_cut(graph: onnx.GraphProto) -> Cut:
    """The cut of a graph exported the way piper exports a VITS voice; ValueError if the
    latent noise is not drawn and added there the way that export does."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto:
        found = consumers[tensor]
        if len(found) != 1 or found[0].op_type != op_type:
            raise ValueError(f"{tensor} is not read by one {op_type} as in piper's export")
        return found[0]

    normals = [n for n in graph.node if n.op_type == "RandomNormalLike"]
    if not 1 <= len(normals) <= 2:
        raise ValueError(f"{len(normals)} RandomNormalLike nodes (piper's export has 1 or 2)")
    latent = normals[-1]
    m_p = latent.input[0]
    scaled = only_consumer(latent.output[0], "Mul")  # noise * exp(logs_p)
    exp = producer.get(next(t for t in scaled.input if t != latent.output[0]))
    if exp is None or exp.op_type != "Exp":
        raise ValueError("the latent noise is not scaled by exp(logs_p)")
    add = only_consumer(only_consumer(scaled.output[0], "Mul").output[0], "Add")
    if m_p not in add.input:
        raise ValueError("the latent noise is not added to the prior mean")
    z_p = add.output[0]
    frame_part = _downstream(z_p, consumers)
    made_there = {out for node in frame_part for out in node.output}
    constants = {i.name for i in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    carried = dict.fromkeys(
        name
        for node in frame_part
        for name in node.input
        if name and name not in made_there and name not in constants and name != z_p
    )
    (output,) = (o.name for o in graph.output)
    duration = normals[0].output[0] if len(normals) == 2 else None
    return Cut(duration, m_p, exp.input[0], z_p, tuple(carried), output)


def _downstream(tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """Every node that reads `tensor`, directly or through other nodes."""
    seen: dict[int, onnx.NodeProto] = {}
    todo = [tensor]
    while todo:
        for node in consumers[todo.pop()]:
            if id(node) not in seen:
                seen[id(node)] = node
                todo.extend(node.output)
    return list(seen.values())


def declare(graph: onnx.GraphProto, names: list[str | None]) -> None:
    """Declare the cut's tensors as float tensors where the export left them undeclared (the
    extractor needs each one's type; piper's exports run shape inference, torch's need not)."""
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)}
    graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in names
        if name and name not in known
    )
