"""``devices setup``: give a board without internet a runtime.

On the host, ``pip download`` the wheels that match the device's arch, glibc and Python (from its
probe); push them into the device cache (content-addressed, so a second setup pushes nothing);
create a venv (``--system-site-packages``) under a temp name beside ``<workdir>/venv`` and
``pip install --no-index`` them there; once the agent finds a runtime with it, write the
completion marker (``VENV_MARKER``) last and rename the venv into place. The agent runs with that
venv's Python only when the marker is there, so a half-built venv is never used. Set-ups of
``local`` serialise on an fcntl lock (``<workdir>/venv.lock``); set-ups of one remote board each
build their own temp venv, and the last rename wins.
"""

from __future__ import annotations

import json
import logging
import posixpath
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgekit.devices.device import VENV_MARKER, VENV_NAME, Device
from edgekit.errors import CommandFailed, DeviceError, InputError

log = logging.getLogger(__name__)

_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64", "armv7": "armv7l"}
# Run on the device's base Python (>= 3.8, stdlib only). Mark a built venv complete (the marker
# written under a temp name, then renamed: it appears whole), then swap it into place; a venv
# already there (complete or half-built) is moved aside first and removed after.
_FINISH_VENV = (
    "import os,shutil,sys,uuid\n"
    "tmp,final,marker,text=sys.argv[1:5]\n"
    "m=os.path.join(tmp,marker)\n"
    "f=open(m+'.tmp','w')\n"
    "f.write(text)\n"
    "f.flush()\n"
    "os.fsync(f.fileno())\n"
    "f.close()\n"
    "os.replace(m+'.tmp',m)\n"
    "old=None\n"
    "if os.path.lexists(final):\n"
    "    old=final+'.old-'+uuid.uuid4().hex[:8]\n"
    "    os.replace(final,old)\n"
    "os.replace(tmp,final)\n"
    "if old: shutil.rmtree(old,ignore_errors=True)\n"
)
_REMOVE_TREE = "import shutil,sys\nshutil.rmtree(sys.argv[1],ignore_errors=True)\n"
# Runs on the device's base Python. `venv --system-site-packages` made from an interpreter that is
# itself a venv sees that venv's *base* site-packages, not the venv's own, which hold the runtimes:
# list the venv's site-packages in a .pth of the new venv, after its own (the pushed wheels win).
_SEE_BASE_VENV = (
    "import os,site,subprocess,sys\n"
    "if sys.prefix!=sys.base_prefix:\n"
    "    dirs=[p for p in site.getsitepackages() if os.path.isdir(p)]\n"
    "    py=os.path.join(sys.argv[1],'bin','python')\n"
    "    lib=subprocess.check_output([py,'-c','import sysconfig;print(sysconfig.get_paths()[\"purelib\"])'],"
    "universal_newlines=True).strip()\n"
    "    with open(os.path.join(lib,'_edgekit_base_venv.pth'),'w') as f:\n"
    "        f.write('\\n'.join(dirs)+'\\n')\n"
)

_LEGACY_MANYLINUX = {"x86_64": ("manylinux2014", "manylinux2010", "manylinux1"),
                     "aarch64": ("manylinux2014",), "armv7l": ("manylinux2014",)}


@dataclass(frozen=True)
class SetupOptions:
    """What ``devices setup`` installs and where it keeps the wheels on this machine.

    Attributes:
        packages: requirement strings to install (their dependencies come along).
        fallback_runtimes: tried in order when a TFLite runtime in ``packages`` has no wheel for
            the device (old Pythons, 32-bit boards).
        wheel_cache: host folder for downloaded wheels (one subfolder per platform).
        index_url: a PyPI mirror for ``pip download``.
        timeout: seconds for each of download and install.
    """

    packages: tuple[str, ...] = ("numpy", "ai-edge-litert", "onnxruntime")
    fallback_runtimes: tuple[str, ...] = ("tflite-runtime",)
    wheel_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "edgekit" / "wheels")
    index_url: Optional[str] = None
    timeout: float = 900.0


@dataclass(frozen=True)
class WheelPlan:
    """The pip platform a device needs, read from its probe."""

    arch: str
    python_version: str  # "3.11"
    platforms: tuple[str, ...]

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def key(self) -> str:
        return f"{self.arch}-cp{self.python_version.replace('.', '')}"


def plan_wheels(probe: dict) -> WheelPlan:
    """Platform tags for ``pip download`` from a probe document.

    Raises:
        InputError: a device pip has no binary wheels for (non-Linux, musl, Android).
    """
    arch = _ARCH_ALIASES.get(probe.get("arch", ""), probe.get("arch", ""))
    system = (probe.get("os") or {}).get("system")
    libc = probe.get("libc") or {}
    if system != "Linux" or libc.get("name") not in ("glibc", None):
        raise InputError(f"{probe.get('device')}: devices setup supports glibc Linux boards; this "
                         f"device is {system} with {libc.get('name') or 'an unknown libc'} "
                         "(on Termux/Android install numpy and a runtime with `pkg`/`pip` there)")
    py = ".".join(probe["python"]["version"].split(".")[:2])
    glibc = libc.get("version") or "2.17"
    major, minor = (int(x) for x in glibc.split(".")[:2])
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)] if major == 2 else []
    tags += [f"{legacy}_{arch}" for legacy in _LEGACY_MANYLINUX.get(arch, ())]
    tags.append(f"linux_{arch}")
    return WheelPlan(arch, py, tuple(tags))


def download_wheels(plan: WheelPlan, packages, options: SetupOptions) -> list[Path]:
    """``pip download`` binary wheels for ``plan`` (with dependencies) into the host cache.

    Raises:
        DeviceError: pip could not find wheels for this platform.
    """
    dest = options.wheel_cache / plan.key
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
           "--disable-pip-version-check",
           "--python-version", plan.python_version, "--implementation", "cp", "--abi", plan.abi,
           "--abi", "abi3", "--abi", "none", "-d", str(dest)]
    for tag in plan.platforms + ("any",):
        cmd += ["--platform", tag]
    if options.index_url:
        cmd += ["--index-url", options.index_url]
    cmd += list(packages)
    log.info("downloading wheels: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=options.timeout)
    except subprocess.TimeoutExpired as e:
        raise DeviceError(f"pip download of {list(packages)} took more than {options.timeout:g} s"
                          ) from e
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise DeviceError(f"no wheels of {list(packages)} for {plan.arch} / Python "
                          f"{plan.python_version}: {tail}")
    names = set()
    for line in proc.stdout.splitlines():
        for word in line.replace("\\", "/").split():
            base = word.rsplit("/", 1)[-1]
            if base.endswith(".whl"):
                names.add(base)
    wheels = sorted(p for p in dest.glob("*.whl") if p.name in names)
    return wheels or sorted(dest.glob("*.whl"))


def setup_device(device: Device, options: Optional[SetupOptions] = None,
                 progress: Optional[Callable[[str], None]] = None) -> dict:
    """Install numpy and runtimes into a venv on ``device`` from wheels pushed from this host.

    Args:
        device: an open Device.
        options: packages, wheel cache and timeouts.
        progress: called with a short status line per step.

    Returns:
        {"device", "python" (the venv interpreter), "wheels", "upload_bytes", "runtimes"}.

    Raises:
        DeviceError: no matching wheels, venv creation or pip install failed on the device.
    """
    options = options or SetupOptions()
    say = progress or (lambda msg: log.info("%s: %s", device.name, msg))
    say("probing")
    base_python = device.spec.python if not device.spec.is_local else sys.executable
    device.use_python(base_python)  # the venv may not exist yet: probe with the base interpreter
    probe = device.probe()
    plan = plan_wheels(probe)
    say(f"downloading wheels for {plan.arch} / Python {plan.python_version}")
    wanted = list(options.packages)
    try:
        wheels = download_wheels(plan, wanted, options)
    except DeviceError as first:
        tflite = [p for p in wanted if "litert" in p or "tflite" in p]
        if not tflite or not options.fallback_runtimes:
            raise
        log.info("%s; trying %s", first, options.fallback_runtimes[0])
        wanted = [p for p in wanted if p not in tflite] + [options.fallback_runtimes[0]]
        wheels = download_wheels(plan, wanted, options)
    say(f"pushing {len(wheels)} wheels")
    before = device.upload_bytes
    remote = [device.ensure_file(w, name=w.name)[0] for w in wheels]
    venv = posixpath.join(device.workdir, VENV_NAME)
    with _setup_lock(device):
        say("creating the venv")
        # Built under a temp name: until the rename below, the agent keeps its old interpreter.
        tmp = f"{venv}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            runtimes = _build_venv(device, base_python, tmp, remote, len(wheels), options, say)
            res = device.transport.run([base_python, "-c", _FINISH_VENV, tmp, venv, VENV_MARKER,
                                        json.dumps({"wheels": [w.name for w in wheels]})],
                                       timeout=300)
            if not res.ok:
                raise DeviceError(f"{device.name}: could not move the new venv into place at "
                                  f"{venv} (exit {res.code}): {res.stderr.strip()[-300:]}")
        except BaseException:
            device.use_python(base_python)  # not the temp venv's, which goes now
            try:
                device.transport.run([base_python, "-c", _REMOVE_TREE, tmp], timeout=300)
            except DeviceError as e:  # the set-up's own error is the one to report
                log.warning("%s: could not remove %s: %s", device.name, tmp, e)
            raise
    vpy = posixpath.join(venv, "bin", "python")
    device.use_python(vpy)
    say("done")
    return {"device": device.name, "python": vpy, "wheels": [w.name for w in wheels],
            "upload_bytes": device.upload_bytes - before, "runtimes": runtimes}


def _build_venv(device: Device, base_python: str, venv: str, remote: list, n_wheels: int,
                options: SetupOptions, say) -> list:
    """Create ``venv`` on the device and install the pushed wheels; returns the runtimes the
    agent finds with it.

    Raises:
        DeviceError: venv creation or pip install failed, or no runtime works afterwards.
    """
    res = device.transport.run([base_python, "-m", "venv", "--system-site-packages", venv],
                               timeout=300)
    if not res.ok:
        raise DeviceError(f"{device.name}: `{base_python} -m venv` failed (exit {res.code}): "
                          f"{res.stderr.strip()[-300:]}; on Debian/Raspberry Pi OS install "
                          "python3-venv first")
    res = device.transport.run([base_python, "-c", _SEE_BASE_VENV, venv], timeout=300)
    if not res.ok:
        raise DeviceError(f"{device.name}: could not give the venv {base_python}'s packages "
                          f"(exit {res.code}): {res.stderr.strip()[-300:]}")
    say("installing")
    vpy = posixpath.join(venv, "bin", "python")
    # --ignore-installed: the venv sees system packages, but must use exactly the pushed wheels.
    cmd = [vpy, "-m", "pip", "install", "--no-index", "--ignore-installed", "--no-cache-dir",
           "--disable-pip-version-check", *remote]
    try:
        device.transport.run(cmd, timeout=options.timeout, check=True)
    except CommandFailed as e:
        raise DeviceError(f"{device.name}: pip install into {venv} failed: {e}") from e
    device.use_python(vpy)
    after = device.probe()
    if not after.get("runtimes"):
        raise DeviceError(f"{device.name}: installed {n_wheels} wheels but the agent finds no "
                          f"runtime with {vpy}")
    return after["runtimes"]


@contextmanager
def _setup_lock(device: Device):
    """Serialise set-ups of ``local`` (this machine's venv) on an fcntl lock in its workdir."""
    if not device.spec.is_local:
        yield
        return
    import fcntl

    path = Path(device.workdir) / f"{VENV_NAME}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # waits while another set-up builds the venv
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
