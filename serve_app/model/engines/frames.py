"""A voice's frame part in onnxruntime (the flow, then the decoder: about 85% of a sentence's
work on CPU), run the cheap way for many items and the quick way for a lone one, with the
same samples either way, to the bit.

Many items: every item's flow and decoder run at one thread, one item per core. The decoder
runs on onnxruntime's channel-blocked (NCHWc) convolutions: its 1-D convolutions are made
1 x k 2-D ones (`decoder_in_2d`), which onnxruntime's layout transformer hands to those
kernels, and its tensors then stay blocked from one convolution to the next
(`kept_blocked`): the element-wise operations between them (LeakyRelu, the residual Adds,
the residual blocks' average) do not care about the layout, but the transformer keeps a
tensor blocked only through Relu, Sigmoid, Tanh, Add, Mul and Concat and would reorder it out
and back in around each. Measured here at one thread, 300 frames: 214 against 249 ms for
the frame part as the voice file has it; two items side by side on two cores 2580-2700
against 2270-2340 frames/s (docs/performance.md).

A lone item: its flow, then its decoder, split along time into as many pieces as cores are
free, each piece run at one thread with `halo` frames of its neighbours on either side. A
convolution's output reaches only so far into its input, so with a wide enough halo every
sample kept is computed from the same inputs with the same arithmetic as in the whole: the
same samples. The halos are found after load (`find_halo`: the narrowest that gives the
whole's outputs to the bit at several lengths); until then, or if none does, a lone item runs
whole at one thread too. No piece is shorter than `MIN_PIECE_FRAMES`: onnxruntime's matrix
products sum a thread's share of 64 columns or fewer in other blocks than a longer one's.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

logger = logging.getLogger("ray.serve.chorus.engine")

DECODER = "/dec/"  # piper's exports name the decoder's nodes after its module
NCHWC = "com.microsoft.nchwc"  # onnxruntime's channel-blocked operators
# Element-wise operators a decoder may hold between its convolutions: any layout will do.
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "LeakyRelu", "Relu", "Tanh", "Sigmoid"}
# Channel counts a blocked tensor may have to stay blocked through element-wise operations:
# a multiple of every block size (8 with AVX2, 16 with AVX-512), so it holds no padding.
BLOCK_MULTIPLE = 16
HALOS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # tried in turn, frames
MIN_PIECE_FRAMES = 80  # a piece's own frames, at least (module docstring)
# Lengths at which a halo is checked, in pieces of MIN_PIECE_FRAMES: the shortest split, and
# two more, uneven.
HALO_CHECKS = (2, 3.3, 4.7)


@dataclass(frozen=True)
class Stage:
    """One part of the frame part as a one-thread session: `inputs` are fed in this order,
    the first one with frames along its last axis (so has any other whose last axis is as
    long; a speaker's embedding has none)."""

    session: Any
    inputs: tuple[str, ...]

    def run(self, feed: Sequence[np.ndarray]) -> np.ndarray:
        (out,) = self.session.run(None, dict(zip(self.inputs, feed, strict=True)))
        return out

    def pieces(
        self, feed: Sequence[np.ndarray], count: int, halo: int, helpers: Executor | None
    ) -> np.ndarray:
        """The output of `feed`, computed in `count` pieces along time (the first here, the
        others on `helpers`) and joined; the whole at once when `count` is 1."""
        frames = feed[0].shape[-1]
        if count < 2 or helpers is None:
            return self.run(feed)
        edges = [round(k * frames / count) for k in range(count + 1)]
        spans = [(max(0, a - halo), min(frames, b + halo)) for a, b in pairwise(edges)]

        def piece(lo: int, hi: int) -> np.ndarray:
            return self.run([x[..., lo:hi] if x.shape[-1] == frames else x for x in feed])

        later = [helpers.submit(piece, lo, hi) for lo, hi in spans[1:]]
        outs = [piece(*spans[0]), *(f.result() for f in later)]
        per_frame = outs[0].shape[-1] // (spans[0][1] - spans[0][0])  # audio: samples a frame
        kept = [
            out[..., (a - lo) * per_frame : (b - lo) * per_frame]
            for out, (lo, _), (a, b) in zip(outs, spans, pairwise(edges), strict=True)
        ]
        return np.concatenate(kept, axis=-1)


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
    first = next(n for n in decoder if from_flow[0] in n.input and n.op_type == "Conv")
    weight = next(i for i in graph.initializer if i.name == first.input[1])
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


def blocked_session(model: onnx.ModelProto, options: Callable[[], Any]) -> Any:
    """A session of `blocked_model`, loaded as it is (no second optimization)."""
    import onnxruntime as ort

    second = options()
    second.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    patched = blocked_model(model, options).SerializeToString()
    return ort.InferenceSession(patched, second, ["CPUExecutionProvider"])


Sample = Callable[[int], dict[str, np.ndarray]]  # the frame part's inputs, by name, that long


class FramePart:
    """A voice's frame part as one-thread `Stage`s: the flow, then the decoder (blocked where
    that works), or the whole as one where no decoder is found; and the halos a lone item's
    pieces take (None until `find_halos` found them: it then runs whole). `sample(frames)`:
    inputs of that length to check against (random latents, as an item's other inputs)."""

    def __init__(self, back: onnx.ModelProto, options: Callable[[], Any], sample: Sample) -> None:
        import onnxruntime as ort

        def session(model: onnx.ModelProto) -> Any:
            return ort.InferenceSession(
                model.SerializeToString(), options(), ["CPUExecutionProvider"]
            )

        self.inputs = tuple(i.name for i in back.graph.input)
        self.sample = sample
        self.blocked = False
        self.halos: tuple[int, ...] | None = None
        parts = split(back)
        if parts is None:
            self.stages = [Stage(session(back), self.inputs)]
            return
        flow, decoder = parts
        self.stages = [
            Stage(session(flow), self.inputs),
            Stage(session(decoder), tuple(i.name for i in decoder.graph.input)),
        ]
        try:
            self._block(decoder, options)
        except Exception:  # noqa: BLE001 - the plain decoder gives the same audio, slower
            logger.exception("The decoder stays 1-D")

    def _block(self, decoder: onnx.ModelProto, options: Callable[[], Any]) -> None:
        """Put the blocked decoder in use if it can be made and gives the plain one's audio
        (within 1e-5: its 2-D convolutions sum in another order)."""
        wide = decoder_in_2d(decoder)
        if wide is None:
            logger.info("The decoder stays 1-D: it holds operators it cannot carry over")
            return
        plain = self.stages[-1]
        blocked = Stage(blocked_session(wide, options), plain.inputs)
        feed = self.stage_inputs(len(self.stages) - 1, self.sample(2 * MIN_PIECE_FRAMES))
        gap = float(np.abs(plain.run(feed) - blocked.run(feed)).max())
        if gap > 1e-5:
            logger.warning("The decoder stays 1-D: blocked, its audio is %.2g away", gap)
            return
        self.stages[-1], self.blocked = blocked, True

    def stage_inputs(self, k: int, named: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Stage `k`'s inputs for the frame part's inputs `named` (the stages before it run)."""
        out = None
        for stage in self.stages[: k + 1]:
            feed = [
                out if out is not None and j == 0 else named[n] for j, n in enumerate(stage.inputs)
            ]
            if stage is self.stages[k]:
                return feed
            out = stage.run(feed)
        raise IndexError(k)

    def run(
        self, feed: dict[str, np.ndarray], helpers: Executor | None = None, pieces: int = 1
    ) -> np.ndarray:
        """The audio (1-D) of `feed` (the frame part's inputs by name): whole at one thread,
        or, with `helpers` and halos found, in up to `pieces` pieces at once."""
        frames = feed[self.inputs[0]].shape[-1]
        halos = self.halos
        count = min(pieces, frames // MIN_PIECE_FRAMES) if halos and helpers else 1
        out = None
        for k, stage in enumerate(self.stages):
            args = [out if k and j == 0 else feed[n] for j, n in enumerate(stage.inputs)]
            out = stage.pieces(args, count, halos[k] if halos else 0, helpers)
        assert out is not None
        return out.reshape(-1)

    def find_halos(self, pieces: int) -> bool:
        """Find each stage's halo for `pieces` pieces and put splitting in use; False (and
        every item whole) if a stage has none."""
        halos = []
        for k, stage in enumerate(self.stages):
            halo = find_halo(stage, lambda n, k=k: self.stage_inputs(k, self.sample(n)), pieces)
            if halo is None:
                logger.warning("A lone item's frame part runs whole: no halo splits stage %d", k)
                return False
            halos.append(halo)
        self.halos = tuple(halos)
        return True


def find_halo(stage: Stage, feed: Callable[[int], list[np.ndarray]], pieces: int) -> int | None:
    """The narrowest of `HALOS` with which `stage` in `pieces` pieces gives its whole output
    to the bit at each of `HALO_CHECKS` (`feed(frames)`: random inputs that long); None if
    none does."""
    lengths = [round(c * pieces * MIN_PIECE_FRAMES / 2) for c in HALO_CHECKS]
    feeds = [feed(n) for n in lengths]
    wholes = [stage.run(f) for f in feeds]
    serial = _Serial()
    for halo in HALOS:
        if all(
            np.array_equal(whole, stage.pieces(f, pieces, halo, serial))
            for f, whole in zip(feeds, wholes, strict=True)
        ):
            return halo
    return None


class _Serial(Executor):
    """Runs what is submitted at once, in the caller's thread (a check needs no second core)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        from concurrent.futures import Future

        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future
