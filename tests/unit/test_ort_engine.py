"""The onnxruntime engine (CPU default) against the whole voice file in onnxruntime, against
the PyTorch engine, and beside itself."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from load_tests import onnx_reference
from serve_app.config import SynthesizerUserConfig, VoiceSource
from serve_app.model.cores import CoreShare
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.cut import find_cut
from serve_app.model.engines.frames import MIN_PIECE_FRAMES
from serve_app.model.engines.ort import OrtEngine
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.voices import VoiceInfo, VoiceLoadError
from tests.voices import JOE, SPEAKERS, export_multispeaker_voice, joe_phoneme_ids
from tests.voices import joe_item as item

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def info() -> VoiceInfo:
    return VoiceInfo.load(JOE)


@pytest.fixture(scope="module")
def engine() -> OrtEngine:
    eng = OrtEngine([JOE], threads=2)
    eng.load("cpu")
    assert eng.pooled(60)  # the phoneme part's pool, loaded and checked after the load
    return eng


@pytest.fixture(scope="module")
def ids() -> list[tuple[int, ...]]:
    return joe_phoneme_ids()


def test_the_graph_is_cut_where_the_noise_goes_in(info) -> None:
    cut = find_cut(onnx.load(str(info.model_path)).graph)
    assert cut.duration_noise == "/dp/RandomNormalLike_output_0"
    assert cut.z_p == "/Add_output_0" and cut.output == "output"
    assert cut.carried == ("/Cast_2_output_0",)  # the frame mask, nothing more


def test_matches_the_whole_voice_file_in_onnxruntime_with_noise_off(engine, info, ids) -> None:
    session = onnx_reference.session(info.model_path)
    for seq in ids:
        reference = onnx_reference.synthesize(session, seq)
        (ours,) = engine.synthesize([item(seq, noise=False)])
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() <= 1e-4


def test_a_seed_gives_the_pytorch_engines_audio(engine, ids) -> None:
    pytorch = PiperEngine([JOE], warm_buckets=False)
    pytorch.load("cpu")
    for k, seq in enumerate(ids[:4]):
        it = item(seq, seed=300 + k)
        (ours,), (theirs,) = engine.synthesize([it]), pytorch.synthesize([it])
        assert ours.shape == theirs.shape  # the same durations: the same noise went in
        assert np.abs(ours - theirs).max() <= 1e-4


def test_the_seed_decides_the_noise(engine, ids) -> None:
    a, b, c = (engine.synthesize([item(ids[1], seed=s)])[0] for s in (5, 5, 6))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or np.abs(a - c).max() > 1e-2


def test_items_side_by_side_keep_their_audio_to_the_bit(engine, ids, monkeypatch) -> None:
    voice = engine._voices["joe"]
    used = []  # how each item's parts ran
    frame_part, phoneme_part = voice.frames.run, voice._phonemes
    monkeypatch.setattr(
        voice.frames,
        "run",
        lambda f, h=None, p=1: used.append(("frames", h is not None, p)) or frame_part(f, h, p),
    )
    monkeypatch.setattr(voice, "_phonemes", lambda i, s: used.append(s) or phoneme_part(i, s))
    items = [item(seq, seed=400 + k) for k, seq in enumerate(ids)]
    assert isinstance(engine.cores, CoreShare)  # its own: given none, items come one at a time
    alone = engine.synthesize(items)  # one call of many: each runs alone
    assert set(used) == {voice.front_pooled, ("frames", True, 2)}  # the pool, and pieces
    used.clear()
    with ThreadPoolExecutor(4) as pool:  # as a replica's engine threads call it
        beside = list(pool.map(lambda it: engine.synthesize([it])[0], items * 2))
    assert voice.front in used and ("frames", False, 1) in used  # beside others: one thread
    frames = [a.size // 256 for a in alone]
    assert min(frames) < 2 * MIN_PIECE_FRAMES <= max(frames), frames  # whole, and in pieces
    for a, b in zip(alone * 2, beside, strict=True):
        assert np.array_equal(a, b)
    # A one-thread replica's items: every part at one thread, so its long ones are the same.
    one_thread = OrtEngine([JOE], threads=1)
    one_thread.load("cpu")
    assert one_thread.cores is None
    for a, b in zip(alone, one_thread.synthesize(items), strict=True):
        assert np.array_equal(a, b) or a.size // 256 < voice.frames.pooled_below


def test_a_lone_items_frame_part_in_pieces_gives_the_whole_to_the_bit(engine) -> None:
    frames = engine._voices["joe"].frames
    assert frames.halos == (32, 12)  # the flow's four couplings of 4 x 2 frames; the decoder
    serial = ThreadPoolExecutor(1)
    # pieces widened to 65 frames (80-105 in two, 120-157 in three), then not
    for n in [*range(80, 90), 104, 105, 106, 121, 157, 158, *range(160, 170), 211, 333, 701]:
        feed = frames.sample(n)
        whole = frames.run(feed)
        for pieces in (2, 3):
            assert np.array_equal(whole, frames.run(feed, serial, pieces)), (n, pieces)
    serial.shutdown()


def test_the_pooled_phoneme_part_gives_the_one_thread_outputs(engine, ids) -> None:
    voice = engine._voices["joe"]
    assert voice.front_pooled is not voice.front and engine.status()["phoneme_part_pooled"]
    rng = np.random.default_rng(11)
    randoms = [tuple(int(i) for i in rng.integers(1, 100, n)) for n in range(2, 520, 23)]
    for k, seq in enumerate([*ids, *randoms]):
        it = item(seq, seed=k)
        one, pooled = (voice._phonemes(it, s) for s in (voice.front, voice.front_pooled))
        assert all(np.array_equal(a, b) for a, b in zip(one, pooled, strict=True)), len(seq)


def test_only_the_pool_a_lone_item_runs_on_spins_and_it_stops_when_its_run_ends(engine) -> None:
    # NOTE: a short item runs on the frame part's pool beside one-thread items too: a spinning
    # pool there would take a core from them between its operations.
    def entry(session, key: str) -> str:
        return session.get_session_options().get_session_config_entry(key)

    voice = engine._voices["joe"]
    assert entry(voice.front_pooled, "session.intra_op.allow_spinning") == "1"
    assert entry(voice.front_pooled, "session.force_spinning_stop") == "1"
    for stage in voice.frames.pooled:
        assert entry(stage.session, "session.intra_op.allow_spinning") == "0"


def test_output_is_speech_in_range(engine, ids) -> None:
    (audio,) = engine.synthesize([item(ids[0])])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.abs(audio).max() <= 1.0
    assert 0.01 < float(np.sqrt(np.mean(audio**2))) < 0.5
    assert 1.0 < len(audio) / engine.sample_rate("joe") < 4.0
    assert engine.padding_efficiency == 1.0  # the batch padding metric: nothing padded
    assert engine.status() == {
        "runtime": "onnxruntime", "batch_policy": "per_item", "threads": 2,
        "decoder_blocked": True, "lone_item_split": True, "phoneme_part_pooled": True,
        "decoder_refused": None,
    }  # fmt: skip


def test_pytorch_only_decoder_settings_are_refused_and_said(engine, ids) -> None:
    before = engine.synthesize([item(ids[0], seed=9)])[0]
    try:
        engine.reconfigure(SynthesizerUserConfig(decoder_dtype="float16", decoder_compile="on"))
        refused = engine.status()["decoder_refused"]
        assert "decoder_dtype float16 and decoder_compile on" in refused
        assert np.array_equal(before, engine.synthesize([item(ids[0], seed=9)])[0])
    finally:
        engine.reconfigure(SynthesizerUserConfig())
    assert engine.status()["decoder_refused"] is None


@pytest.mark.parametrize("use_sdp", [True, False], ids=["stochastic_durations", "plain"])
def test_a_multi_speaker_voice_matches_onnxruntime_for_each_speaker(tmp_path, use_sdp) -> None:
    source = export_multispeaker_voice(tmp_path, use_sdp=use_sdp)
    eng = OrtEngine([source], threads=2)
    eng.load("cpu")
    ids = tuple(range(1, 60, 2))
    items = [SynthesisItem("trio", ids, 1.0, 0.0, 0.0, 0, speaker=n) for n in SPEAKERS.values()]
    got = eng.synthesize(items)
    reference = onnx_reference.speakers(source.model_path, ids, list(SPEAKERS.values()))
    for ours, want in zip(got, reference, strict=True):
        assert ours.shape == want.shape and np.abs(ours - want).max() <= 1e-4
    assert eng.status()["decoder_blocked"]  # its speaker's conditioning added unblocked
    assert np.abs(got[0][:4000] - got[1][:4000]).max() > 1e-3  # distinct speakers
    noisy = SynthesisItem("trio", ids, 1.0, 0.667, 0.8, 7, speaker=1)
    pytorch = PiperEngine([source], warm_buckets=False)
    pytorch.load("cpu")
    (ours,), (theirs,) = eng.synthesize([noisy]), pytorch.synthesize([noisy])
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-4


def test_a_file_that_is_not_a_piper_voice_fails_clearly(tmp_path, info) -> None:
    model = tmp_path / "not-vits.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph), str(model))
    shutil.copy(f"{info.model_path}.json", f"{model}.json")
    eng = OrtEngine([VoiceSource(id="bad", model_path=model)], threads=1)
    with pytest.raises(VoiceLoadError, match="not a usable Piper VITS voice.*RandomNormalLike"):
        eng.load("cpu")


def test_a_config_that_names_speakers_the_graph_lacks_fails_clearly(tmp_path, info) -> None:
    model = tmp_path / "multi.onnx"
    shutil.copy(info.model_path, model)
    config = (info.model_path.parent / f"{info.model_path.name}.json").read_text()
    (tmp_path / "multi.onnx.json").write_text(
        config.replace('"num_speakers": 1', '"num_speakers": 4')
    )
    eng = OrtEngine([VoiceSource(id="multi", model_path=model)], threads=1)
    with pytest.raises(VoiceLoadError, match="names 4 speaker"):
        eng.load("cpu")


def test_it_runs_on_cpu_only() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        OrtEngine([JOE]).load("cuda")
