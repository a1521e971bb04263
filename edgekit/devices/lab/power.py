"""``--power-cycle-on-loss``: a board whose agent is lost mid-run (the SSH connection dropped, or
the run hung past its timeout) is power-cycled through labgrid's own power command for the held
place (``ClientSession.power``: labgrid's driver for the place's power resource), waited for
until SSH answers again, and the lost command is run once more. One power cycle per hold.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from edgekit.devices.spec import ConnectOptions, DeviceSpec
from edgekit.devices.transport import Transport
from edgekit.errors import CommandFailed, DeviceError

log = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 300.0  # how long a power-cycled board may take to answer SSH again


class PowerCyclingTransport(Transport):
    """A transport to a board on a held labgrid place that power-cycles the board once when a
    command is lost, then runs that command again.

    Args:
        inner: the open transport to the board.
        lease: the held ``PlaceLease`` (its session runs the power command).
        target: the board's SSH spec (to reconnect).
        connect: connection options.
        progress: told when the board is power-cycled.
    """

    def __init__(self, inner: Transport, lease, target: DeviceSpec, connect: ConnectOptions,
                 progress: Optional[Callable[[str], None]] = None):
        self._inner, self._lease, self._target, self._connect = inner, lease, target, connect
        self._progress = progress or (lambda msg: log.warning("%s", msg))
        self.name = inner.name
        self.cycles = 0

    def _run(self, argv, timeout):
        try:
            code, out, err = self._inner._run(argv, timeout)
        except CommandFailed:
            raise
        except DeviceError as e:
            if self.cycles:
                raise
            self._recover(str(e))
            return self._inner._run(argv, timeout)
        # A command killed under a dropped connection ends without an exit status (-1), as
        # does one killed by a signal: only an SSH session that no longer answers is a loss.
        if code == -1 and not self.cycles and not self._answers():
            self._recover(f"{argv[0]} ended without an exit status and the board stopped "
                          "answering")
            return self._inner._run(argv, timeout)
        return code, out, err

    def _answers(self) -> bool:
        try:
            return self._inner._run(["true"], self._connect.connect_timeout)[0] == 0
        except DeviceError:
            return False

    def _recover(self, error: str) -> None:
        from edgekit.devices.device import open_transport

        self.cycles += 1
        place = self._lease.place
        self._progress(f"agent lost ({error}); power-cycling labgrid place {place}")
        try:
            self._inner.close()
        except DeviceError as e:
            log.debug("closing the lost transport: %s", e)
        self._lease.client.power_cycle(place)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while True:
            try:
                self._inner = open_transport(self._target, self._connect)
                break
            except DeviceError as e:
                if time.monotonic() > deadline:
                    raise DeviceError(f"labgrid place {place} was power-cycled after the agent "
                                      f"was lost, but its board did not answer SSH within "
                                      f"{BOOT_TIMEOUT_S:g} s (lost: {error}): {e}") from e
                time.sleep(1.0)
        self._progress(f"labgrid place {place} power-cycled; its board answers again")

    # Everything else goes to the board's transport as it is.
    def put(self, local, remote, progress=None):
        return self._inner.put(local, remote, progress)

    def get(self, remote, local):
        return self._inner.get(remote, local)

    def home(self):
        return self._inner.home()

    def exists(self, remote):
        return self._inner.exists(remote)

    def remove(self, remote):
        return self._inner.remove(remote)

    def listdir(self, remote):
        return self._inner.listdir(remote)

    def makedirs(self, remote):
        return self._inner.makedirs(remote)

    def read_text(self, remote):
        return self._inner.read_text(remote)

    def write_text(self, remote, text):
        return self._inner.write_text(remote, text)

    def close(self):
        self._inner.close()
