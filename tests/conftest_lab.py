"""A real labgrid lab on 127.0.0.1 for tests and benchmarks: ``labgrid-coordinator``, one
``labgrid-exporter`` whose groups export the test sshd as ``NetworkService`` (one group per
board, so each place has its own), and places made with ``labgrid-client``.

Not a pytest plugin (imported by tests/devices/test_labgrid.py and benchmarks/bench_lab.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest_ssh import _tmpdir, free_port, wait_port

BIN = Path(sys.executable).parent


@dataclass
class Lab:
    """One running coordinator + exporter and the files that reach their boards."""

    address: str  # 127.0.0.1:PORT of the coordinator
    folder: Path
    boards: list[str]  # exporter groups with a NetworkService (the test sshd)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def client(self, *args, user: str | None = None, check: bool = True):
        """Run ``labgrid-client -x ADDRESS ARGS`` (as LG_USERNAME=user when given)."""
        env = dict(os.environ, LG_COORDINATOR=self.address)
        if user:
            env["LG_USERNAME"] = user
        return subprocess.run([str(BIN / "labgrid-client"), "-x", self.address, *args],
                              env=env, capture_output=True, text=True, timeout=60, check=check)

    def make_place(self, name: str, group: str) -> str:
        """A place matching every resource of exporter group ``group``."""
        self.client("-p", name, "create")
        self.client("-p", name, "add-match", f"edgekit-lab/{group}/*")
        return name

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def start_lab(ssh_port: int, boards: int = 6, user: str = "root", extra_yaml: str = "") -> Lab:
    """Start a coordinator and an exporter exporting ``boards`` NetworkServices (all the sshd on
    ``ssh_port``) plus a group ``nonet`` with only a power port (a place without
    NetworkService), and the groups of ``extra_yaml`` (exporter YAML)."""
    if not (BIN / "labgrid-coordinator").exists() and shutil.which("labgrid-coordinator") is None:
        raise RuntimeError("labgrid-coordinator not installed (pip install 'edgekit[lab]')")
    folder = _tmpdir("edgekit-lab-")
    port = free_port()
    address = f"127.0.0.1:{port}"
    names = [f"board{i}" for i in range(1, boards + 1)]
    yaml = "".join(f"{g}:\n  NetworkService:\n    address: 127.0.0.1\n    username: {user}\n"
                   f"    port: {ssh_port}\n" for g in names)
    yaml += ("nonet:\n  NetworkPowerPort:\n    model: simplerest\n"
             "    host: 'http://127.0.0.1:9/{index}'\n    index: 0\n") + extra_yaml
    (folder / "exporter.yaml").write_text(yaml)
    lab = Lab(address, folder, names)
    log = open(folder / "coordinator.log", "w")
    # The coordinator keeps places.yaml in its working folder.
    lab.procs.append(subprocess.Popen([str(BIN / "labgrid-coordinator"), "-l", address],
                                      cwd=folder, stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL))
    try:
        wait_port(port, 30)
        log = open(folder / "exporter.log", "w")
        lab.procs.append(subprocess.Popen(
            [str(BIN / "labgrid-exporter"), "-c", address, "-n", "edgekit-lab",
             str(folder / "exporter.yaml")], cwd=folder, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while True:
            out = lab.client("resources", check=False).stdout
            groups = names + ["nonet"] + [ln[:-1] for ln in extra_yaml.splitlines()
                                          if ln.endswith(":") and not ln.startswith(" ")]
            if all(f"edgekit-lab/{g}/" in out for g in groups):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the exporter did not register its resources: "
                                   f"{(folder / 'exporter.log').read_text()[-2000:]}")
            time.sleep(0.3)
    except BaseException:
        lab.stop()
        raise
    return lab
