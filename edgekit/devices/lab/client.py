"""labgrid's client API (an asyncio ``ClientSession`` on a gRPC channel), wrapped for edgekit's
threads: one event loop per ``LabClient`` runs in its own thread, and every call is a blocking
method. labgrid is imported here only, and only when a ``labgrid:`` device is used.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from edgekit.errors import DeviceError, InputError

log = logging.getLogger(__name__)

DEFAULT_PORT = 20408  # labgrid-coordinator's default
INSTALL_HINT = "labgrid places need the labgrid client: pip install 'edgekit[lab]'"


def _labgrid():
    """labgrid's client modules, or an InputError saying what to install."""
    try:
        import grpc
        from labgrid.remote.client import ClientSession
        from labgrid.remote.generated import labgrid_coordinator_pb2
        from labgrid.util.proxy import proxymanager
    except ImportError as e:
        raise InputError(f"{INSTALL_HINT} ({e})") from e
    return grpc, ClientSession, labgrid_coordinator_pb2, proxymanager


@dataclass(frozen=True)
class PlaceView:
    """What the coordinator says about one place (a snapshot).

    Attributes:
        name: the place's name.
        holder: ``host/user`` that acquired it, None when free.
        network_service: the matched ``NetworkService`` resource's ``address``, ``username``,
            ``port`` (None when the place has none).
        power: class names of the matched power resources (for ``--power-cycle-on-loss``).
        tags, comment, aliases: the place's labels.
        exporters: ``exporter/group/cls/name`` of every matched resource.
    """

    name: str
    holder: Optional[str]
    network_service: Optional[dict]
    power: tuple[str, ...] = ()
    tags: dict = field(default_factory=dict)
    comment: str = ""
    aliases: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"name": self.name, "holder": self.holder, "network_service": self.network_service,
                "power": list(self.power), "tags": dict(self.tags), "comment": self.comment,
                "aliases": list(self.aliases), "resources": list(self.resources)}


_CHANNEL_OPTIONS = [  # labgrid.remote.client.ClientSession's own
    ("grpc.keepalive_time_ms", 7500),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.http2.max_pings_without_data", 0),
]
_POWER = ("PowerPort", "PDUDaemonPort", "SysfsGPIO", "YKUSH")  # class-name parts of power resources


def list_places(coordinator: str, timeout: float = 15.0) -> list[PlaceView]:
    """The places of a labgrid lab (``edgekit devices list --labgrid``).

    Args:
        coordinator: ``HOST[:PORT]`` of the labgrid coordinator.
        timeout: seconds to reach it.

    Returns:
        every place, sorted by name: its board's NetworkService, holder, tags, comment.

    Raises:
        InputError: labgrid is not installed. DeviceError: the coordinator is not reachable.
    """
    with LabClient(coordinator, timeout) as client:
        return client.places()


class LabClient:
    """A session with one labgrid coordinator (labgrid's ``ClientSession``), usable from any
    thread. Close it (or use ``with``) to stop its event loop.

    Args:
        address: ``HOST[:PORT]`` of the coordinator (port 20408 by default).
        timeout: seconds to reach the coordinator.

    Raises:
        InputError: labgrid is not installed.
        DeviceError: the coordinator is not reachable.
    """

    def __init__(self, address: str, timeout: float = 10.0):
        t0 = time.monotonic()
        grpc, self._ClientSession, self._pb2, proxymanager = _labgrid()
        self._grpc = grpc
        self.address = proxymanager.get_grpc_address(address, default_port=DEFAULT_PORT)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"edgekit-labgrid-{self.address}")
        self._thread.start()
        self._session = None
        try:
            self._session = self._call(self._start(timeout), timeout + 10)
        except BaseException:
            self.close()
            raise
        self.identity = f"{self._session.gethostname()}/{self._session.getuser()}"
        self.connect_s = time.monotonic() - t0  # import, reach, subscribe: the session's cost

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, coro, timeout: Optional[float] = 30.0):
        if self._session is not None and self._session.stopping.is_set():
            coro.close()
            raise DeviceError(f"lost the connection to labgrid coordinator {self.address}")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as e:
            future.cancel()
            raise DeviceError(f"labgrid coordinator {self.address} did not answer within "
                              f"{timeout:.0f} s") from e

    async def _start(self, timeout: float):
        # Reach the coordinator first: labgrid's own start() logs a connection error on the root
        # logger and waits, where edgekit says one line.
        grpc = self._grpc
        channel = grpc.aio.insecure_channel(self.address)
        try:
            deadline = self._loop.time() + timeout
            state = channel.get_state(try_to_connect=True)
            while state != grpc.ChannelConnectivity.READY:
                left = deadline - self._loop.time()
                if state == grpc.ChannelConnectivity.TRANSIENT_FAILURE or left <= 0:
                    raise DeviceError(
                        f"labgrid coordinator {self.address} is not reachable (connection "
                        f"{'refused' if left > 0 else 'timed out'}): start labgrid-coordinator "
                        "there, or check --labgrid / LG_COORDINATOR / devices.toml [labgrid]")
                try:
                    await asyncio.wait_for(channel.wait_for_state_change(state), left)
                except asyncio.TimeoutError:
                    pass
                state = channel.get_state(try_to_connect=True)
        finally:
            await channel.close()
        session = self._ClientSession(self.address, self._loop)
        # gRPC shares one connection between channels of equal options in a process, and the
        # coordinator keys its clients by connection: two sessions of one process (two places
        # held at once) must have their own. Same keepalive options as labgrid's own channel.
        from labgrid.remote.generated.labgrid_coordinator_pb2_grpc import CoordinatorStub

        unused, session.channel = session.channel, grpc.aio.insecure_channel(
            self.address, options=[*_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
        session.stub = CoordinatorStub(session.channel)
        await unused.close()
        try:
            await session.start()
        except Exception as e:  # labgrid raises its ServerError or grpc errors here
            raise DeviceError(f"labgrid coordinator {self.address}: {e}") from e
        return session

    def close(self) -> None:
        """End the session and stop the event loop (idempotent)."""
        if self._loop.is_closed():
            return
        if self._session is not None and self._thread.is_alive():
            session, self._session = self._session, None

            async def stop():
                await session.stop()
                await session.close()

            try:
                asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
            except Exception as e:  # noqa: BLE001 - a teardown error must not hide the job's own
                log.debug("closing the labgrid session: %s", e)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- places ---------------------------------------------------------------------------------
    def places(self) -> list[PlaceView]:
        """Every place, sorted by name."""
        return self._call(self._views(None))

    def place(self, name: str) -> PlaceView:
        """One place by its exact name.

        Raises:
            InputError: no place of that name (the message lists the known ones).
        """
        return self._call(self._views(name))[0]

    async def _views(self, name: Optional[str]) -> list[PlaceView]:
        await self._session.sync_with_coordinator()
        places = self._session.places
        if name is not None and name not in places:
            names = sorted(places)
            known = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if names[12:] else "")
            known = known or "none"
            raise InputError(f"labgrid place {name!r} does not exist on coordinator "
                             f"{self.address} (places: {known}; see `edgekit devices list "
                             f"--labgrid {self.address}`)")
        names = [name] if name is not None else sorted(places)
        return [self._view(places[n]) for n in names]

    def _view(self, place) -> PlaceView:
        service, power, matched = None, [], []
        for exporter, groups in sorted(self._session.resources.items()):
            for group, resources in sorted(groups.items()):
                for rname, entry in sorted(resources.items()):
                    if not entry.data or "cls" not in entry.data:
                        continue  # deleted
                    path = (exporter, group, entry.cls, rname)
                    if not place.hasmatch(path):
                        continue
                    matched.append("/".join(path))
                    if entry.cls == "NetworkService" and service is None:
                        p = entry.params
                        service = {"address": p.get("address"), "username": p.get("username"),
                                   "port": int(p.get("port") or 22), "available": entry.avail}
                    elif any(k in entry.cls for k in _POWER):
                        power.append(entry.cls)
        return PlaceView(place.name, place.acquired or None, service, tuple(power),
                         dict(place.tags), place.comment or "", tuple(sorted(place.aliases)),
                         tuple(matched))

    # -- locking --------------------------------------------------------------------------------
    def acquire(self, name: str) -> Optional[str]:
        """Try once to acquire place ``name`` for this session's ``host/user``.

        Returns:
            None when acquired; otherwise why not (the coordinator's words: held, or its
            resources are held through another place).

        Raises:
            InputError: no such place.
            DeviceError: the coordinator failed otherwise.
        """
        return self._call(self._acquire(name))

    async def _acquire(self, name: str) -> Optional[str]:
        grpc = self._grpc
        try:
            await self._session.stub.AcquirePlace(self._pb2.AcquirePlaceRequest(placename=name))
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InputError(f"labgrid place {name!r} does not exist on coordinator "
                                 f"{self.address}") from e
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION,
                            grpc.StatusCode.PERMISSION_DENIED):
                return e.details()
            raise DeviceError(f"labgrid coordinator {self.address}: acquiring {name}: "
                              f"{e.details()}") from e
        await self._session.sync_with_coordinator()
        return None

    def release(self, name: str) -> None:
        """Release place ``name`` if this session's ``host/user`` still holds it (a place
        someone else took over meanwhile is left alone).

        Raises:
            DeviceError: the coordinator failed.
        """
        self._call(self._release(name))

    async def _release(self, name: str) -> None:
        grpc = self._grpc
        request = self._pb2.ReleasePlaceRequest(placename=name, fromuser=self.identity)
        try:
            await self._session.stub.ReleasePlace(request)
        except grpc.aio.AioRpcError as e:
            raise DeviceError(f"labgrid coordinator {self.address}: releasing {name}: "
                              f"{e.details()}") from e
        await self._session.sync_with_coordinator()

    # -- power ----------------------------------------------------------------------------------
    def power_cycle(self, name: str) -> None:
        """Power-cycle the board of place ``name`` (held by this session) with labgrid's own
        client power command, i.e. labgrid's driver for the place's power resource.

        Raises:
            DeviceError: the place has no usable power resource, or the power switch failed.
        """
        import argparse

        from labgrid.remote.client import Error as LabgridClientError

        session = self._session
        # ClientSession.power() reads its arguments from the command line's namespace. It runs
        # here, off the event loop's thread: labgrid's power drivers block.
        session.args = argparse.Namespace(place=name, action="cycle", delay=None, name=None,
                                          state=None, initial_state=None)
        try:
            session.power()
        except LabgridClientError as e:
            raise DeviceError(f"labgrid place {name}: cannot power-cycle: {e}") from e
        except Exception as e:  # labgrid's drivers raise their backends' own errors
            raise DeviceError(f"labgrid place {name}: power cycle failed: "
                              f"{type(e).__name__}: {e}") from e
