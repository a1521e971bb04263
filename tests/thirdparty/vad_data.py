"""Real speech for the streaming voice-activity model (silero-vad), as calibration/eval data.

The speech is synthesised by ``espeak-ng`` (Debian package ``espeak-ng``; no download at run time),
resampled to 16 kHz, laid out as sentences separated by pauses with a little seeded background
noise, then cut into 512-sample frames. Silero VAD is streaming, fed as its wheel's own wrapper
(``silero_vad/utils_vad.py``, ``OnnxWrapper``) feeds it: each frame is prefixed with the last 64
samples of the one before (576 samples), and comes with the recurrent state the previous frame
left. So the data set records, per frame, the very ``state`` the source model carries at that
point of the stream (zeros at the start). Its arrays:

- ``input`` ``[N, 576]`` float32 (batched: the model's batch axis is first),
- ``state`` ``[N, 2, 1, 128]`` float32 (N samples of the full shape ``[2, batch, 128]``),
- ``sr`` ``[N]`` int64 (N samples of the scalar input), all 16000.

    python tests/thirdparty/vad_data.py MODEL.onnx OUT.npz
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16000
FRAME = 512
CONTEXT = 64  # samples of the previous frame the wrapper puts in front of each frame at 16 kHz
SENTENCES = (
    "Voice activity detection finds the parts of a recording where someone speaks.",
    "The quick brown fox jumps over the lazy dog, and then it rests for a while.",
    "Please leave a message after the tone, and we will call you back tomorrow.",
    "Seven hundred and twenty three samples were measured on the small board.",
)
VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3")


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed or failed."""


def speech(text: str, voice: str = "en-us", speed: int = 150) -> np.ndarray:
    """One utterance as float32 samples in -1..1 at 16 kHz.

    Raises:
        SpeechUnavailable: espeak-ng is missing or failed.
    """
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(wav), text],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not wav.is_file():
            raise SpeechUnavailable(f"espeak-ng failed ({proc.returncode}): {proc.stderr.strip()}")
        with wave.open(str(wav)) as w:
            rate, width = w.getframerate(), w.getsampwidth()
            raw = w.readframes(w.getnframes())
    if width != 2:
        raise SpeechUnavailable(f"espeak-ng wrote {8 * width}-bit samples, expected 16-bit")
    x = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    g = np.gcd(RATE, rate)
    return resample_poly(x, RATE // g, rate // g).astype(np.float32)


def recording(seed: int = 0, pause_s: float = 0.6, noise: float = 0.003) -> np.ndarray:
    """Several utterances in several voices, separated by pauses, over quiet seeded noise."""
    rng = np.random.default_rng(seed)
    pause = np.zeros(int(pause_s * RATE), np.float32)
    parts = [pause]
    for text, voice in zip(SENTENCES, VOICES, strict=True):
        parts += [0.7 * speech(text, voice), pause]
    audio = np.concatenate(parts)
    return (audio + noise * rng.standard_normal(audio.size)).astype(np.float32)


def streaming_samples(model_path, audio: np.ndarray) -> dict:
    """Per 512-sample frame: the frame with its 64 samples of context, the state the source
    model carries into it, and sr.

    Args:
        model_path: the silero-vad ONNX file.
        audio: float32 samples at 16 kHz.

    Returns:
        ``{"input": [N, 576], "state": [N, 2, 1, 128], "sr": [N], "speech_prob": [N]}``; the
        last is the source model's own output, kept for reading the data, not fed.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    n = audio.size // FRAME
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio[:n * FRAME]])
    frames = np.stack([padded[i * FRAME:(i + 1) * FRAME + CONTEXT] for i in range(n)])
    states = np.zeros((n, 2, 1, 128), np.float32)
    probs = np.zeros(n, np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(RATE, np.int64)
    for i in range(n):
        states[i] = state
        out, state = session.run(None, {"input": frames[i:i + 1], "state": state, "sr": sr})
        probs[i] = float(out.reshape(-1)[0])
    return {"input": frames, "state": states, "sr": np.full(n, RATE, np.int64),
            "speech_prob": probs}


def write(model_path, out_path, seed: int = 0) -> dict:
    """Write the data set's model inputs to ``out_path`` (.npz); return all arrays."""
    arrays = streaming_samples(model_path, recording(seed))
    np.savez(out_path, **{k: arrays[k] for k in ("input", "state", "sr")})
    return arrays


if __name__ == "__main__":
    a = write(sys.argv[1], sys.argv[2])
    p = a["speech_prob"]
    print(f"{len(p)} frames ({len(p) * FRAME / RATE:.1f} s); speech prob > 0.5 on "
          f"{int((p > 0.5).sum())}, < 0.1 on {int((p < 0.1).sum())}")
