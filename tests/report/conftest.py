"""Report fixtures: the shared real build + bench database, and a headless Chromium driver."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import ship_build as sb  # needs tests/report on sys.path (tests/ is not a package)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
# Chromium logs every console message of the page as "...:CONSOLE:<line>] "<text>", source: ..."
# (console.log and console.error alike), and uncaught exceptions as "Uncaught ...".
_CONSOLE = re.compile(r":CONSOLE(?::\d+)?\]|Uncaught ")


@pytest.fixture(scope="session")
def ship():
    """Digits CNN converted to tflite-fp32/int8, onnx-fp32, ort and benchmarked on local."""
    return sb.ship_build()


@dataclass
class Page:
    """What Chromium made of a page: console lines, the DOM after scripts ran, a screenshot."""

    console: list
    dom: str
    screenshot: Path
    stderr: str


class Chromium:
    """Debian's chromium, headless, isolated profile, no network services."""

    def __init__(self, binary: str, tmp: Path):
        self.binary = binary
        self.tmp = tmp

    def _run(self, url: str, *extra: str) -> subprocess.CompletedProcess:
        profile = self.tmp / f"profile-{len(list(self.tmp.iterdir()))}"
        argv = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                *extra, url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    def load(self, page: Path, size=(1280, 2400)) -> Page:
        """Render ``page``: one run for the screenshot and its console, one for the DOM."""
        url = Path(page).resolve().as_uri()
        shot = self.tmp / (Path(page).stem + ".png")
        r1 = self._run(url, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}")
        r2 = self._run(url, "--dump-dom")
        assert r2.returncode == 0, f"chromium --dump-dom failed: {r2.stderr[-2000:]}"
        lines = [ln for ln in (r1.stderr + r2.stderr).splitlines() if _CONSOLE.search(ln)]
        return Page(lines, r2.stdout, shot, r1.stderr)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    """The headless browser; FAILS (not skips) when it is missing: CI installs it."""
    binary = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if binary is None:
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` "
                    "(.ci/run installs it); the report tests render the HTML in it")
    return Chromium(binary, tmp_path_factory.mktemp("chromium"))
