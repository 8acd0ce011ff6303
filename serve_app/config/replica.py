"""The model replica's `user_config`: a `serve deploy` that changes it applies in place."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from serve_app.config.base import _Strict


class SynthesizerUserConfig(_Strict):
    """The synthesizer's `user_config`: a `serve deploy` that changes it applies in place."""

    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Sentence items per batch. Default: 1 on CPU (items run one by one there, "
        "and a batch would hold back its first items' audio), 64 on GPU (docs/configuration.md).",
    )
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, le=1.0, description="How long a batch waits to fill before it runs."
    )
    max_batch_frames: int | None = Field(
        None,
        ge=500,
        description="GPU: padded frames (256 samples each) one group of a batch may have. "
        "Default: measured at start from the memory a frame needs and the free GPU memory.",
    )
    decoder_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="Precision of the decoder (durations are always decided in float32). "
        "A half precision that drifts below 35 dB SNR against float32 on a start-up check "
        "is refused: the replica keeps float32 and logs why. The PyTorch engine's (GPU "
        "replicas, cpu_engine: pytorch); the onnxruntime engine refuses all but float32.",
    )
    decoder_compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="torch.compile the decoder (fused elementwise kernels); auto: on GPU "
        "only. Compiled at start (tens of seconds, logged); eager if compiling fails. The "
        "PyTorch engine's; the onnxruntime engine refuses on.",
    )
    stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="A batch still running after this long fails the replica's health check, "
        "so Serve replaces the replica (its items are retried on another one).",
    )

    def compiles_decoder(self, device_type: str) -> bool:
        if self.decoder_compile == "auto":
            return device_type == "cuda"
        return self.decoder_compile == "on"
