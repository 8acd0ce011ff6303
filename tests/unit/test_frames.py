"""The frame part's rewrites (serve_app/model/engines/blocked.py, frames.py) on a small
decoder built here: blocked, it gives the plain decoder's output; in pieces, the whole's to
the bit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serve_app.model.engines.blocked import (
    NCHWC,
    blocked_model,
    decoder_in_2d,
    not_again,
    split,
)
from serve_app.model.engines.frames import MIN_SPAN_FRAMES, Stage, find_halo, span
from serve_app.model.engines.ort import _options

pytestmark = pytest.mark.timeout(60)


def small_voice_back(extra_op: str | None = None) -> onnx.ModelProto:
    """A frame part shaped like piper's: a flow of one convolution, then a decoder (nodes
    named /dec/) with a speaker's conditioning added per channel, an upsampling, a residual
    block, an average and a last convolution; its output unsqueezed outside the decoder."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def weight(name: str, *shape: int) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape, np.float32) * 0.2, name))
        return name

    def node(op: str, name: str, inputs: list[str], **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    z = node("Conv", "/flow/conv", ["z", weight("fw", 16, 16, 5), weight("fb", 16)], pads=[2, 2])
    x = node("Mul", "/flow/mask", [z, "mask"])
    pre = node("Conv", "/dec/pre", [x, weight("pw", 32, 16, 7), weight("pb", 32)], pads=[3, 3])
    cond = node("Conv", "/dec/cond", ["g", weight("cw", 32, 8, 1), weight("cb", 32)])
    h = node("Add", "/dec/add_cond", [pre, cond])
    h = node("LeakyRelu", "/dec/lrelu0", [h], alpha=0.1)
    u = node(
        "ConvTranspose", "/dec/up", [h, weight("uw", 32, 16, 4), weight("ub", 16)],
        strides=[2], pads=[1, 1],
    )  # fmt: skip
    a = node("LeakyRelu", "/dec/lrelu1", [u], alpha=0.1)
    a = node("Conv", "/dec/res0", [a, weight("r0", 16, 16, 3), weight("r0b", 16)], pads=[1, 1])
    r = node("Add", "/dec/add0", [a, u])
    b = node("LeakyRelu", "/dec/lrelu2", [r], alpha=0.1)
    b = node(
        "Conv", "/dec/res1", [b, weight("r1", 16, 16, 5), weight("r1b", 16)],
        pads=[4, 4], dilations=[2],
    )  # fmt: skip
    r2 = node("Add", "/dec/add1", [b, r])
    inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    avg = node("Div", "/dec/avg", [node("Add", "/dec/sum", [r2, r]), "two"])
    if extra_op:
        avg = node(extra_op, "/dec/extra", [avg])
    post = node("Conv", "/dec/post", [avg, weight("qw", 1, 16, 7)], pads=[3, 3])
    audio = node("Tanh", "/dec/tanh", [post])
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes.append(helper.make_node("Unsqueeze", [audio, "axis1"], ["output"], name="out"))
    graph = helper.make_graph(
        nodes, "back",
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, "T"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "T"]),
            helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 8, 1]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto, options=None):
    options = options or _options(1)
    return ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])


def feed(frames: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "z": rng.standard_normal((1, 16, frames), np.float32),
        "mask": np.ones((1, 1, frames), np.float32),
        "g": rng.standard_normal((1, 8, 1), np.float32),
    }


def test_the_blocked_decoder_gives_the_plain_ones_output_without_reorders_between() -> None:
    back = small_voice_back()
    flow, decoder = split(back)
    assert [i.name for i in decoder.graph.input] == ["/flow/mask_out", "g"]
    x = session(flow).run(None, feed(200))[0]
    inputs = {"/flow/mask_out": x, "g": feed(200)["g"]}
    plain = session(decoder).run(None, inputs)[0]
    model = blocked_model(decoder_in_2d(decoder), lambda: _options(1))
    got = session(model, not_again(_options(1))).run(None, inputs)[0]
    assert got.shape == plain.shape and np.abs(got - plain).max() <= 1e-5
    # Blocked once after the upsampling (and once its LeakyRelu), reordered out once before
    # it and once at the end (one channel): nothing in between.
    ops = [n.op_type for n in model.graph.node if n.domain == NCHWC]
    assert ops.count("ReorderOutput") <= 3 and ops.count("ReorderInput") <= 4, ops


def test_a_decoder_with_an_operator_it_cannot_carry_stays_1d() -> None:
    _, decoder = split(small_voice_back(extra_op="Softmax"))
    assert decoder_in_2d(decoder) is None


def test_a_graph_without_a_named_decoder_is_not_split() -> None:
    back = small_voice_back()
    for node in back.graph.node:
        node.name = node.name.replace("/dec/", "/decoder/")
    assert split(back) is None


@pytest.mark.parametrize("pieces", [2, 3])
def test_pieces_with_the_halo_found_give_the_whole_to_the_bit(pieces) -> None:
    flow, _ = split(small_voice_back())
    stage = Stage(session(flow), ("z", "mask", "g"))
    halo = find_halo(stage, lambda n: list(feed(n).values()), pieces)
    assert halo == 4  # the flow's one convolution reaches 2 frames: the narrowest tried
    with ThreadPoolExecutor(pieces - 1) as helpers:
        for frames in (240, 301, 517):
            f = list(feed(frames, seed=frames).values())
            whole = stage.run(f)
            assert np.array_equal(whole, stage.pieces(f, pieces, halo, helpers)), frames
            narrow = stage.pieces(f, pieces, 1, helpers)  # less than its reach: not the whole
            assert not np.array_equal(whole, narrow)


def test_a_piece_short_of_the_narrowest_span_is_widened_into_its_neighbours() -> None:
    halo = 12
    for frames in (80, 91, 105, 106, 157, 200):
        for count in (2, 3):
            edges = [round(k * frames / count) for k in range(count + 1)]
            for a, b in pairwise(edges):
                lo, hi = span(a, b, halo, frames)
                natural = max(0, a - halo), min(frames, b + halo)
                assert 0 <= lo <= natural[0] and natural[1] <= hi <= frames
                assert hi - lo >= MIN_SPAN_FRAMES, (frames, count, a, b)
                if natural[1] - natural[0] >= MIN_SPAN_FRAMES:  # wide enough: as it was
                    assert (lo, hi) == natural
    assert span(0, 25, halo, 50) == (0, 50)  # an item narrower than a span: the whole
