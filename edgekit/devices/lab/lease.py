"""Hold a labgrid place while measuring: acquire (waiting while someone else holds it), resolve
its ``NetworkService`` into an SSH target, release on success, failure, Ctrl-C and crash.

labgrid records a place as acquired by ``host/user``, and keeps it so when the client dies. To
recognise its own stale acquisition, edgekit writes a local record (pid, process start time,
token) next to each place it holds, under an ``flock`` shared by this user's edgekit processes:
a place held by our ``host/user`` whose record names a process that no longer runs was left by a
killed edgekit, and is taken over (and said so). A place held by our ``host/user`` without a
record was taken outside edgekit (``labgrid-client acquire``): edgekit waits for it.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from edgekit.devices.lab.client import LabClient
from edgekit.devices.lab.places import coordinator_for, is_lab, lab_of, ssh_spec
from edgekit.devices.spec import ConnectOptions, DeviceSpec
from edgekit.errors import DeviceError, InputError

log = logging.getLogger(__name__)

STATE_ENV = "EDGEKIT_LAB_STATE"  # folder of the local records (default ~/.cache/edgekit/labgrid)
POLL_S = 0.1  # while waiting: how often the (locally mirrored) place state is looked at

_LIVE: dict[str, "PlaceLease"] = {}  # token -> lease held by this process
_LIVE_LOCK = threading.Lock()
_INTERRUPTS = threading.Condition()  # notified on Ctrl-C: the waits begun before it stop
_interrupt_count = 0


@dataclass(frozen=True)
class LeaseInfo:
    """How a place was held, for the result rows.

    Attributes:
        place, coordinator: which place where.
        holder: ``host/user`` the coordinator recorded.
        waited_s: seconds spent waiting for another holder.
        lock_s: seconds spent acquiring (coordinator round trips and local record), no wait.
        connect_s: seconds to open the session with the coordinator.
        acquired_at: epoch seconds when the place was ours.
        took_over_pid: the pid of a killed edgekit whose acquisition was taken over, else None.
    """

    place: str
    coordinator: str
    holder: str
    waited_s: float
    lock_s: float
    connect_s: float
    acquired_at: float
    took_over_pid: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)


def interrupt_waits() -> None:
    """Stop the waits for a place in this process (called on Ctrl-C): each raises
    KeyboardInterrupt. Waits started later are not affected."""
    global _interrupt_count
    with _INTERRUPTS:
        _interrupt_count += 1
        _INTERRUPTS.notify_all()


def _sleep(seen: int) -> None:
    """Sleep POLL_S, or raise KeyboardInterrupt once ``interrupt_waits`` is called."""
    with _INTERRUPTS:
        if _INTERRUPTS.wait_for(lambda: _interrupt_count != seen, POLL_S):
            raise KeyboardInterrupt


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".cache" / "edgekit" / "labgrid")


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _running(record: dict) -> bool:
    pid = int(record.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    start = _proc_start(pid)
    return start is None or record.get("start") in (None, start)


class PlaceLease:
    """One hold of one place. ``acquire()`` then ``release()`` (or ``with``).

    Args:
        client: an open session with the place's coordinator (closed by ``release()``).
        place: the place's name.
        timeout: seconds to wait while someone else holds it.
        progress: called with a line when the wait starts or the holder changes.
    """

    def __init__(self, client: LabClient, place: str, timeout: float,
                 progress: Optional[Callable[[str], None]] = None):
        self.client, self.place, self.timeout = client, place, timeout
        self.progress = progress or (lambda msg: log.warning("%s", msg))
        self.token = uuid.uuid4().hex
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{client.address}-{place}")
        self._record = state_dir() / f"{slug}.json"
        self._lockfile = state_dir() / f"{slug}.lock"
        self.info: Optional[LeaseInfo] = None
        self.service: Optional[dict] = None
        self.power: tuple[str, ...] = ()  # the place's power resources
        self.release_s: Optional[float] = None
        self.released_at: Optional[float] = None

    @contextlib.contextmanager
    def _local_lock(self):
        self._lockfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lockfile, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_record(self) -> Optional[dict]:
        try:
            return json.loads(self._record.read_text())
        except (OSError, ValueError):
            return None

    def _write_record(self) -> None:
        tmp = self._record.with_suffix(f".{self.token}.tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(), "start": _proc_start(os.getpid()), "token": self.token,
            "host": socket.gethostname(), "identity": self.client.identity,
            "place": self.place, "coordinator": self.client.address, "since": time.time()}))
        os.replace(tmp, self._record)

    def _drop_record(self) -> None:
        rec = self._read_record()
        if rec and rec.get("token") == self.token:
            self._record.unlink(missing_ok=True)

    def acquire(self) -> LeaseInfo:
        """Hold the place, waiting up to ``timeout`` s while another holds it.

        Raises:
            InputError: no such place, or it has no ``NetworkService`` resource.
            DeviceError: still held by another after ``timeout`` s, or the coordinator failed.
            KeyboardInterrupt: interrupted while waiting.
        """
        t0 = time.monotonic()
        waited, announced, took_over = 0.0, None, None
        interrupts = _interrupt_count
        while True:
            t_try = time.monotonic()
            with self._local_lock():
                view = self.client.place(self.place)
                if view.network_service is None:
                    raise InputError(
                        f"labgrid place {self.place!r} has no NetworkService resource (matched: "
                        f"{', '.join(view.resources) or 'nothing'}): add one to its exporter "
                        f"and `labgrid-client -p {self.place} add-match EXPORTER/GROUP/"
                        "NetworkService`")
                self.service, self.power = view.network_service, view.power
                holder = view.holder
                if holder is None:
                    self._write_record()  # before acquiring: a kill in between leaves it stale
                    why = self.client.acquire(self.place)
                    if why is None:
                        break
                    self._drop_record()
                    holder = self.client.place(self.place).holder or why
                elif holder == self.client.identity:
                    rec = self._read_record()
                    if rec and rec.get("token") not in _LIVE and not _running(rec):
                        self._write_record()
                        took_over = int(rec.get("pid") or 0)
                        break
                    if not rec:
                        holder += " (outside edgekit: `labgrid-client -p " \
                                  f"{self.place} release` frees it)"
                    else:
                        holder += f" (edgekit pid {rec.get('pid')})"
            waited += time.monotonic() - t_try
            if time.monotonic() - t0 >= self.timeout:
                raise DeviceError(f"labgrid place {self.place} is held by {holder}; gave up "
                                  f"after {self.timeout:g} s (--lock-timeout)")
            if holder != announced:
                self.progress(f"place {self.place} held by {holder}; waiting up to "
                              f"{self.timeout:g} s")
                announced = holder
            t_sleep = time.monotonic()
            _sleep(interrupts)
            waited += time.monotonic() - t_sleep
        total = time.monotonic() - t0
        with _LIVE_LOCK:
            _LIVE[self.token] = self
        self.info = LeaseInfo(self.place, self.client.address, self.client.identity,
                              round(waited, 4), round(total - waited, 4),
                              round(self.client.connect_s, 4), time.time(), took_over)
        if took_over:
            self.progress(f"took over labgrid place {self.place}: its holder, edgekit pid "
                          f"{took_over} on this host, is gone")
        log.info("holding labgrid place %s (waited %.2f s)", self.place, waited)
        return self.info

    def release(self) -> float:
        """Release the place (if still ours) and close the session; idempotent.

        Returns:
            seconds the release took, session teardown aside (also kept as ``release_s``;
            ``released_at`` is when the coordinator had let go, epoch seconds).
        """
        t0 = time.monotonic()
        with _LIVE_LOCK:
            held = _LIVE.pop(self.token, None) is not None
        try:
            if held:
                with self._local_lock():
                    self.client.release(self.place)
                    self.released_at = time.time()  # the coordinator has let go: others may hold
                    self._drop_record()
                self.release_s = time.monotonic() - t0
        except DeviceError as e:  # the record stays: the next edgekit here takes the place over
            log.warning("could not release labgrid place %s: %s", self.place, e)
        finally:
            self.client.close()
        return self.release_s or 0.0

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


@atexit.register
def _release_all() -> None:
    """A lease still held at exit (an interrupted run whose Device was never closed)."""
    for lease in list(_LIVE.values()):
        lease.release()


def lease_for(spec: DeviceSpec, connect: ConnectOptions,
              progress: Optional[Callable[[str], None]] = None) -> PlaceLease:
    """A lease (not yet acquired) on the place of a ``labgrid:`` spec."""
    client = LabClient(coordinator_for(spec, connect), connect.connect_timeout)
    return PlaceLease(client, lab_of(spec).place, connect.lock_timeout, progress)


def open_on_place(device_cls, spec: DeviceSpec, connect: ConnectOptions, progress=None):
    """``Device.open`` for a ``labgrid:`` spec: the Device holds the place until it is closed."""
    from edgekit.devices.device import open_transport
    from edgekit.devices.spec import apply_ssh_config

    lease = lease_for(spec, connect, progress)
    try:
        lease.acquire()
        target = apply_ssh_config(ssh_spec(spec, lease.service), connect.ssh_config)
        transport = open_transport(target, connect)
        if connect.power_cycle_on_loss and lease.power:
            from edgekit.devices.lab.power import PowerCyclingTransport

            transport = PowerCyclingTransport(transport, lease, target, connect, progress)
        try:
            device = device_cls(target, transport)
        except BaseException:
            transport.close()
            raise
    except BaseException:
        lease.release()
        raise
    device.lease = lease
    return device


def check_places(specs, connect: ConnectOptions) -> None:
    """Before a bench: every ``labgrid:`` place exists and has a NetworkService (bad input,
    said at once). An unreachable coordinator is left to the device's run (its own error).

    Raises:
        InputError: an unknown place or a place without NetworkService.
    """
    by_coordinator: dict[str, list[DeviceSpec]] = {}
    for s in specs:
        if is_lab(s):
            by_coordinator.setdefault(coordinator_for(s, connect), []).append(s)
    for address, group in by_coordinator.items():
        try:
            client = LabClient(address, connect.connect_timeout)
        except DeviceError:
            continue
        with client:
            for s in group:
                view = client.place(lab_of(s).place)
                if view.network_service is None:
                    raise InputError(f"labgrid place {view.name!r} has no NetworkService "
                                     "resource: edgekit needs its address to reach the board")
