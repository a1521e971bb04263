"""silero-vad's artifacts run as an app runs them: over a whole speech stream, window by window,
each model carrying its own recurrent state (the gate's eval samples carry FP32's state). A
cross-check of the gate's per-window SQNR.

    python benchmarks/silero_stream.py /tmp/bf4     # the --out of bench_fidelity.py

The stream is the eval half's espeak-ng speech (``thirdparty_data.speech``); each 512-sample
window goes behind the last 64 samples of the one before, as silero_vad's OnnxWrapper feeds it.
Prints, per artifact, the share of windows whose speech decision (p > 0.5) matches FP32's, the
largest probability difference, and the SQNR of the probabilities over the stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import thirdparty_data


def probabilities(path: Path, stream: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(64, np.float32)
    out = []
    for start in range(0, len(stream) - 512, 512):
        chunk = np.concatenate([context, stream[start:start + 512]])[None]
        feeds = {"input": chunk, "state": state}
        if "sr" in names:  # the unspecialised model
            feeds["sr"] = np.array(16000, np.int64)
        prob, state = sess.run(None, feeds)
        out.append(float(prob.ravel()[0]))
        context = chunk[0, -64:]
    return np.array(out)


def main(argv=None) -> int:
    out = Path((argv if argv is not None else sys.argv[1:])[0])
    data = thirdparty_data.build("silero-vad")
    stream = thirdparty_data.speech(thirdparty_data.SENTENCES[64:][:24], 1)
    ref = probabilities(data.model, stream)
    print(f"{len(ref)} windows ({len(stream) / 16000:.0f} s), FP32 hears speech in "
          f"{100 * np.mean(ref > 0.5):.0f} %")
    for path in sorted((out / "artifacts" / "silero-vad").glob("*/*.onnx")):
        got = probabilities(path, stream)
        agree = np.mean((got > 0.5) == (ref > 0.5))
        noise = float(np.sum((ref - got) ** 2))
        sqnr = 10 * np.log10(float(np.sum(ref ** 2)) / noise) if noise else 200.0
        label = f"{path.parent.name}/{path.stem.split('.')[-1]}"
        print(f"{label:>30}: decisions agree {100 * agree:.2f} %, max |dp| "
              f"{float(np.max(np.abs(got - ref))):.3f}, SQNR {sqnr:.1f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
