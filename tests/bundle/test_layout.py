"""edgekit bundle writes an app-shaped layout: each file lands where the app's build uses it
(Gradle: assets packed, src/main/java compiled; Xcode/SwiftPM: Resources copied, Sources
compiled), and the README's bundle example works verbatim."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.bundle import BundleOptions, Platform, build_bundle, verify_bundle
from edgekit.bundle.layout import android_layout, ios_layout

README = Path(__file__).resolve().parents[2] / "README.md"


def _rel(paths, root):
    return sorted(Path(p).relative_to(root).as_posix() for p in paths)


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


@pytest.mark.parametrize("out, models, code", [
    ("app", "app/src/main/assets/edgekit", "app/src/main/java/com/example/app"),
    ("app/src/main", "app/src/main/assets/edgekit", "app/src/main/java/com/example/app"),
    ("app/src/debug", "app/src/debug/assets/edgekit", "app/src/debug/java/com/example/app"),
    ("app/src/main/assets/edgekit", "app/src/main/assets/edgekit",
     "app/src/main/java/com/example/app"),
    ("app/src/main/assets", "app/src/main/assets", "app/src/main/java/com/example/app"),
])
def test_android_layout_folders(out, models, code):
    layout = android_layout(Path(out), "com.example.app")
    assert (layout.models.as_posix(), layout.code.as_posix()) == (models, code)
    assert android_layout(Path(out), "com.example.app", "gen").code == Path("gen")


@pytest.mark.parametrize("out, models, code", [
    ("MyApp", "MyApp/Resources", "MyApp/Sources"),
    ("MyApp/Resources", "MyApp/Resources", "MyApp/Sources"),
    ("Sources/MyApp/Resources/Models", "Sources/MyApp/Resources/Models", "Sources/MyApp/Sources"),
])
def test_ios_layout_folders(out, models, code):
    layout = ios_layout(Path(out))
    assert (layout.models.as_posix(), layout.code.as_posix()) == (models, code)


def test_android_module_gets_gradle_layout(ship, tmp_path):
    app = tmp_path / "app"
    res = build_bundle(ship.out, BundleOptions(platform=Platform.ANDROID, package="com.example.app",
                                               artifacts=("tflite-int8",), labels=("a", "b")), app)
    assert _files(app) == [
        "src/main/assets/edgekit/SHA256SUMS", "src/main/assets/edgekit/digits.tflite-int8.tflite",
        "src/main/assets/edgekit/edgekit.json", "src/main/assets/edgekit/labels.txt",
        "src/main/java/com/example/app/DigitsModel.kt"]
    assert res.out == app / "src/main/assets/edgekit" and verify_bundle(res.out) == []
    kt = (app / "src/main/java/com/example/app/DigitsModel.kt").read_text()
    # Kotlin's package matches its folder, and the asset path the helper opens is the file that
    # Gradle packs from src/main/assets.
    assert re.search(r"^package com\.example\.app$", kt, re.M)
    [asset] = re.findall(r'MODEL_ASSET = "([^"]+)"', kt)
    assert asset == "edgekit/digits.tflite-int8.tflite"
    assert (app / "src/main/assets" / asset).is_file()


def test_code_out_still_wins(ship, tmp_path):
    res = build_bundle(ship.out, BundleOptions(platform=Platform.ANDROID, artifacts=("ort",),
                                               code_out=tmp_path / "gen"), tmp_path / "app")
    assert _rel(res.helpers, tmp_path) == ["gen/DigitsModel.kt"]
    assert not (tmp_path / "app/src/main/java").exists()


def test_ios_target_gets_sources_and_resources(ship, tmp_path):
    res = build_bundle(ship.out, BundleOptions(platform=Platform.IOS, artifacts=("tflite-fp32",)),
                       tmp_path / "MyApp")
    assert _files(tmp_path / "MyApp") == [
        "Resources/SHA256SUMS", "Resources/digits.tflite-fp32.tflite", "Resources/edgekit.json",
        "Sources/DigitsModel.swift"]
    swift = (tmp_path / "MyApp/Sources/DigitsModel.swift").read_text()
    assert 'modelResource = "digits.tflite-fp32"' in swift and verify_bundle(res.out) == []


def _readme_bundle_command() -> list[str]:
    lines = [ln for ln in README.read_text().splitlines() if ln.startswith("edgekit bundle ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)


def test_readme_bundle_example_verbatim(ship, tmp_path):
    argv = _readme_bundle_command()
    (tmp_path / "build").symlink_to(ship.out, target_is_directory=True)
    p = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *argv[1:]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    out = Path(argv[argv.index("--out") + 1])
    written = _files(tmp_path / out)
    kts = [f for f in written if f.endswith(".kt")]
    models = [f for f in written if f.endswith(".tflite")]
    assert len(kts) == 1 and len(models) == 1, written
    # Where Gradle compiles Kotlin, and where it packs assets.
    assert re.fullmatch(r"src/main/java/(\w+/)+\w+Model\.kt", kts[0]), kts
    assert models[0].startswith("src/main/assets/"), models
    package = re.search(r"^package ([\w.]+)$", (tmp_path / out / kts[0]).read_text(), re.M)[1]
    assert kts[0].startswith("src/main/java/" + package.replace(".", "/") + "/")
