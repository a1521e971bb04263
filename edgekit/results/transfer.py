"""Move results between databases: ``export_results`` writes a JSON file, ``import_results``
adds a file's results to a database, once.

The file is a JSON list of result documents (docs/results-schema.md), the same shape as
``edgekit bench --json`` and ``edgekit results list --json``: those files import too, and
``edgekit report`` reads an export. A result is identified by ``(uid, device, artifact
sha256)``; importing a result the database already holds adds nothing, so an import may be
repeated, or resumed after it was interrupted. Each batch of rows is one transaction.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from edgekit.errors import DocumentError, InputError
from edgekit.results.location import WRITE
from edgekit.results.model import Result, content_uid
from edgekit.results.schema import results as table
from edgekit.results.store import ResultStore, _db_error, row_values

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class ImportSummary:
    """What an import did.

    Attributes:
        new: results added.
        present: results the database already held (same uid, device and artifact sha256).
        conflicts: uids the database holds for another device or artifact (not imported).
    """

    new: int = 0
    present: int = 0
    conflicts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"new": self.new, "present": self.present, "conflicts": self.conflicts}


def export_results(store: ResultStore, out, *, device: Optional[str] = None,
                   artifact: Optional[str] = None, since: Optional[str] = None) -> int:
    """Write ``store``'s results (oldest first, optionally filtered as in
    ``ResultStore.list``) to the JSON file ``out``; return how many.

    The file is written to a temporary name and renamed, so a failed export leaves no
    partial file.

    Raises:
        InputError: ``out`` cannot be written (no such folder, no permission).
    """
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w") as f:  # streamed: a large history is never held in memory whole
            f.write("[")
            for r in store.iter_all(device=device, artifact=artifact, since=since):
                f.write(",\n" if n else "\n")
                f.write(json.dumps(r.to_dict(), default=str))
                n += 1
            f.write("\n]\n")
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(f"cannot write the export {out}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return n


def read_result_file(path) -> list[Result]:
    """The results of a JSON file: one result document or a list of them.

    Raises:
        InputError: a missing file, not JSON, or not result documents.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a results JSON file: {e}") from None
    docs = doc if isinstance(doc, list) else [doc]
    try:
        return [Result.from_dict(d) for d in docs]
    except (DocumentError, TypeError) as e:
        raise InputError(f"{path}: not edgekit result documents ({e}); expected the output of "
                         "`edgekit results export` or `edgekit bench --json`") from None


def import_results(store: ResultStore, results: Iterable[Result]) -> ImportSummary:
    """Add the results ``store`` does not hold yet (by uid, device and artifact sha256).

    A result without a uid (written by an edgekit from before uids) is identified by its
    content (``content_uid``), as the migration of an old database identifies its rows.

    Raises:
        ResultsDatabaseError: a write failed (earlier batches stay imported; rerun to finish).
    """
    summary = ImportSummary()
    batch: list[Result] = []
    for r in results:
        batch.append(r)
        if len(batch) == BATCH:
            _import_batch(store, batch, summary)
            batch = []
    if batch:
        _import_batch(store, batch, summary)
    return summary


def _import_batch(store: ResultStore, batch: list[Result], summary: ImportSummary) -> None:
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    rows = {}
    for r in batch:
        uid = r.uid or content_uid(r)
        rows.setdefault(uid, (r, row_values(r, uid)))  # a file listing one result twice
    summary.present += len(batch) - len(rows)
    try:
        with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            held = {uid: (device, sha) for uid, device, sha in conn.execute(
                select(table.c.uid, table.c.device, table.c.artifact_sha256)
                .where(table.c.uid.in_(list(rows))))}
            for uid, (r, values) in rows.items():
                if uid in held:
                    if held[uid] == (r.device, r.sha256):
                        summary.present += 1
                    else:
                        summary.conflicts.append(uid)
                    continue
                # Another importer may add the same uid meanwhile: the unique index keeps one.
                inserted = conn.execute(_insert_if_absent(conn, values)).rowcount
                summary.new += inserted
                summary.present += 1 - inserted
    except SQLAlchemyError as e:
        raise _db_error(store.location, "import into", e) from e


def _insert_if_absent(conn, values: dict):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).values(**values).on_conflict_do_nothing(index_elements=["uid"])
