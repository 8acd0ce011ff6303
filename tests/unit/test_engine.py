"""The PyTorch Piper engine against onnxruntime (the voice's reference runtime)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from torch.nn import functional as F

from load_tests import onnx_reference
from serve_app.config import SynthesizerUserConfig, VoiceSource
from serve_app.model.cores import CoreShare
from serve_app.model.engines import precision
from serve_app.model.engines.base import SynthesisItem
from serve_app.model.engines.decoder import Decoder2d
from serve_app.model.engines.piper import PiperEngine
from serve_app.model.engines.precision import snr_db
from serve_app.model.engines.vits import read_onnx_voice
from serve_app.model.voices import VoiceInfo, VoiceLoadError
from tests.voices import JOE, SPEAKERS, export_multispeaker_voice, joe_phoneme_ids
from tests.voices import joe_item as item

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def info() -> VoiceInfo:
    return VoiceInfo.load(JOE)


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    eng = PiperEngine([JOE])
    eng.load("cpu")
    return eng


@pytest.fixture(scope="module")
def ids() -> list[tuple[int, ...]]:
    return joe_phoneme_ids()


def test_hyper_parameters_come_from_the_onnx_graph(info: VoiceInfo) -> None:
    params, _ = read_onnx_voice(onnx.load(str(info.model_path)))
    assert (params.n_vocab, params.hidden_channels, params.inter_channels) == (256, 192, 192)
    assert (params.filter_channels, params.n_heads, params.n_layers) == (768, 2, 6)
    assert params.resblock == "2" and params.resblock_kernel_sizes == (3, 5, 7)
    assert params.resblock_dilation_sizes == ((1, 2), (2, 6), (3, 12))
    assert params.upsample_rates == (8, 8, 4) and params.upsample_kernel_sizes == (16, 16, 8)
    assert params.upsample_initial_channel == 256 and params.use_sdp
    assert params.hop_length == 256


def test_matches_onnxruntime_with_noise_off(engine, info, ids) -> None:
    session = onnx_reference.session(info.model_path)
    for seq in ids[:4]:
        reference = onnx_reference.synthesize(session, seq)
        (ours,) = engine.synthesize([item(seq, noise=False)])
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() <= 1e-3


@pytest.mark.parametrize("policy", ["per_item", "batched"])
def test_batch_gives_each_item_its_own_audio(engine, ids, policy) -> None:
    engine.decode_policy = policy
    try:
        items = [item(seq, seed=100 + k) for k, seq in enumerate(ids)]
        assert len(items) >= 8
        alone = [engine.synthesize([it])[0] for it in items]
        together = engine.synthesize(items)
        shuffled = engine.synthesize(items[::-1])[::-1]
    finally:
        engine.decode_policy = "auto"
    for a, b, c in zip(alone, together, shuffled, strict=True):
        assert a.shape == b.shape == c.shape
        assert np.abs(a - b).max() <= 1e-4
        assert np.abs(a - c).max() <= 1e-4
        if policy == "per_item":  # the CPU default: nothing depends on the batch, exactly
            assert np.array_equal(a, b) and np.array_equal(a, c)


def test_items_side_by_side_keep_their_audio_to_the_bit(engine, ids) -> None:
    items = [item(seq, seed=200 + k) for k, seq in enumerate(ids)]
    before = torch.get_num_threads()
    engine.cores = CoreShare(2)
    try:
        alone = [engine.synthesize([it])[0] for it in items]  # each with a decoder helper
        with ThreadPoolExecutor(2) as pool:  # two at a time, no helper
            beside = list(pool.map(lambda it: engine.synthesize([it])[0], items))
    finally:
        engine.cores.close()
        engine.cores = None
        torch.set_num_threads(before)
    for a, b in zip(alone, beside, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kernels", [(3,), (3, 5, 7)])
def test_a_decoder_helper_never_changes_the_samples(kernels) -> None:
    from piper.train.vits.models import Generator

    torch.manual_seed(0)
    generator = Generator(
        32, "2", kernels, ((1, 3),) * len(kernels), (4, 4), 32, (8, 8)
    ).eval()  # any Piper voice's decoder: one residual block per stage or several
    decoder = Decoder2d(generator, (4, 4)).to(memory_format=torch.channels_last)
    z = torch.randn(1, 32, 40)
    with ThreadPoolExecutor(1) as helper, torch.inference_mode():
        assert torch.equal(decoder(z, 37, None, helper), decoder(z, 37))


def test_padding_never_reaches_an_items_audio(engine, ids) -> None:
    voice = engine.voice("joe")
    for seq in ids[:4]:
        (aligned,) = voice.align([item(seq, seed=7)])
        z = voice.latents([aligned])
        exact = voice.decode(z, [aligned.frames])[0]  # no padding at all
        bucketed = voice.decode_one(z, aligned)  # padded to its bucket, tail zeroed per layer
        wide = F.pad(z, (0, 40))
        masked = voice.decode(torch.cat([wide, wide]), [aligned.frames, aligned.frames + 40])[0]
        assert exact.shape == bucketed.shape == masked.shape
        assert np.abs(exact - bucketed).max() <= 1e-5
        assert np.abs(exact - masked).max() <= 1e-5


def test_seed_decides_the_noise(engine, ids) -> None:
    a, b, c = engine.synthesize([item(ids[1], 1), item(ids[1], 1), item(ids[1], 2)])
    assert np.array_equal(a, b)
    assert a.shape != c.shape or np.abs(a - c).max() > 1e-2


def test_speed_changes_length(engine, ids) -> None:
    slow, normal, fast = engine.synthesize(
        [item(ids[1], 5, noise=False, speed=s) for s in (0.5, 1.0, 2.0)]
    )
    # Durations are rounded up per phoneme, so 2x speed is a bit less than half as long.
    assert len(slow) > 1.7 * len(normal)
    assert len(normal) > 1.4 * len(fast)


def test_output_is_audio_in_range(engine, ids) -> None:
    (audio,) = engine.synthesize([item(ids[0])])
    assert audio.dtype == np.float32
    assert np.abs(audio).max() <= 1.0
    assert 0.01 < float(np.sqrt(np.mean(audio**2))) < 0.5  # speech, not silence or noise
    assert 1.0 < len(audio) / engine.sample_rate("joe") < 4.0


def test_any_piper_voice_loads_from_a_path(tmp_path, info, ids) -> None:
    model = tmp_path / "custom-voice.onnx"
    shutil.copy(info.model_path, model)
    shutil.copy(f"{info.model_path}.json", f"{model}.json")
    eng = PiperEngine([VoiceSource(id="custom", model_path=model)])
    eng.load("cpu")
    assert eng.voices == ["custom"] and eng.sample_rate("custom") == 22050
    seq = ids[2]
    (audio,) = eng.synthesize([SynthesisItem("custom", seq, 1.0, 0.0, 0.0, 0)])
    assert audio.size > 0


def test_unusable_voices_fail_with_a_reason(tmp_path, info) -> None:
    missing = VoiceSource(id="gone", model_path=tmp_path / "nope.onnx")
    with pytest.raises(VoiceLoadError, match="file not found"):
        VoiceInfo.load(missing)
    model = tmp_path / "multi.onnx"
    shutil.copy(info.model_path, model)
    config = (info.model_path.parent / f"{info.model_path.name}.json").read_text()
    (tmp_path / "multi.onnx.json").write_text(
        config.replace('"num_speakers": 1', '"num_speakers": 4')
    )
    multi = VoiceSource(id="multi", model_path=model)
    assert len(VoiceInfo.load(multi).speakers) == 4
    with pytest.raises(VoiceLoadError, match="names 4 speaker"):
        PiperEngine([multi], warm_buckets=False).load("cpu")


@pytest.mark.parametrize("policy", ["per_item", "batched"])
def test_a_multi_speaker_voice_matches_onnxruntime_for_each_speaker(tmp_path, policy) -> None:
    source = export_multispeaker_voice(tmp_path)
    eng = PiperEngine([source], decode_policy=policy, warm_buckets=False)
    eng.load("cpu")
    ids = tuple(range(1, 60, 2))
    items = [SynthesisItem("trio", ids, 1.0, 0.0, 0.0, 0, speaker=n) for n in SPEAKERS.values()]
    together = eng.synthesize(items)
    reference = onnx_reference.speakers(source.model_path, ids, list(SPEAKERS.values()))
    alone = eng.synthesize(items[::-1])[::-1]
    for got, solo, want in zip(together, alone, reference, strict=True):
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
        assert np.abs(got - solo).max() < 1e-6
    assert np.abs(together[0][:4000] - together[1][:4000]).max() > 1e-3  # distinct speakers


def test_a_file_that_is_not_a_piper_voice_fails_clearly(tmp_path, info) -> None:
    model = tmp_path / "not-vits.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )  # fmt: skip
    onnx.save(onnx.helper.make_model(graph), str(model))
    shutil.copy(f"{info.model_path}.json", f"{model}.json")
    eng = PiperEngine([VoiceSource(id="bad", model_path=model)], warm_buckets=False)
    with pytest.raises(VoiceLoadError, match="not a usable Piper VITS voice"):
        eng.load("cpu")


@pytest.fixture(scope="module")
def tunable() -> PiperEngine:
    """An engine whose decoder settings the tests change (buckets unwarmed: faster)."""
    eng = PiperEngine([JOE], warm_buckets=False, min_decoder_snr_db=45.0)
    eng.load("cpu")
    return eng


def test_compiled_decoder_gives_the_same_samples(tunable, ids) -> None:
    items = [item(seq, seed=7 + k) for k, seq in enumerate(ids[:4])]
    eager = tunable.synthesize(items)
    tunable.reconfigure(SynthesizerUserConfig(decoder_compile="on"))
    try:
        assert tunable.status()["decoder_compiled"]
        compiled = tunable.synthesize(items)
    finally:
        tunable.reconfigure(SynthesizerUserConfig(decoder_compile="off"))
    assert not tunable.status()["decoder_compiled"]
    for a, b in zip(eager, compiled, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5


def test_half_precision_decoder_is_checked_before_it_serves(tunable, ids) -> None:
    items = [item(seq, seed=3 + k) for k, seq in enumerate(ids[:3])]
    reference = tunable.synthesize(items)
    try:
        # bfloat16 keeps ~38 dB here: under this engine's 45 dB floor, so it is refused.
        tunable.reconfigure(SynthesizerUserConfig(decoder_dtype="bfloat16"))
        status = tunable.status()
        assert status["decoder_dtype"] == ["float32"]
        assert "bfloat16" in status["decoder_refused"] and "dB" in status["decoder_refused"]
        assert all(
            np.array_equal(a, b) for a, b in zip(reference, tunable.synthesize(items), strict=True)
        )
        # float16 keeps ~55 dB: it serves, same lengths, the same voice.
        tunable.reconfigure(SynthesizerUserConfig(decoder_dtype="float16"))
        status = tunable.status()
        assert status["decoder_dtype"] == ["float16"] and status["decoder_refused"] is None
        half = tunable.synthesize(items)
    finally:
        tunable.reconfigure(SynthesizerUserConfig())
    for a, b in zip(reference, half, strict=True):
        assert a.shape == b.shape and b.dtype == np.float32
        assert snr_db(a, b) >= 45
    assert tunable.status()["decoder_dtype"] == ["float32"]


def test_cuda_float32_is_set_to_exact() -> None:
    precision.exact_float32()
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
