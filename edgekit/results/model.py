"""The ``Result`` value (one artifact on one device) and its versioned JSON form.

A result's identity across databases is ``(uid, device, artifact sha256)``. The row ``id`` is
only the id in one database; ``uid`` is given once, when a result is first stored, and travels
with it through export and import. Results written before uids existed get one derived from
their content (:func:`content_uid`), so every copy of an old database derives the same uids.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from edgekit.envelope import unwrap, wrap

RESULT_SCHEMA = "edgekit.result"
RESULT_VERSION = 1

# The namespace of content-derived uids (uuid5): fixed forever, or old results change identity.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "edgekit.result")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Result:
    """One artifact benchmarked on one device (or the error that stopped it).

    Attributes:
        device: the device name as given (``local``, ``pi4``, ``user@host:port``).
        artifact: {path, name, sha256, target, format, precision, bytes, fidelity}.
        settings: {runs, warmup, threads, runtime, eval_sha256}.
        ok: whether the agent produced measurements.
        error: why not (one line, naming the cause), else None.
        metrics: the agent's run document (latency_ms, memory, accuracy...), None on error.
        device_info: the agent's probe document for the device, None if unreachable.
        upload_bytes: bytes sent to the device for this result (0 on a cache hit).
        started_at, finished_at: UTC ISO-8601 timestamps.
        id: the row id once stored (in that database only).
        uid: the result's identity in every database, given when it is first stored.
        lease: for a ``labgrid:PLACE`` device, how the place was held while measuring
            (``edgekit.devices.lab.lease.LeaseInfo``: place, coordinator, holder, waited_s,
            lock_s, acquired_at, took_over_pid); None otherwise.
    """

    device: str
    artifact: dict
    settings: dict
    ok: bool
    error: Optional[str] = None
    metrics: Optional[dict] = None
    device_info: Optional[dict] = None
    upload_bytes: int = 0
    started_at: str = field(default_factory=_now)
    finished_at: str = field(default_factory=_now)
    id: Optional[int] = None
    uid: Optional[str] = None
    lease: Optional[dict] = None

    @property
    def succeeded(self) -> bool:
        return self.ok

    @property
    def failed(self) -> bool:
        return not self.ok

    @property
    def settings_key(self) -> str:
        return json.dumps(self.settings, sort_keys=True)

    @property
    def sha256(self) -> str:
        """The measured artifact's sha256 ("" when unknown)."""
        return self.artifact.get("sha256") or ""

    def latency(self, stat: str = "p50") -> Optional[float]:
        return (self.metrics or {}).get("latency_ms", {}).get(stat)

    def to_dict(self) -> dict:
        """The versioned JSON envelope (docs/results-schema.md)."""
        return wrap(RESULT_SCHEMA, RESULT_VERSION, asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "Result":
        """Read a ``to_dict`` document. Fields this edgekit does not know are left out: new
        optional fields may be added within a schema version (docs/results-schema.md).

        Raises:
            DocumentError: another schema or an unsupported version.
        """
        data = unwrap(d, RESULT_SCHEMA, {RESULT_VERSION: None},
                      rerun="re-run `edgekit bench` to measure it again")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Fields added after uids existed: left out of the content uid when unset, so a result's derived
# uid never changes when edgekit learns a new field.
_FIELDS_AFTER_UIDS = ("lease",)


def content_uid(result: Result) -> str:
    """A uid derived from everything a result holds but its row id: the same measurement gives
    the same uid in every copy of a database written before uids existed."""
    data = {k: v for k, v in asdict(result).items()
            if k not in ("id", "uid") and not (k in _FIELDS_AFTER_UIDS and v is None)}
    return str(uuid.uuid5(UID_NAMESPACE, json.dumps(data, sort_keys=True, default=str)))


def new_uid() -> str:
    """A fresh uid for a result stored for the first time."""
    return str(uuid.uuid4())
