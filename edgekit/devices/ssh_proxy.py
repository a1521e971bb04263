"""What SSHTransport tunnels through: ProxyJump hops and a ProxyCommand process.

Part of the SSH transport (with ``ssh.py``, the only modules that import paramiko).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import tempfile
import threading
import time
from typing import Optional

import paramiko

from edgekit.errors import DeviceError, InputError

log = logging.getLogger(__name__)

#: Characters of a failed ProxyCommand's stderr quoted in the error.
STDERR_TAIL = 300


def split_jumps(text: str) -> list[str]:
    """The hops of a ProxyJump value, first hop first.

    Raises:
        InputError: an empty hop (``a,,b``).
    """
    hops = [h.strip() for h in text.split(",")]
    if not all(hops):
        raise InputError(f"ProxyJump {text!r} has an empty hop: expected "
                         "[user@]host[:port] hops separated by commas")
    return hops


class ProxyProcess(paramiko.ProxyCommand):
    """A ProxyCommand run as OpenSSH runs it (``exec`` in the user's shell), with its stderr in
    a file (a pipe nobody reads would block a chatty ``ssh -v``), EOF when it exits (paramiko's
    own spins until its timeout), and a reaped process on close.

    Args:
        command: the command, %-tokens already expanded.
    """

    def __init__(self, command: str):  # not super().__init__: it would run it without a shell
        self.command = command
        self.cmd = [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]
        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(self.cmd, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self._stderr,
                                            bufsize=0)
        except OSError as e:
            self._stderr.close()
            raise DeviceError(f"cannot start ProxyCommand `{command}`: {e}") from e
        self.timeout: Optional[float] = None
        self.stderr_text: Optional[str] = None  # what it wrote to stderr, once closed
        self.killed = False  # ended by close(), not by itself
        self._eof = False
        # paramiko's transport thread and the device's close() may both close us, at once
        self._close_lock = threading.Lock()
        self._reaped = False

    def recv(self, size: int) -> bytes:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise socket.timeout()
            try:
                ready, _, _ = select.select([self.process.stdout], [], [], left)
                if ready:
                    data = os.read(self.process.stdout.fileno(), size)
                    self._eof = self._eof or not data  # b"": its stdout closed, it is ending
                    return data
            except OSError as e:
                raise paramiko.ProxyCommandFailure(self.command, e.strerror) from e

    def close(self) -> None:
        with self._close_lock:
            if not self._reaped:
                self._close()
                self._reaped = True

    def _close(self) -> None:
        if self._eof:  # it closed its stdout: let it finish, so its exit is its own
            try:
                self.process.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.killed = True
            self.process.terminate()
            try:
                self.process.wait(2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.stderr_text is None:  # kept for failure(): paramiko closes us on errors
            self._stderr.seek(0)
            self.stderr_text = self._stderr.read().decode("utf-8", "replace")
        for pipe in (self.process.stdin, self.process.stdout, self._stderr):
            try:
                pipe.close()
            except OSError as e:  # a broken pipe to a command that is gone
                log.debug("ProxyCommand %s: close: %s", self.command, e)

    def ended_early(self, wait: float = 0.5) -> bool:
        """Whether the command ended by itself (waiting up to ``wait`` s), not closed by us."""
        if self.killed:
            return False
        try:
            self.process.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        return True

    def failure(self, device: str) -> DeviceError:
        """The one-line error for a command that exited before the SSH session was up."""
        self.close()
        tail = " | ".join(ln.strip() for ln in self.stderr_text.splitlines() if ln.strip())
        if len(tail) > STDERR_TAIL:
            tail = "..." + tail[-STDERR_TAIL:]
        return DeviceError(
            f"ProxyCommand for {device} (`{self.command}`) exited with code "
            f"{self.process.returncode} before the SSH handshake: {tail or 'no stderr'}; run it "
            "by hand (or `ssh -v` the alias) to see why")

