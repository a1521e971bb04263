"""A device as the rest of edgekit sees it: a transport, a content-addressed file cache on the
device, and the agent protocol (``probe`` / ``run``) on top.
"""

from __future__ import annotations

import json
import logging
import posixpath
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from device_agents import AGENT_PATH
from device_agents.agent import ORT_OPT_LEVELS  # noqa: F401 - re-exported: the host's name for it
from edgekit.devices.spec import ConnectOptions, DeviceSpec
from edgekit.devices.transport import LocalTransport, ProgressFn, Transport
from edgekit.errors import AgentError, DeviceError
from edgekit.fsutil import sha256_file

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1  # the agent protocol this host speaks (device_agents/agent.py)
# ORT_OPT_LEVELS: ONNX Runtime's graph optimization levels as `agent.py run --ort-opt-level` names
# them, defined by the agent (which never imports edgekit) and imported above.
VENV_NAME = "venv"
#: Written last into a venv `devices setup` built (edgekit.devices.setup): a venv without it is
#: half-built (another set-up is creating it, or one died) and is never used.
VENV_MARKER = ".edgekit-complete"
PIN_NAME = "python.path"  # in the workdir: the absolute interpreter "python3" resolved to

# Runs on the device's Python: verify an uploaded temp file's sha256, then rename it into place.
_VERIFY_AND_RENAME = (
    "import hashlib,os,sys\n"
    "tmp,final,want=sys.argv[1:4]\n"
    "h=hashlib.sha256()\n"
    "f=open(tmp,'rb')\n"
    "for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
    "f.close()\n"
    "if h.hexdigest()!=want:\n"
    "    os.remove(tmp)\n"
    "    sys.stderr.write('sha256 mismatch: got %s\\n' % h.hexdigest())\n"
    "    sys.exit(5)\n"
    "os.makedirs(os.path.dirname(final), exist_ok=True)\n"
    "os.replace(tmp,final)\n"
)

# Runs on the device's Python: print a file's sha256 (used when the agent cannot check itself).
_SHA256_OF = (
    "import hashlib,sys\n"
    "h=hashlib.sha256()\n"
    "f=open(sys.argv[1],'rb')\n"
    "for b in iter(lambda: f.read(1<<20), b''): h.update(b)\n"
    "print(h.hexdigest())\n"
)
CACHE_CORRUPT = "CacheCorrupt"  # the agent's error type: a cached file's sha256 has changed


@dataclass(frozen=True)
class RunSettings:
    """What one agent run is asked to do (``edgekit.bench.BenchOptions`` extends it).

    Attributes:
        runs: timed inferences per artifact.
        warmup: untimed inferences before them.
        threads: runtime threads.
        runtime: force a runtime (e.g. ``tflite_runtime``); default: the first found.
        timeout: seconds one artifact may take on a device before it is killed.
        memory_limit_mb: cap the measuring process's address space, to see whether a model
            fits a smaller board (None: no cap).
        xnnpack: TFLite artifacts run with LiteRT's default XNNPACK delegate (False: its
            built-in kernels only). ONNX artifacts ignore it.
        ort_opt_level: ONNX Runtime's graph optimization level (``ORT_OPT_LEVELS``). TFLite
            artifacts ignore it.
        per_layer: after the timed runs, time each layer in a short separate pass; the run
            document then carries ``per_layer`` (see docs/results-schema.md).
    """

    runs: int = 100
    warmup: int = 10
    threads: int = 1
    runtime: Optional[str] = None
    timeout: float = 900.0
    memory_limit_mb: Optional[int] = None
    xnnpack: bool = True
    ort_opt_level: str = "all"
    per_layer: bool = False


def open_transport(spec: DeviceSpec, options: Optional[ConnectOptions] = None) -> Transport:
    """LocalTransport for ``local``, SSHTransport otherwise (paramiko is imported only then)."""
    options = options or ConnectOptions()
    if spec.is_local:
        return LocalTransport(spec.name, options.command_timeout)
    from edgekit.devices.ssh import SSHTransport  # keep paramiko out of local runs

    return SSHTransport(spec, options)


class Device:
    """One connected device: cache uploads, probe it, run the agent on it.

    Args:
        spec: the device.
        transport: an open transport to it.
    """

    def __init__(self, spec: DeviceSpec, transport: Transport):
        self.spec = spec
        self.transport = transport
        self.name = spec.name
        home = transport.home()
        wd = spec.workdir
        if wd == "~" or wd.startswith("~/"):
            wd = posixpath.join(home, wd[2:]) if len(wd) > 1 else home
        elif not wd.startswith("/"):
            wd = posixpath.join(home, wd)
        self.workdir = wd
        self._python: Optional[str] = None
        self._agent: Optional[str] = None
        self._agent_sha: Optional[str] = None
        # cache path on the device -> (local file, sha256, name): what to upload again when the
        # agent finds the device's copy damaged
        self._sources: dict[str, tuple[Path, str, str]] = {}
        self._repaired: set[str] = set()  # warned about and uploaded again (once per path)
        self.upload_bytes = 0  # bytes sent by this Device object so far
        self.lease = None  # a labgrid place held while this Device is open (edgekit.devices.lab)

    @classmethod
    def open(cls, spec: DeviceSpec, options: Optional[ConnectOptions] = None,
             progress: Optional[Callable[[str], None]] = None) -> "Device":
        """Connect to ``spec``. A ``labgrid:PLACE`` spec first acquires the place (waiting up to
        ``options.lock_timeout`` s, ``progress`` told who holds it) and holds it until
        ``close()``.

        Raises:
            DeviceError / HostKeyError: see SSHTransport; a place still held after the wait.
            InputError: an unknown labgrid place, or one without a NetworkService.
        """
        from edgekit.devices.lab.places import is_lab

        if is_lab(spec):
            from edgekit.devices.lab.lease import open_on_place

            return open_on_place(cls, spec, options or ConnectOptions(), progress)
        transport = open_transport(spec, options)
        try:
            return cls(spec, transport)
        except DeviceError:
            transport.close()
            raise

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            if self.lease is not None:
                self.lease.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- python -------------------------------------------------------------------------------
    @property
    def venv_python(self) -> str:
        return posixpath.join(self.workdir, VENV_NAME, "bin", "python")

    @property
    def python(self) -> str:
        """The interpreter the agent runs with: the setup venv if there is one, else the spec's
        (resolved to the absolute path a previous run reported, when that still exists)."""
        if self._python is None:
            if self.transport.exists(posixpath.join(self.workdir, VENV_NAME, VENV_MARKER)):
                self._python = self.venv_python  # made by `devices setup`, and complete
            elif self.spec.explicit_python:
                self._python = self.spec.python
            elif self.spec.is_local:
                self._python = sys.executable  # the local device runs in edgekit's own Python
            else:
                pinned = (self.transport.read_text(self._pin_file) or "").strip()
                ok = pinned.startswith("/") and self.transport.exists(pinned)
                self._python = pinned if ok else self.spec.python
        return self._python

    @property
    def _pin_file(self) -> str:
        return posixpath.join(self.workdir, PIN_NAME)

    def use_python(self, python: str) -> None:
        """Run the agent with this interpreter from now on (``devices setup`` switches venvs)."""
        self._python = python

    def pin_python(self, probe_doc: dict) -> None:
        """Remember (on the device) the absolute interpreter the agent reported, so later
        sessions skip PATH lookups and pyenv-style shims; not when the user named one."""
        exe = (probe_doc.get("python") or {}).get("executable")
        if not exe or self.spec.explicit_python or self.spec.is_local or exe == self._python:
            return
        if self.python in (self.spec.python,):
            self._python = exe
            try:
                self.transport.write_text(self._pin_file, exe + "\n")
            except DeviceError as e:  # only an optimisation
                log.debug("%s: cannot pin the interpreter: %s", self.name, e)

    # -- cache --------------------------------------------------------------------------------
    def cached_path(self, sha256: str, name: str) -> str:
        return posixpath.join(self.workdir, sha256, name)

    def ensure_file(self, local, sha256: Optional[str] = None, name: Optional[str] = None,
                    progress: Optional[ProgressFn] = None) -> tuple[str, int]:
        """Make ``local`` available in the device cache; upload only if it is not there yet.

        The upload goes to a temp name, is checked by sha256 on the device, then renamed, so the
        cache never holds a partial file.

        Args:
            local: the file on this machine.
            sha256: its hash if known (else computed).
            name: file name in the cache entry (default: ``artifact`` + the file's extension).
            progress: called with (bytes_sent, bytes_total) during the upload.

        Returns:
            (path on the device, bytes uploaded: 0 on a cache hit).

        Raises:
            DeviceError: the upload failed or the device's copy does not match.
        """
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"cannot upload {local}: no such file")
        sha256 = sha256 or sha256_file(local)
        name = name or "artifact" + local.suffix.lower()
        final = self.cached_path(sha256, name)
        self._sources[posixpath.normpath(final)] = (local, sha256, name)
        if self.transport.exists(final):
            return final, 0
        self.transport.makedirs(self.workdir)
        prefix = f".{sha256[:16]}."
        tmp = posixpath.join(self.workdir, f"{prefix}{uuid.uuid4().hex[:8]}.part")
        try:
            sent = self.transport.put(local, tmp, progress)
            res = self.transport.run([self.python, "-c", _VERIFY_AND_RENAME, tmp, final, sha256],
                                     timeout=300)
            if not res.ok:
                raise DeviceError(f"{self.name}: upload of {local} did not verify on the device "
                                  f"(exit {res.code}): {res.stderr.strip()[-300:]}")
        except DeviceError:
            self._try_remove(tmp)
            if self._exists_quietly(final):
                # A concurrent upload of the same content finished first and removed our temp
                # file (see below): the cache holds the verified file all the same.
                return final, 0
            raise
        # Our copy is in place: any other temp file of this content is a dead upload's leftover
        # (a live concurrent one notices its temp is gone and finds the final file).
        for entry in self.transport.listdir(self.workdir):
            if entry.startswith(prefix) and entry.endswith(".part"):
                self._try_remove(posixpath.join(self.workdir, entry))
        self.upload_bytes += sent
        log.info("%s: uploaded %s (%d bytes) to %s", self.name, local.name, sent, final)
        return final, sent

    def _exists_quietly(self, path: str) -> bool:
        try:
            return self.transport.exists(path)
        except DeviceError:
            return False

    def _try_remove(self, path: str) -> None:
        try:
            self.transport.remove(path)
        except DeviceError as e:
            log.debug("%s: could not remove temp file %s: %s", self.name, path, e)

    def cached_sha256(self, remote: str) -> Optional[str]:
        """The sha256 a cache path on the device holds, when this Device put it there (or found
        it there) with ``ensure_file``; else None."""
        source = self._sources.get(posixpath.normpath(remote))
        return source[1] if source else None

    def _upload_again(self, remote: str) -> bool:
        """Replace a cache entry found damaged on the device; say so once. False when this
        Device does not know where the file came from."""
        key = posixpath.normpath(remote)
        source = self._sources.get(key)
        if source is None or key in self._repaired:
            return False
        local, sha256, name = source
        self._repaired.add(key)
        log.warning("%s: the device's cached copy of %s (%s) no longer matches its sha256 "
                    "(damaged on the device); uploading it again", self.name, local.name, remote)
        self.transport.remove(remote)
        self.ensure_file(local, sha256, name)
        return True

    # -- agent --------------------------------------------------------------------------------
    def agent_path(self) -> str:
        """The agent's path on the device (uploaded on first use, cached by content)."""
        if self._agent is None:
            self._agent_sha = sha256_file(AGENT_PATH)
            self._agent, _ = self.ensure_file(AGENT_PATH, self._agent_sha, name="agent.py")
        return self._agent

    def _agent_damaged(self) -> bool:
        """After the agent failed to answer: if its cached file is damaged, upload it again."""
        try:
            res = self.transport.run([self.python, "-c", _SHA256_OF, self.agent_path()],
                                     timeout=120)
        except DeviceError as e:
            log.debug("%s: cannot check the agent's file: %s", self.name, e)
            return False
        found = res.stdout.strip() if res.ok else None
        return found is not None and found != self._agent_sha and \
            self._upload_again(self.agent_path())

    def _agent_doc(self, argv: list[str], timeout: float, what: str) -> tuple[dict, object]:
        """Run the agent. A cache entry found damaged (the agent itself, a model, eval data) is
        uploaded again and the command run again; each path at most once per Device, so this
        ends."""
        try:
            doc, res = self._agent_once(argv, timeout, what)
        except AgentError:
            if self._agent_damaged():  # a damaged agent file may not even answer
                return self._agent_doc(argv, timeout, what)
            raise
        err = doc.get("error") or {}
        if err.get("type") == CACHE_CORRUPT:
            repaired = [self._upload_again(c.get("path", "")) for c in err.get("corrupt", [])]
            if repaired and all(repaired):
                return self._agent_doc(argv, timeout, what)
        return doc, res

    def _agent_once(self, argv: list[str], timeout: float, what: str) -> tuple[dict, object]:
        agent = self.agent_path()
        res = self.transport.run([self.python, agent, *argv, "--agent-sha256", self._agent_sha],
                                 timeout=timeout)
        lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
        doc = None
        if lines:
            try:
                doc = json.loads(lines[-1])
            except json.JSONDecodeError:
                doc = None
        if not isinstance(doc, dict):
            tail = " | ".join(res.stderr.strip().splitlines()[-5:]) or "no output"
            how = "was killed or lost" if res.code == -1 else f"exited {res.code}"
            raise AgentError(f"{self.name}: the agent {how} during {what} without a result "
                             f"document; stderr: {tail}")
        check_protocol(doc, self.name)
        return doc, res

    def probe(self) -> dict:
        """The agent's ``probe`` document (arch, OS, CPU, memory, Python, runtimes).

        Raises:
            AgentError: no answer, or a protocol mismatch.
            DeviceError: the device cannot run Python at all.
        """
        doc, res = self._agent_doc(["probe", "--cache-dir", self.workdir], 120, "probe")
        doc["python_used"] = self.python
        doc["device"] = self.name
        return doc

    def run_model(self, remote_model: str, settings: RunSettings, eval_path: Optional[str] = None,
                  reference_path: Optional[str] = None) -> dict:
        """Benchmark one cached model with the agent (in a fresh process on the device).

        Returns:
            the agent's run document; ``ok`` is False with ``error`` for a failed run (crash,
            OOM, bad model), including when the agent itself was killed.

        Raises:
            DeviceError: the connection failed. AgentError: protocol mismatch.
        """
        argv = ["run", remote_model, "--runs", str(settings.runs), "--warmup",
                str(settings.warmup), "--threads", str(settings.threads),
                "--timeout", str(settings.timeout)]
        if settings.runtime:
            argv += ["--runtime", settings.runtime]
        if settings.memory_limit_mb:
            argv += ["--memory-limit-mb", str(settings.memory_limit_mb)]
        # Only what differs from the agent's defaults: the argv of a default run is unchanged.
        if not settings.xnnpack:
            argv += ["--xnnpack", "off"]
        if settings.ort_opt_level != "all":
            argv += ["--ort-opt-level", settings.ort_opt_level]
        if settings.per_layer:
            argv += ["--per-layer"]
        if eval_path:
            argv += ["--eval", eval_path]
        if reference_path:
            argv += ["--reference", reference_path]
        # The agent checks the cached files against their content address before using them.
        for flag, path in (("--sha256", remote_model), ("--eval-sha256", eval_path),
                           ("--reference-sha256", reference_path)):
            sha256 = self.cached_sha256(path) if path else None
            if sha256:
                argv += [flag, sha256]
        try:
            doc, _ = self._agent_doc(argv, settings.timeout + 60, f"the run of {remote_model}")
        except AgentError as e:
            if "protocol" in str(e):
                raise
            return {"protocol": PROTOCOL_VERSION, "kind": "run", "ok": False,
                    "error": {"type": "AgentLost", "message": str(e)}}
        return doc

    def layers(self, remote_model: str, remote_reference: str, *,
               remote_artifact: Optional[str] = None, ort_opt_level: str = "all",
               xnnpack: bool = True, timeout: float = 600.0) -> dict:
        """Compare a cached model's intermediate tensors with a cached host reference
        (``agent.py layers``; see ``edgekit.divergence``); with ``remote_artifact``, the
        unedited artifact's outputs too.

        Returns:
            the agent's ``layers`` document (``ok`` False with ``error`` on failure).

        Raises:
            DeviceError: the connection failed. AgentError: no answer, or a protocol mismatch.
        """
        argv = ["layers", remote_model, "--reference", remote_reference]
        if remote_artifact:
            argv += ["--artifact", remote_artifact]
        if ort_opt_level != "all":
            argv += ["--ort-opt-level", ort_opt_level]
        if not xnnpack:
            argv += ["--xnnpack", "off"]
        for flag, path in (("--sha256", remote_model), ("--reference-sha256", remote_reference),
                           ("--artifact-sha256", remote_artifact)):
            sha256 = self.cached_sha256(path) if path else None
            if sha256:
                argv += [flag, sha256]
        doc, _ = self._agent_doc(argv, timeout, f"the layer comparison of {remote_model}")
        return doc


def check_protocol(doc: dict, device: str) -> None:
    """Raise AgentError unless ``doc`` speaks this host's agent protocol."""
    got = doc.get("protocol")
    if got != PROTOCOL_VERSION:
        raise AgentError(
            f"{device}: the agent answered with protocol {got!r}, this edgekit speaks "
            f"{PROTOCOL_VERSION}; upgrade edgekit or clear the device cache (~/.cache/edgekit) so "
            "the matching agent is uploaded")
